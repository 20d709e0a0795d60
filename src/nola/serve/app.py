"""The completions server: an OpenAI-compatible FastAPI app over one base and an adapter bank.

- `POST /v1/completions`: `model` names the adapter (a subdirectory of serve.adapters_dir, or
  `base` for the model alone), `prompt` is a data-to-text context (as in `<split>_contexts.txt`),
  a list of them, or token ids (a list, or a list of lists), `max_tokens` bounds the generated
  tokens (default 64). The search is the papers'
  (`nola.decode.config.PAPER_SETTINGS`: beam 10, length penalty 0.8, no repeated 4-grams); the extra
  fields `beam`, `length_penalty`, `no_repeat_ngram_size` and `repetition_penalty` change it.
  Each choice's `text` is the hypothesis as `python -m nola.decode` writes it, so the server and
  the library give the same outputs. OpenAI sampling fields (temperature, top_p, ...) are accepted
  and ignored: the search is deterministic. `stream` and `n` > 1 are refused.
- `GET /v1/models`: the servable names.
Each answer's `system_fingerprint` names what produced it: the adapter version's digest
(`nola.adapters.checkpoint.adapter_digest`), or the base's fingerprint for `base`. How adapters
that are added, replaced, half-written, broken or removed while serving are answered:
`nola.serve.catalog`.
Requests from concurrent clients are decoded together by `nola.serve.worker.DecodeWorker`: one
running beam search that queued prompts join between steps, each with its own adapter and search
settings (up to `max_batch` prompts). A request that would overfill the queue now gets 503, one
that holds more prompts than the whole queue 400 (naming serve.max_queue), a malformed one 400, an
unknown adapter 404.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from nola.adapters.bank import AdapterBank, BankedAdapter
from nola.decode.beam import check_inputs
from nola.decode.config import PAPER_SETTINGS, SearchSettings
from nola.decode.hypotheses import context_prompts, hypothesis_text
from nola.errors import NolaError
from nola.serve.catalog import BASE_NAME, AdapterCatalog
from nola.serve.metrics import ServerMetrics
from nola.serve.worker import AdapterWithdrawn, DecodeWorker, Pending, QueueFull

log = logging.getLogger("nola.serve")
access_log = logging.getLogger("nola.serve.access")  # one JSON line per request; prompts only with serve.log_prompts
POLL_S = 0.05  # how often a waiting request looks for its client having gone or its deadline


class CompletionRequest(BaseModel):
    """The fields of an OpenAI completion request this server reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(default=PAPER_SETTINGS.max_new_tokens, ge=1)
    beam: int = Field(default=PAPER_SETTINGS.beam, ge=1)
    length_penalty: float = PAPER_SETTINGS.length_penalty
    no_repeat_ngram_size: int = Field(default=PAPER_SETTINGS.no_repeat_ngram_size, ge=0)
    repetition_penalty: float = Field(default=PAPER_SETTINGS.repetition_penalty, gt=0)
    n: int = 1
    stream: bool = False


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.retry_after_s = retry_after_s


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def create_app(model, tokenizer, bank: AdapterBank, catalog: AdapterCatalog, serve_cfg,
               api_key: str | None = None) -> FastAPI:
    """The FastAPI application; the decode worker runs for the app's lifetime and drains on shutdown.
    api_key: what `Authorization: Bearer` must carry on every endpoint but /health (None: nothing)."""
    metrics = ServerMetrics(bank)
    worker = DecodeWorker(model, bank.routes, window_s=float(serve_cfg.batch_window_ms) / 1000.0,
                          max_batch=int(serve_cfg.max_batch), max_queue=int(serve_cfg.max_queue),
                          join_running=bool(serve_cfg.join_running), events=metrics.events,
                          withdrawn=catalog.withdrawal)
    metrics.watch_queue(lambda: worker.queued)
    base_fingerprint = bank.fingerprint

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        catalog.refresh()
        stop_watching = threading.Event()
        watcher = threading.Thread(target=catalog.watch, args=(stop_watching,), name="nola-adapters", daemon=True)
        worker.start()
        watcher.start()
        try:
            yield
        finally:
            stop_watching.set()
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app = FastAPI(title="nola.serve", lifespan=lifespan)
    app.state.worker, app.state.metrics = worker, metrics

    def finished(scope: dict, status: int, seconds: float) -> None:
        fields = scope.get("state", {}).get("log", {})
        if scope["path"] == "/v1/completions":
            metrics.requests.labels(status=str(status), adapter=fields.get("model", "-")).inc()
        access_log.info(json.dumps({"method": scope["method"], "path": scope["path"], "status": status,
                                    "seconds": round(seconds, 4), **fields}, ensure_ascii=False))

    app.add_middleware(Guard, api_key=api_key, max_body_bytes=int(serve_cfg.max_body_bytes), finished=finished)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = _field(first)
        return JSONResponse(error_body(f"invalid request: {where or 'body'}: {first.get('msg', 'malformed JSON')}",
                                       "invalid_request_error", where), status_code=400)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return JSONResponse(error_body(exc.message, exc.kind, exc.param), status_code=exc.status, headers=headers)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "nola"}
                                           for name in catalog.names()]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "adapters": len(bank.adapters), "batches": worker.batches, "joins": worker.joins,
                "steps": worker.steps}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> dict[str, Any]:
        request.state.log.update(model=body.model)
        if body.stream:
            raise ApiError(400, "stream=true is not supported; the answer comes whole", "invalid_request_error", "stream")
        if body.n != 1:
            raise ApiError(400, "n must be 1: beam search returns one best hypothesis per prompt",
                           "invalid_request_error", "n")
        for name, value, limit in (("max_tokens", body.max_tokens, "max_tokens_limit"), ("beam", body.beam, "max_beam")):
            if value > int(getattr(serve_cfg, limit)):
                raise ApiError(400, f"{name}={value} is above this server's limit serve.{limit}="
                               f"{getattr(serve_cfg, limit)}", "invalid_request_error", name)
        prompts = prompt_list(body.prompt)
        if not prompts or len(prompts) > int(serve_cfg.max_prompts_per_request):
            raise ApiError(400, f"prompt must hold 1 to {serve_cfg.max_prompts_per_request} prompts",
                           "invalid_request_error", "prompt")
        if len(prompts) > int(serve_cfg.max_queue):
            raise ApiError(400, f"prompt holds {len(prompts)} prompts but the whole queue holds "
                           f"serve.max_queue={serve_cfg.max_queue}; send at most that many per request",
                           "invalid_request_error", "prompt")
        adapter = catalog.bank.adapters.get(body.model) if body.model != BASE_NAME else None
        if adapter is None and body.model != BASE_NAME:  # not loaded: its directory is read off the event loop
            adapter = await asyncio.to_thread(_adapter_version, body.model, catalog)
        try:
            settings = SearchSettings(beam=body.beam, length_penalty=body.length_penalty,
                                      no_repeat_ngram_size=body.no_repeat_ngram_size,
                                      repetition_penalty=body.repetition_penalty, max_new_tokens=body.max_tokens)
            ids = [context_prompts(tokenizer, [prompt])[0] if isinstance(prompt, str) else prompt for prompt in prompts]
            check_inputs(model.config, ids, settings, 1)
        except NolaError as err:
            message = str(err).replace("decode.max_new_tokens", "max_tokens").replace("decode.", "")
            raise ApiError(400, message, "invalid_request_error", _param_of(message)) from None
        loop = asyncio.get_running_loop()
        pending = [Pending(prompt, adapter, settings, loop, loop.create_future()) for prompt in ids]
        try:
            worker.submit(pending)
        except QueueFull:
            raise ApiError(503, "the server is busy (decode queue full); retry later", "server_busy") from None
        request.state.log.update(prompts=len(ids), prompt_tokens=sum(len(p) for p in ids))
        if serve_cfg.log_prompts:
            request.state.log["prompt"] = body.prompt
        found = await _answers(request, pending, float(serve_cfg.request_timeout_s), worker)
        choices = [{"text": hypothesis_text(tokenizer, h.tokens), "index": i, "logprobs": None,
                    "finish_reason": "stop" if h.finished else "length"} for i, h in enumerate(found)]
        completion_tokens = sum(len(h.tokens) for h in found)
        request.state.log["completion_tokens"] = completion_tokens
        prompt_tokens = sum(len(prompt) for prompt in ids)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": body.model, "system_fingerprint": adapter.digest if adapter is not None else base_fingerprint,
                "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


