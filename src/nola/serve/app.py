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
Requests from concurrent clients are queued and decoded together (`DecodeWorker`: the first queued
prompt waits `batch_window_ms` for others, up to `max_batch` prompts with any mix of adapters); a
request that would overfill the queue gets 503, a malformed one 400, an unknown adapter 404.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nola.adapters.bank import AdapterBank
from nola.adapters.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from nola.decode.beam import BeamHypothesis, check_inputs, search
from nola.decode.config import PAPER_SETTINGS, SearchSettings
from nola.decode.hypotheses import context_prompts, hypothesis_text
from nola.errors import NolaError

BASE_NAME = "base"
log = logging.getLogger("nola.serve")


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
    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class AdapterCatalog:
    """The adapters directory, mirrored into the bank: new or changed subdirectories are (re)loaded,
    removed ones dropped; one that fails to load is remembered with its reason (and not served)."""

    def __init__(self, bank: AdapterBank, directory: str | Path | None, rescan_s: float) -> None:
        self.bank, self.rescan_s = bank, rescan_s
        self.directory = Path(directory) if directory is not None else None
        self.failures: dict[str, str] = {}
        self._scanned = 0.0
        self._lock = threading.Lock()

    def refresh(self, *, force: bool = False) -> None:
        if self.directory is None or (not force and time.monotonic() - self._scanned < self.rescan_s):
            return
        with self._lock:
            self._scanned = time.monotonic()
            found = {path.name: path for path in sorted(self.directory.iterdir())
                     if path.is_dir() and (path / CONFIG_FILE).is_file() and path.name != BASE_NAME} \
                if self.directory.is_dir() else {}
            for name in set(self.bank.adapters) - set(found):
                self.bank.remove(name)
            self.failures = {name: reason for name, reason in self.failures.items() if name in found}
            for name, path in found.items():
                loaded = self.bank.adapters.get(name)
                weights = path / WEIGHTS_FILE
                signature = (weights.stat().st_mtime_ns, weights.stat().st_size) if weights.is_file() else None
                if loaded is not None and loaded.signature == signature:
                    continue
                try:
                    self.bank.add(name, path)
                    self.failures.pop(name, None)
                    log.info("loaded adapter %s from %s", name, path)
                except NolaError as err:
                    self.bank.remove(name)
                    self.failures[name] = str(err)
                    log.warning("adapter %s not served: %s", name, err)

    def names(self) -> list[str]:
        return [BASE_NAME, *sorted(self.bank.adapters)]


@dataclass
class Pending:
    """One prompt waiting for the decode worker."""

    prompt: list[int]
    adapter: str | None
    settings: SearchSettings
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    result: BeamHypothesis | None = field(default=None)


class QueueFull(Exception):
    pass


