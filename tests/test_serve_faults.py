"""Adapters that go wrong while `python -m nola.serve` serves, over real HTTP on 127.0.0.1: a corrupt
directory, one half-copied, one for another base, one replaced (in one step and caught half-way),
one removed while requests for it are queued. Each gives that adapter's requests a clear error with
the reason; the other adapters' answers stay equal to the library's decode (`library_text`), and a
new version is served only once complete.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.slow  # one server process, about 30 s

from bank_support import save_random_adapters, tiny_base  # noqa: E402
from serve_support import Server, call, library_text  # noqa: E402

from nola.adapters.checkpoint import CONFIG_FILE, WEIGHTS_FILE, adapter_digest  # noqa: E402
from nola.model import GPT2Config, init_gpt2  # noqa: E402
from nola.serve.catalog import WRITE_SETTLE_S  # noqa: E402
from nola.tokenizer import load_tokenizer  # noqa: E402

NOLA = dict(kind="nola", rank=4, alpha=4, num_basis_a=16, num_basis_b=16, base_seed=7)
LORA = dict(kind="lora", rank=4, alpha=32, targets=["q", "v"], base_seed=1)
SETTINGS = dict(beam=3, max_new_tokens=6)
CONTEXT = "name : Aromi | food : Thai | area : riverside"
WINDOW_S = 1.0  # serve.batch_window_ms: how long a lone request stays queued
RESCAN_S = 0.2


def ask(port: int, model: str, seen_headers: dict | None = None) -> tuple[int, dict]:
    return call(port, "/v1/completions", {"model": model, "prompt": CONTEXT, "beam": SETTINGS["beam"],
                                          "max_tokens": SETTINGS["max_new_tokens"]}, seen_headers=seen_headers)


def age(directory, seconds: float) -> None:
    """Make the directory's files look untouched for `seconds` (no longer being written)."""
    then = time.time() - seconds
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if (directory / name).exists():
            os.utime(directory / name, (then, then))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, vocab_dir):
    root = tmp_path_factory.mktemp("faults")
    base = tiny_base()
    adapters = save_random_adapters(base, root / "adapters", {"good": NOLA, "lora": LORA, "doomed": LORA,
                                                             "swapped": NOLA, "halfway": NOLA})
    save_random_adapters(base, root / "versions", {"swapped": NOLA, "halfway": NOLA, "fresh": NOLA}, seed=5)
    other_base = init_gpt2(GPT2Config.named("tiny"), 1).eval()  # same shapes, other weights
    save_random_adapters(other_base, root / "foreign", {"foreign": NOLA})
    server = Server(root, vocab_dir, adapters, f"serve.batch_window_ms={WINDOW_S * 1000:g}",
                    f"serve.rescan_s={RESCAN_S}")
    tokenizer = load_tokenizer(vocab_dir)
    expected = {name: library_text(base, adapters / name, tokenizer, CONTEXT, **SETTINGS)
                for name in ("good", "lora", "swapped", "halfway")}
    expected.update({f"{name}@new": library_text(base, root / "versions" / name, tokenizer, CONTEXT, **SETTINGS)
                     for name in ("swapped", "halfway", "fresh")})
    assert all(expected[name] != expected[f"{name}@new"] for name in ("swapped", "halfway"))  # versions tell apart
    yield root, adapters, server, expected
    server.stop()


def assert_others_unchanged(port: int, expected: dict) -> None:
    for name in ("good", "lora"):
        status, answer = ask(port, name)
        assert status == 200 and answer["choices"][0]["text"] == expected[name], name