class Guard:
    """ASGI middleware: the API key and the body bound checked before any work, then `finished`
    (scope, status, seconds) once per request (the access log, the request counter). Written as
    plain ASGI so the endpoint still sees its client's disconnect (`Request.is_disconnected`)."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, finished) -> None:
        self.app, self.api_key, self.max_body_bytes, self.finished = app, api_key, max_body_bytes, finished

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, seen = time.monotonic(), {}
        scope.setdefault("state", {})["log"] = {}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        refusal = self._refusal(scope)
        await (refusal or self.app)(scope, receive, sending)
        self.finished(scope, seen.get("status", 500), time.monotonic() - started)

    def _refusal(self, scope) -> JSONResponse | None:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.api_key is not None and scope["path"] != "/health":
            sent = headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {self.api_key}".encode()):
                return JSONResponse(error_body("missing or wrong API key: send the header Authorization: Bearer <key>",
                                               "authentication_error"), status_code=401)
        if scope["method"] == "POST":
            length = headers.get("content-length", "")
            if not length.isdigit():
                return JSONResponse(error_body("send the request body with a Content-Length header",
                                               "invalid_request_error"), status_code=411)
            if int(length) > self.max_body_bytes:
                return JSONResponse(error_body(f"the request body has {int(length):,} bytes; serve.max_body_bytes "
                                               f"allows {self.max_body_bytes:,}", "invalid_request_error"),
                                    status_code=413)
        return None


async def _answers(request: Request, pending: list[Pending], timeout_s: float, worker: DecodeWorker):
    """The hypotheses of `pending`, in order; a client that goes away or a passed deadline cancels
    them (the worker drops them from its queue, or from its running batch at the next step)."""
    waiting = asyncio.gather(*(item.future for item in pending))
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None

    def cancel() -> None:
        for item in pending:
            item.cancelled = True
        worker.wake()

    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(waiting), timeout=POLL_S)
        except asyncio.TimeoutError:
            pass
        except AdapterWithdrawn as err:
            cancel()
            raise ApiError(410, str(err), "not_found_error", "model") from None
        except Exception as err:  # noqa: BLE001 - the decode step failed; the worker logged it
            cancel()
            raise ApiError(500, f"decoding failed: {err}", "server_error") from None
        gone = await request.is_disconnected()
        late = deadline is not None and time.monotonic() > deadline
        if gone or late:
            cancel()
            if late:
                raise ApiError(504, f"the request was not answered within serve.request_timeout_s={timeout_s:g} s; "
                               "its prompts were dropped", "timeout_error")
            raise ApiError(499, "the client closed the connection; its prompts were dropped", "client_closed")


def prompt_list(prompt) -> list[str | list[int]]:
    """OpenAI's prompt forms as a list of prompts: a text, texts, a token-id list, token-id lists.

    A text is a data-to-text context and gets the training prompt's layout (context tokens + bos,
    `context_prompts`); token ids are used as they are."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(item, int) for item in prompt):
        return [list(prompt)]
    return list(prompt)


