"""`python -m nola.serve` over real HTTP on 127.0.0.1: answers equal to the library's, the error
cases, an adapter added while running, and SIGTERM draining in-flight requests.

The expected text of every answer is computed here by the plain single-adapter path: the adapter
merged into a fresh base, the prompt decoded alone, the tokens turned into text as nola.decode does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.slow  # every test starts a server process (about 40 s in all)

from nola.decode.hypotheses import context_prompts  # noqa: E402
from nola.tokenizer import load_tokenizer  # noqa: E402
from bank_support import save_random_adapters, tiny_base  # noqa: E402
from serve_support import Server, call, library_text, metric_values  # noqa: E402
from train_support import subprocess_env, synthetic_examples  # noqa: E402

SERVED = {
    "lora": dict(kind="lora", rank=4, alpha=32, targets=["q", "v"], base_seed=1),
    "nola": dict(kind="nola", rank=4, alpha=4, num_basis_a=16, num_basis_b=16, base_seed=7),
    "nola2": dict(kind="nola", rank=4, alpha=4, num_basis_a=16, num_basis_b=16, base_seed=7),
}
LATE = {"late": dict(kind="nola", rank=2, alpha=2, num_basis_a=8, num_basis_b=8, base_seed=5)}
MAX_TOKENS = 6
BEAM = 3


@pytest.fixture(scope="module")
def base():
    return tiny_base()


@pytest.fixture(scope="module")
def served(base, tmp_path_factory, vocab_dir):
    root = tmp_path_factory.mktemp("serve")
    adapters = save_random_adapters(base, root / "adapters", SERVED)
    save_random_adapters(base, root / "later", LATE, seed=3)
    server = Server(root, vocab_dir, adapters)
    yield root, server
    server.stop()


def expected_text(base, directory, tokenizer, context: str, **settings) -> str:
    return library_text(base, directory, tokenizer, context, **{"beam": BEAM, "max_new_tokens": MAX_TOKENS, **settings})


def test_parallel_requests_equal_the_library(served, base, vocab_dir):
    root, server = served
    tokenizer = load_tokenizer(vocab_dir)
    contexts = [row["context"] for row in synthetic_examples(52, seed=4)]
    names = ["lora", "nola", "nola2", "base"]
    jobs = [(context, names[i % len(names)]) for i, context in enumerate(contexts)]

    def ask(job):
        context, name = job
        return call(server.port, "/v1/completions", {"model": name, "prompt": context, "max_tokens": MAX_TOKENS,
                                                     "beam": BEAM, "temperature": 0.7})

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
    for (context, name), (_, answer) in zip(jobs, answers):
        directory = None if name == "base" else root / "adapters" / name
        assert answer["object"] == "text_completion" and answer["model"] == name
        assert answer["choices"][0]["text"] == expected_text(base, directory, tokenizer, context), (name, context)
        assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    status, health = call(server.port, "/health")
    assert health["batches"] < len(jobs)  # concurrent requests were decoded together


def test_mixed_settings_share_batches_and_join_running_searches(served, base, vocab_dir):
    """44 requests over 4 names with their own max_tokens, beam, length penalty and n-gram size; a few
    long ones start first and the rest join their running search: each equals its prompt alone."""
    root, server = served
    tokenizer = load_tokenizer(vocab_dir)
    contexts = [row["context"] for row in synthetic_examples(44, seed=9)]
    names = ["lora", "nola", "nola2", "base"]
    jobs = [dict(model=names[i % 4], prompt=context, max_tokens=[2, 5, 9, 16][i % 3 + (i < 4)],
                 beam=[2, 3, 4][i % 3], length_penalty=[0.8, 1.0, 0.3][i % 3 - 1], no_repeat_ngram_size=[0, 2, 4][i % 3])
            for i, context in enumerate(contexts)]
    for job in jobs[:4]:
        job["max_tokens"] = 40
    before = call(server.port, "/health")[1]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        first = [pool.submit(call, server.port, "/v1/completions", job) for job in jobs[:4]]
        time.sleep(0.3)
        rest = [pool.submit(call, server.port, "/v1/completions", job) for job in jobs[4:]]
        answers = [future.result(timeout=300) for future in first + rest]
    after = call(server.port, "/health")[1]
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:2]
    for job, (_, answer) in zip(jobs, answers):
        directory = None if job["model"] == "base" else root / "adapters" / job["model"]
        want = expected_text(base, directory, tokenizer, job["prompt"], beam=job["beam"],
                             max_new_tokens=job["max_tokens"], length_penalty=job["length_penalty"],
                             no_repeat_ngram_size=job["no_repeat_ngram_size"])
        assert answer["choices"][0]["text"] == want, job
    assert after["batches"] - before["batches"] < len(jobs)  # shared batches despite differing settings
    assert after["joins"] > before["joins"]  # requests joined a running search


def test_models_and_an_adapter_added_at_runtime(served, base, vocab_dir):
    root, server = served
    status, listed = call(server.port, "/v1/models")
    assert status == 200 and [m["id"] for m in listed["data"]] == ["base", "lora", "nola", "nola2"]
    shutil.copytree(root / "later" / "late", root / "adapters" / "late")
    status, answer = call(server.port, "/v1/completions", {"model": "late", "prompt": "name : Aromi | food : Thai",
                                                           "max_tokens": MAX_TOKENS, "beam": BEAM})
    assert status == 200
    expected = expected_text(base, root / "adapters" / "late", load_tokenizer(vocab_dir), "name : Aromi | food : Thai")
    assert answer["choices"][0]["text"] == expected
    assert "late" in [m["id"] for m in call(server.port, "/v1/models")[1]["data"]]


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "invalid request"),
    ({"model": "lora"}, 400, "prompt"),
    ({"model": "lora", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "lora", "prompt": "x", "stream": True}, 400, "stream"),
    ({"model": "lora", "prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ({"model": "nope", "prompt": "x"}, 404, "no adapter named 'nope'"),
])
def test_bad_requests(served, body, status, fragment):
    _, server = served
    got, answer = call(server.port, "/v1/completions", body)
    assert got == status and fragment in answer["error"]["message"]
    param = answer["error"]["param"]
    assert param is None or param in ("model", "prompt", "max_tokens", "stream")  # a field, never a byte offset
    if isinstance(body, bytes):
        assert param is None


def test_a_full_queue_answers_503_and_a_request_larger_than_the_queue_400(base, tmp_path, vocab_dir):
    adapters = save_random_adapters(base, tmp_path / "adapters", {"lora": SERVED["lora"]})
    server = Server(tmp_path, vocab_dir, adapters, "serve.max_queue=2", "serve.batch_window_ms=3000")
    try:
        status, answer = call(server.port, "/v1/completions", {"model": "lora", "prompt": ["a", "b", "c"]})
        assert status == 400 and "serve.max_queue=2" in answer["error"]["message"]
        assert answer["error"]["param"] == "prompt"
        with ThreadPoolExecutor(max_workers=1) as pool:  # two prompts fill the queue for the 3 s window
            first = pool.submit(call, server.port, "/v1/completions",
                                {"model": "lora", "prompt": ["a", "b"], "max_tokens": 2})
            time.sleep(0.5)
            status, answer = call(server.port, "/v1/completions", {"model": "lora", "prompt": "c", "max_tokens": 2})
            assert status == 503 and "busy" in answer["error"]["message"]
            assert first.result(timeout=60)[0] == 200
        assert call(server.port, "/v1/completions", {"model": "lora", "prompt": ["a"], "max_tokens": 2})[0] == 200
    finally:
        server.stop()


def test_sigterm_drains_in_flight_requests(base, tmp_path, vocab_dir):
    adapters = save_random_adapters(base, tmp_path / "adapters", {"nola": SERVED["nola"]})
    server = Server(tmp_path, vocab_dir, adapters, "serve.batch_window_ms=500")
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = [pool.submit(call, server.port, "/v1/completions",
                               {"model": "nola", "prompt": f"name : Zizzi {i}", "max_tokens": 24}) for i in range(4)]
        time.sleep(0.2)  # the requests are queued, waiting out the batch window
        server.process.send_signal(signal.SIGTERM)
        answers = [future.result(timeout=120) for future in pending]
    assert [status for status, _ in answers] == [200] * 4
    assert server.process.wait(60) == 0
    server.log.close()
    assert os.path.exists(tmp_path / f"server-{server.port}.log")


def test_token_id_prompts_and_prompt_lists(served, base, vocab_dir):
    _, server = served
    tokenizer = load_tokenizer(vocab_dir)
    contexts = ["name : Aromi | food : Thai", "name : Zizzi | area : riverside"]
    status, texts = call(server.port, "/v1/completions", {"model": "nola", "prompt": contexts, "max_tokens": MAX_TOKENS,
                                                          "beam": BEAM})
    ids = context_prompts(tokenizer, contexts)
    status_ids, by_ids = call(server.port, "/v1/completions", {"model": "nola", "prompt": ids, "max_tokens": MAX_TOKENS,
                                                               "beam": BEAM})
    assert status == status_ids == 200 and [c["index"] for c in texts["choices"]] == [0, 1]
    assert [c["text"] for c in texts["choices"]] == [c["text"] for c in by_ids["choices"]]
    status_one, one = call(server.port, "/v1/completions", {"model": "nola", "prompt": ids[1], "max_tokens": MAX_TOKENS,
                                                            "beam": BEAM})
    assert status_one == 200 and one["choices"][0]["text"] == texts["choices"][1]["text"]
    assert call(server.port, "/v1/completions", {"model": "nola", "prompt": [10**6]})[0] == 400


def test_api_key_limits_and_metrics(base, tmp_path, vocab_dir):
    adapters = save_random_adapters(base, tmp_path / "adapters", {"lora": SERVED["lora"]})
    server = Server(tmp_path, vocab_dir, adapters, "serve.max_tokens_limit=8", "serve.max_beam=4",
                    "serve.max_body_bytes=2000", env={"NOLA_API_KEY": "s3cret"})
    body = {"model": "lora", "prompt": "name : Aromi", "max_tokens": 3, "beam": 2}
    try:
        assert call(server.port, "/health")[0] == 200  # the one endpoint without a key
        for key in (None, "wrong"):
            status, answer = call(server.port, "/v1/completions", body, key=key)
            assert status == 401 and answer["error"]["type"] == "authentication_error"
            assert call(server.port, "/v1/models", key=key)[0] == 401
        assert call(server.port, "/v1/completions", body, key="s3cret")[0] == 200
        for change, fragment in (({"max_tokens": 9}, "serve.max_tokens_limit=8"), ({"beam": 5}, "serve.max_beam=4")):
            status, answer = call(server.port, "/v1/completions", {**body, **change}, key="s3cret")
            assert status == 400 and fragment in answer["error"]["message"]
            assert answer["error"]["param"] == next(iter(change))
        status, answer = call(server.port, "/v1/completions", {**body, "prompt": "x" * 3000}, key="s3cret")
        assert status == 413 and "serve.max_body_bytes" in answer["error"]["message"]
        values = metric_values(server.port, "s3cret")
        assert values[("nola_requests_total", (("adapter", "lora"), ("status", "200")))] == 1
        assert values[("nola_requests_total", (("adapter", "lora"), ("status", "400")))] == 2
        assert values[("nola_resident_adapters", ())] == 1 and values[("nola_queue_depth", ())] == 0
        assert values[("nola_batch_rows_count", ())] >= 1 and values[("nola_decode_seconds_count", ())] == 1
        log = (tmp_path / f"server-{server.port}.log").read_text()
        assert "s3cret" not in log and "Aromi" not in log and '"path": "/v1/completions"' in log
    finally:
        server.stop()


def test_a_deadline_answers_504_and_its_prompt_is_not_decoded(base, tmp_path, vocab_dir):
    adapters = save_random_adapters(base, tmp_path / "adapters", {"lora": SERVED["lora"]})
    server = Server(tmp_path, vocab_dir, adapters, "serve.batch_window_ms=1500", "serve.request_timeout_s=0.3")
    try:
        started = time.monotonic()
        status, answer = call(server.port, "/v1/completions", {"model": "lora", "prompt": "name : Aromi",
                                                               "max_tokens": 4})
        assert status == 504 and "serve.request_timeout_s=0.3" in answer["error"]["message"]
        assert time.monotonic() - started < 1.4  # answered at its deadline, not after the batch window
        time.sleep(2.0)  # past the batch window: the worker took the queue and dropped the prompt
        values = metric_values(server.port)
        assert values[("nola_prompts_dropped_total", (("where", "queue"),))] == 1
        assert values.get(("nola_decode_seconds_count", ()), 0) == 0  # it was never decoded
        assert values[("nola_requests_total", (("adapter", "lora"), ("status", "504")))] == 1
    finally:
        server.stop()


def test_a_client_that_goes_away_is_not_decoded(base, tmp_path, vocab_dir):
    adapters = save_random_adapters(base, tmp_path / "adapters", {"lora": SERVED["lora"]})
    server = Server(tmp_path, vocab_dir, adapters, "serve.batch_window_ms=1500", "serve.request_timeout_s=60")
    body = json.dumps({"model": "lora", "prompt": "name : Aromi", "max_tokens": 4}).encode()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.2)
        time.sleep(2.5)  # past the batch window: the worker took the queue and dropped the prompt
        values = metric_values(server.port)
        assert values[("nola_prompts_dropped_total", (("where", "queue"),))] == 1
        assert values.get(("nola_decode_seconds_count", ()), 0) == 0
        assert '"status": 499' in (tmp_path / f"server-{server.port}.log").read_text()
    finally:
        server.stop()


def test_a_public_host_without_a_key_is_refused_before_the_model_is_built(tmp_path, vocab_dir):
    done = subprocess.run([sys.executable, "-m", "nola.serve", "model=tiny", "model.source=random",
                           f"paths.vocab_dir={vocab_dir}", f"paths.runs_dir={tmp_path}", "serve.host=0.0.0.0",
                           "train.device=cpu"], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode != 0 and "no API key is set" in done.stderr and "Traceback" not in done.stderr


def test_the_server_writes_no_run_directory(base, tmp_path, vocab_dir):
    adapters = save_random_adapters(base, tmp_path / "adapters", {"lora": SERVED["lora"]})
    server = Server(tmp_path, vocab_dir, adapters)
    try:
        assert call(server.port, "/v1/completions", {"model": "lora", "prompt": "name : Aromi", "max_tokens": 2})[0] == 200
    finally:
        server.stop()
    assert not (tmp_path / "runs").exists()  # paths.runs_dir: no <name>/.hydra, no job log
    assert '"path": "/v1/completions"' in (tmp_path / f"server-{server.port}.log").read_text()  # logs still go out