class DecodeWorker(threading.Thread):
    """Decodes queued prompts in batches (see the module docstring); one batch at a time."""

    def __init__(self, model, bank: AdapterBank, *, window_s: float, max_batch: int, max_queue: int) -> None:
        super().__init__(name="nola-decode", daemon=True)
        self.model, self.bank = model, bank
        self.window_s, self.max_batch, self.max_queue = window_s, max_batch, max_queue
        self._queue: deque[Pending] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self.batches = 0

    def submit(self, items: list[Pending]) -> None:
        with self._ready:
            if len(self._queue) + len(items) > self.max_queue:
                raise QueueFull()
            self._queue.extend(items)
            self._ready.notify()

    def stop(self) -> None:
        """Finish what is queued, then end."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self.join()

    def run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    return
            deadline = time.monotonic() + self.window_s
            with self._ready:
                while len(self._queue) < self.max_batch and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                first = self._queue[0].settings
                batch = [item for item in list(self._queue) if item.settings == first][: self.max_batch]
                for item in batch:
                    self._queue.remove(item)
            self._decode(batch)

    def _decode(self, batch: list[Pending]) -> None:
        try:
            found = search(self.model, [item.prompt for item in batch], batch[0].settings,
                           batch_size=len(batch), adapters=[item.adapter for item in batch])
            outcomes: list[Any] = found
        except Exception as err:  # noqa: BLE001 - every waiting client must get an answer
            log.exception("decode batch failed")
            outcomes = [err] * len(batch)
        self.batches += 1
        for item, outcome in zip(batch, outcomes):
            setter = item.future.set_exception if isinstance(outcome, Exception) else item.future.set_result
            item.loop.call_soon_threadsafe(_settle, item.future, setter, outcome)


def _settle(future: asyncio.Future, setter, value) -> None:
    if not future.done():
        setter(value)


def create_app(model, tokenizer, bank: AdapterBank, catalog: AdapterCatalog, serve_cfg) -> FastAPI:
    """The FastAPI application; the decode worker runs for the app's lifetime and drains on shutdown."""
    worker = DecodeWorker(model, bank, window_s=float(serve_cfg.batch_window_ms) / 1000.0,
                          max_batch=int(serve_cfg.max_batch), max_queue=int(serve_cfg.max_queue))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        catalog.refresh(force=True)
        worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app = FastAPI(title="nola.serve", lifespan=lifespan)
    app.state.worker = worker

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
        return JSONResponse(error_body(f"invalid request: {where or 'body'}: {first.get('msg', 'malformed JSON')}",
                                       "invalid_request_error", where), status_code=400)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.kind, exc.param), status_code=exc.status)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        catalog.refresh()
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "nola"}
                                           for name in catalog.names()]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "adapters": len(bank.adapters), "batches": worker.batches}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        if body.stream:
            raise ApiError(400, "stream=true is not supported; the answer comes whole", "invalid_request_error", "stream")
        if body.n != 1:
            raise ApiError(400, "n must be 1: beam search returns one best hypothesis per prompt",
                           "invalid_request_error", "n")
        prompts = prompt_list(body.prompt)
        if not prompts or len(prompts) > int(serve_cfg.max_prompts_per_request):
            raise ApiError(400, f"prompt must hold 1 to {serve_cfg.max_prompts_per_request} prompts",
                           "invalid_request_error", "prompt")
        adapter = _adapter_name(body.model, catalog)
        try:
            settings = SearchSettings(beam=body.beam, length_penalty=body.length_penalty,
                                      no_repeat_ngram_size=body.no_repeat_ngram_size,
                                      repetition_penalty=body.repetition_penalty, max_new_tokens=body.max_tokens)
            ids = [context_prompts(tokenizer, [prompt])[0] if isinstance(prompt, str) else prompt for prompt in prompts]
            check_inputs(model.config, ids, settings, 1)
        except NolaError as err:
            raise ApiError(400, str(err).replace("decode.max_new_tokens", "max_tokens"), "invalid_request_error") from None
        loop = asyncio.get_running_loop()
        pending = [Pending(prompt, adapter, settings, loop, loop.create_future()) for prompt in ids]
        try:
            worker.submit(pending)
        except QueueFull:
            raise ApiError(503, "the server is busy (decode queue full); retry later", "server_busy") from None
        found = await asyncio.gather(*(item.future for item in pending))
        choices = [{"text": hypothesis_text(tokenizer, h.tokens), "index": i, "logprobs": None,
                    "finish_reason": "stop" if h.finished else "length"} for i, h in enumerate(found)]
        completion_tokens = sum(len(h.tokens) for h in found)
        prompt_tokens = sum(len(prompt) for prompt in ids)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": body.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


def prompt_list(prompt) -> list[str | list[int]]:
    """OpenAI's prompt forms as a list of prompts: a text, texts, a token-id list, token-id lists.

    A text is a data-to-text context and gets the training prompt's layout (context tokens + bos,
    `context_prompts`); token ids are used as they are."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(item, int) for item in prompt):
        return [list(prompt)]
    return list(prompt)


def _adapter_name(model: str, catalog: AdapterCatalog) -> str | None:
    """The bank name for a request's `model` (None for the base); 404 for a name nobody serves."""
    if model == BASE_NAME:
        return None
    if model not in catalog.bank.adapters:
        catalog.refresh(force=True)  # an adapter added since the last scan is served at once
    if model in catalog.bank.adapters:
        return model
    reason = catalog.failures.get(model)
    message = f"adapter {model!r} could not be loaded: {reason}" if reason else \
        f"no adapter named {model!r}; GET /v1/models lists them"
    raise ApiError(404, message, "not_found_error", "model")