def _field(error: dict) -> str | None:
    """The request field a validation error is about (None for a body that is not JSON at all)."""
    if error.get("type") == "json_invalid":
        return None
    names = [str(part) for part in error.get("loc", ()) if part != "body" and isinstance(part, str)]
    return names[0] if names else None


REQUEST_FIELDS = ("prompt", "max_tokens", "beam", "length_penalty", "no_repeat_ngram_size", "repetition_penalty")


def _param_of(message: str) -> str | None:
    """The request field a library check's message starts with (`prompt 3 ...`, `beam=0 ...`), if any."""
    return next((name for name in REQUEST_FIELDS if message.startswith((f"{name} ", f"{name}="))), None)


def _adapter_version(model: str, catalog: AdapterCatalog) -> BankedAdapter | None:
    """The loaded version of the adapter a request's `model` names (None for the base), which the
    request keeps to its end whatever happens to the directory; otherwise the error that says why
    (`nola.serve.catalog`): 404 no such adapter, 503 being written, 500 broken."""
    if model == BASE_NAME:
        return None
    if model not in catalog.bank.adapters:
        catalog.refresh(only=model)  # an adapter added since the last scan is served at once
    version = catalog.bank.adapters.get(model)
    if version is not None:
        return version
    failure = catalog.failures.get(model)
    if failure is None:
        raise ApiError(404, f"no adapter named {model!r}; GET /v1/models lists them", "not_found_error", "model")
    if failure.being_written():
        raise ApiError(503, f"adapter {model!r} is being written and not complete yet ({failure.reason}); "
                       "retry in a moment", "adapter_unavailable", "model", retry_after_s=1)
    raise ApiError(500, f"adapter {model!r} cannot be served: {failure.reason}", "adapter_error", "model")