def test_corrupt_and_foreign_adapters_answer_500_with_the_reason(setup):
    root, adapters, server, expected = setup
    broken = adapters / "broken"
    shutil.copytree(adapters / "good", broken)
    data = (broken / WEIGHTS_FILE).read_bytes()
    (broken / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    age(broken, 10 * WRITE_SETTLE_S)
    status, answer = ask(server.port, "broken")
    assert status == 500 and answer["error"]["type"] == "adapter_error"
    assert "'broken' cannot be served" in answer["error"]["message"]
    assert "corrupt or truncated" in answer["error"]["message"] and answer["error"]["param"] == "model"

    shutil.copytree(root / "foreign" / "foreign", adapters / "foreign")
    status, answer = ask(server.port, "foreign")
    assert status == 500 and "adapter was trained on base" in answer["error"]["message"]
    assert_others_unchanged(server.port, expected)
    listed = [model["id"] for model in call(server.port, "/v1/models")[1]["data"]]
    assert "broken" not in listed and "foreign" not in listed and "good" in listed


def test_a_half_copied_adapter_is_503_until_complete_then_served(setup):
    root, adapters, server, expected = setup
    fresh = adapters / "fresh"
    fresh.mkdir()
    shutil.copy(root / "versions" / "fresh" / CONFIG_FILE, fresh / CONFIG_FILE)  # the weights are not there yet
    headers: dict = {}
    status, answer = ask(server.port, "fresh", headers)
    assert status == 503 and answer["error"]["type"] == "adapter_unavailable" and headers.get("retry-after") == "1"
    assert "being written" in answer["error"]["message"] and "not found" in answer["error"]["message"]
    data = (root / "versions" / "fresh" / WEIGHTS_FILE).read_bytes()
    (fresh / WEIGHTS_FILE).write_bytes(data[:100])  # caught half-way through the copy
    assert ask(server.port, "fresh")[0] == 503
    (fresh / WEIGHTS_FILE).write_bytes(data)
    status, answer = ask(server.port, "fresh")
    assert status == 200 and answer["choices"][0]["text"] == expected["fresh@new"]
    assert answer["system_fingerprint"] == adapter_digest(fresh)
    assert_others_unchanged(server.port, expected)


def test_a_replacement_caught_half_way_keeps_the_old_version_until_complete(setup):
    root, adapters, server, expected = setup
    halfway, new = adapters / "halfway", root / "versions" / "halfway"
    old_digest = adapter_digest(halfway)
    status, answer = ask(server.port, "halfway")
    assert status == 200 and answer["choices"][0]["text"] == expected["halfway"]
    assert answer["system_fingerprint"] == old_digest
    shutil.copy(new / WEIGHTS_FILE, halfway / WEIGHTS_FILE)  # new weights under the old config
    time.sleep(3 * RESCAN_S)  # the server has looked at the mixed directory
    status, answer = ask(server.port, "halfway")
    assert status == 200 and answer["choices"][0]["text"] == expected["halfway"]  # the old version, whole
    assert answer["system_fingerprint"] == old_digest
    shutil.copy(new / CONFIG_FILE, halfway / CONFIG_FILE)
    time.sleep(3 * RESCAN_S)
    status, answer = ask(server.port, "halfway")
    assert status == 200 and answer["choices"][0]["text"] == expected["halfway@new"]
    assert answer["system_fingerprint"] == adapter_digest(new) != old_digest


def test_a_request_queued_before_a_replacement_is_answered_by_the_version_it_asked(setup):
    root, adapters, server, expected = setup
    swapped, new = adapters / "swapped", root / "versions" / "swapped"
    old_digest = adapter_digest(swapped)
    with ThreadPoolExecutor(max_workers=1) as pool:
        queued = pool.submit(ask, server.port, "swapped")
        time.sleep(WINDOW_S / 4)  # the request waits in the batch window
        staging = adapters / ".swapped.new"  # dot-named: not served while it is built
        shutil.copytree(new, staging)
        shutil.rmtree(swapped)
        staging.rename(swapped)
        status, answer = queued.result(timeout=60)
    assert status == 200 and answer["choices"][0]["text"] == expected["swapped"]
    assert answer["system_fingerprint"] == old_digest
    time.sleep(3 * RESCAN_S)
    status, answer = ask(server.port, "swapped")
    assert status == 200 and answer["choices"][0]["text"] == expected["swapped@new"]
    assert answer["system_fingerprint"] == adapter_digest(swapped)


def test_an_adapter_removed_while_requests_for_it_are_queued(setup):
    root, adapters, server, expected = setup
    with ThreadPoolExecutor(max_workers=2) as pool:
        doomed = pool.submit(ask, server.port, "doomed")
        other = pool.submit(ask, server.port, "lora")
        time.sleep(WINDOW_S / 4)  # both wait in the batch window
        shutil.rmtree(adapters / "doomed")
        status, answer = doomed.result(timeout=60)
        assert status == 410 and "'doomed' was withdrawn while the request was queued" in answer["error"]["message"]
        assert "directory was removed" in answer["error"]["message"]
        status, answer = other.result(timeout=60)
        assert status == 200 and answer["choices"][0]["text"] == expected["lora"]
    status, answer = ask(server.port, "doomed")
    assert status == 404 and "no adapter named 'doomed'" in answer["error"]["message"]
