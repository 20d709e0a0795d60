"""`nola.model.hub`: download, cache, resume and verification against a loopback fake of the hub.

The fake answers `/<repo>/resolve/<rev>/model.safetensors` the way huggingface.co answers LFS files:
a 302 to a CDN URL carrying the file's sha256 in `X-Linked-Etag` (the CDN's own ETag is not a
sha256), Range requests with 206. It listens on 127.0.0.1 only and can cut responses midway.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import save

from nola.errors import NolaError
from nola.model import GPT2Config, init_gpt2, load_gpt2, to_hf_state_dict
from nola.model import gpt2 as gpt2_module
from nola.model import hub

NAME = "hub-test"
REPO = "tests/tiny-gpt2"
REVISION = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(vocab_size=97, n_positions=16, n_embd=32, n_layer=1, n_head=2)
RESOLVE = f"/{REPO}/resolve/{REVISION}/model.safetensors"
CDN = "/cdn-lfs/blob"


@dataclass
class FakeHub:
    payload: bytes
    sha256: str  # what the hub states in X-Linked-Etag
    redirect: bool = True  # the hub redirects LFS files to its CDN; a plain mirror answers directly
    drops: int = 0  # how many of the next file responses are cut after half their body
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0


class FakeHubHandler(http.server.BaseHTTPRequestHandler):
    timeout = 5

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        hub_state: FakeHub = self.server.hub_state
        hub_state.requests.append((self.path, self.headers.get("Range")))
        if self.path == RESOLVE and hub_state.redirect:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{hub_state.port}{CDN}")
            self.send_header("X-Linked-Etag", f'"{hub_state.sha256}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in (RESOLVE, CDN):
            self.send_error(404)
            return
        start = 0
        if range_header := self.headers.get("Range"):
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
        if start >= len(hub_state.payload):
            self.send_error(416)
            return
        body = hub_state.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(hub_state.payload) - 1}/{len(hub_state.payload)}")
        if self.path == CDN:
            self.send_header("ETag", '"cdn-object-17"')
        else:
            self.send_header("X-Linked-Etag", f'"{hub_state.sha256}"')
        self.end_headers()
        if hub_state.drops:
            hub_state.drops -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def tiny_model():
    return init_gpt2(GPT2Config(**TINY), seed=11)


@pytest.fixture
def fake_hub(tiny_model, monkeypatch):
    payload = save(to_hf_state_dict(tiny_model), metadata={"format": "pt"})
    state = FakeHub(payload=payload, sha256=hashlib.sha256(payload).hexdigest())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHubHandler)
    server.daemon_threads = True
    server.hub_state = state
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("NOLA_HUB_ENDPOINT", f"http://127.0.0.1:{state.port}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setitem(hub.HUB_MODELS, NAME, hub.HubModel(REPO, REVISION))
    monkeypatch.setitem(gpt2_module.NAMED_CONFIGS, NAME, TINY)
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def assert_same_model(loaded, expected) -> None:
    ids = torch.arange(12).reshape(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids), expected.eval()(ids), atol=0, rtol=0)


def test_download_verifies_loads_and_then_uses_the_cache(fake_hub, tiny_model, tmp_path):
    model = load_gpt2(NAME, cache_dir=tmp_path)
    assert model.config == GPT2Config(**TINY)
    assert_same_model(model, tiny_model)
    assert fake_hub.requests == [(RESOLVE, None), (CDN, None)]
    files = sorted(p.name for p in (tmp_path / NAME).iterdir())
    assert files == ["config.json", "model.safetensors", "model.safetensors.sha256"]

    again = load_gpt2(NAME, cache_dir=tmp_path)
    assert len(fake_hub.requests) == 2  # no request: the verified file is reused
    assert_same_model(again, tiny_model)


def test_a_mirror_without_redirect_works(fake_hub, tiny_model, tmp_path):
    fake_hub.redirect = False
    assert_same_model(load_gpt2(NAME, cache_dir=tmp_path), tiny_model)
    assert fake_hub.requests == [(RESOLVE, None)]


def test_dropped_connection_resumes_with_a_range_request(fake_hub, tiny_model, tmp_path):
    fake_hub.drops = 1
    model = load_gpt2(NAME, cache_dir=tmp_path)
    assert_same_model(model, tiny_model)
    half = len(fake_hub.payload) // 2
    assert fake_hub.requests == [(RESOLVE, None), (CDN, None), (RESOLVE, f"bytes={half}-"), (CDN, f"bytes={half}-")]
    assert not (tmp_path / NAME / "model.safetensors.part").exists()


def test_repeated_drops_keep_the_part_for_the_next_run(fake_hub, tiny_model, tmp_path):
    fake_hub.drops = hub.RESUME_ATTEMPTS
    with pytest.raises(NolaError, match="rerun to resume") as error:
        load_gpt2(NAME, cache_dir=tmp_path)
    assert "\n" not in str(error.value)
    part = tmp_path / NAME / "model.safetensors.part"
    kept = part.stat().st_size
    assert 0 < kept < len(fake_hub.payload)
    assert not (tmp_path / NAME / "model.safetensors").exists()

    fake_hub.requests.clear()
    assert_same_model(load_gpt2(NAME, cache_dir=tmp_path), tiny_model)
    assert fake_hub.requests[0] == (RESOLVE, f"bytes={kept}-")
    assert not part.exists()


@pytest.mark.parametrize("where", ["hub header", "pinned"])
def test_sha256_mismatch_removes_the_partial_file(fake_hub, tmp_path, monkeypatch, where):
    wrong = "0" * 64
    if where == "pinned":
        monkeypatch.setitem(hub.HUB_MODELS, NAME, hub.HubModel(REPO, REVISION, wrong))
    else:
        fake_hub.sha256 = wrong
    with pytest.raises(NolaError, match="sha256 mismatch") as error:
        load_gpt2(NAME, cache_dir=tmp_path)
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in (tmp_path / NAME).iterdir()) == []


def test_a_download_without_any_checksum_is_refused(fake_hub, tmp_path):
    fake_hub.redirect = False
    fake_hub.sha256 = "not-a-sha256"
    with pytest.raises(NolaError, match="refusing an unverified download"):
        load_gpt2(NAME, cache_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / NAME).iterdir()) == []


def test_http_error_tells_how_to_supply_weights(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setitem(hub.HUB_MODELS, NAME, hub.HubModel(REPO, "no-such-revision"))
    with pytest.raises(NolaError, match="HTTP 404.*Supply them yourself"):
        load_gpt2(NAME, cache_dir=tmp_path)


def test_unreachable_endpoint_fails_fast_with_help(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("NOLA_HUB_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setitem(hub.HUB_MODELS, NAME, hub.HubModel(REPO, REVISION))
    monkeypatch.setitem(gpt2_module.NAMED_CONFIGS, NAME, TINY)
    started = time.monotonic()
    with pytest.raises(NolaError, match="cannot download") as error:
        load_gpt2(NAME, cache_dir=tmp_path)
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert "\n" not in message and "model.source" in message and "make mini" in message


def test_unknown_hub_name_is_a_nola_error(tmp_path):
    with pytest.raises(NolaError, match="unknown hub model"):
        hub.fetch_hub_model("gpt3", cache_dir=tmp_path)
