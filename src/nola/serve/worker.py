"""The server's decode worker: one running beam search that queued prompts join between steps.

A thread owns the model. It keeps one `nola.decode.engine.BeamBatch` running; at every step
boundary it admits queued prompts (up to `max_batch` inputs in the batch, each prompt with its own
adapter, beam, max_tokens, length penalty, n-gram ban and repetition penalty) and hands every
finished answer back to its request at once, so a short request does not wait for a long one
(continuous batching, as vLLM, TGI and LoRAX serve; Yu et al., "Orca", OSDI 2022). When the batch
is empty, the first prompt waits `window_s` for others to arrive with it. With `join_running`
off, queued prompts wait until the running batch is empty (static batching, kept to measure what
joining buys: `make bench`'s server section).

A prompt whose request was cancelled (its client went away, its deadline passed) is dropped from
the queue, and from the running batch at the next step; the other rows' outputs do not change. A
queued prompt whose adapter was withdrawn meanwhile (`withdrawn`: its directory removed or broken)
is answered `AdapterWithdrawn` when its turn comes instead of being decoded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nola.decode.config import SearchSettings
from nola.decode.engine import BeamBatch, BeamHypothesis, Entry

log = logging.getLogger("nola.serve")


@dataclass(eq=False)
class Pending:
    """One prompt waiting for (or being decoded by) the worker; `adapter` is the pinned version
    (`nola.adapters.bank.BankedAdapter`) or None for the base."""

    prompt: list[int]
    adapter: object | None
    settings: SearchSettings
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    started_at: float | None = None

    def settle(self, outcome: BeamHypothesis | BaseException | None) -> None:
        """Hand the outcome to the waiting request (thread-safe; None: it was cancelled)."""
        self.loop.call_soon_threadsafe(_settle, self.future, outcome)


def _settle(future: asyncio.Future, outcome) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class QueueFull(Exception):
    """The queue has no room for the request now (retry later)."""


class AdapterWithdrawn(Exception):
    """The adapter a queued prompt was pinned to is no longer served (the message says why)."""


@dataclass
class WorkerEvents:
    """Callbacks the worker reports to (the server's metrics); each may be left as a no-op."""

    admitted: Callable[[Pending], None] = lambda item: None
    finished: Callable[[Pending, float], None] = lambda item, seconds: None
    dropped: Callable[[Pending, str], None] = lambda item, where: None
    stepped: Callable[[int], None] = lambda rows: None


class DecodeWorker(threading.Thread):
    """See the module docstring. `routes_for` is the bank's `routes` (per-row adapters);
    `withdrawn(adapter)` says why a pinned adapter version may no longer start (None: it may)."""

    def __init__(self, model, routes_for, *, window_s: float, max_batch: int, max_queue: int,
                 join_running: bool = True, events: WorkerEvents | None = None,
                 withdrawn: Callable[[object], str | None] = lambda adapter: None) -> None:
        super().__init__(name="nola-decode", daemon=True)
        self.model, self.routes_for, self.withdrawn = model, routes_for, withdrawn
        self.window_s, self.max_batch, self.max_queue = window_s, max_batch, max_queue
        self.join_running = join_running
        self.events = events or WorkerEvents()
        self._queue: deque[Pending] = deque()
        self._ready = threading.Condition()
        self._stopping = False
        self.batches = 0  # admissions: groups of prompts prefilled together
        self.joins = 0  # admissions into a batch that was already running
        self.steps = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, items: list[Pending]) -> None:
        with self._ready:
            if len(self._queue) + len(items) > self.max_queue:
                raise QueueFull()
            self._queue.extend(items)
            self._ready.notify()

    def wake(self) -> None:
        """Look at the queue now (a request was cancelled)."""
        with self._ready:
            self._ready.notify()

    def stop(self) -> None:
        """Finish what is queued and running, then end."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self.join()

    def run(self) -> None:
        batch = BeamBatch(self.model, self.routes_for, compact=True)
        running: dict[int, Pending] = {}
        with torch.inference_mode():
            while True:
                with self._ready:
                    while not self._queue and not running and not self._stopping:
                        self._ready.wait()
                    if not self._queue and not running:
                        return
                    if not running:  # an idle batch: the first prompt waits the window for company
                        deadline = time.monotonic() + self.window_s
                        while len(self._queue) < self.max_batch and not self._stopping:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            self._ready.wait(left)
                    take = self._take(room=self.max_batch - len(running)) \
                        if self.join_running or not running else []
                try:
                    if take:
                        for item in take:
                            running[id(item)] = item
                            item.started_at = time.monotonic()
                            self.events.admitted(item)
                        self.batches += 1
                        self.joins += bool(batch.cohorts)
                        self._deliver(running, batch.admit(
                            [Entry(item.prompt, item.settings, id(item), item.adapter) for item in take]))
                    if batch.cohorts:
                        self._deliver(running, batch.step(cancelled=lambda ticket: running[ticket].cancelled))
                        self.steps += 1
                        self.events.stepped(batch.last_rows)
                except Exception as err:  # noqa: BLE001 - every waiting client must get an answer
                    log.exception("decode step failed")
                    for item in running.values():
                        item.settle(err)
                    running.clear()
                    batch = BeamBatch(self.model, self.routes_for, compact=True)

    def _take(self, room: int) -> list[Pending]:
        """Up to `room` queued prompts, oldest first; cancelled ones are dropped on the way, those
        whose adapter was withdrawn answered so."""
        take: list[Pending] = []
        while self._queue and len(take) < room:
            item = self._queue.popleft()
            if item.cancelled:
                self.events.dropped(item, "queue")
                item.settle(None)
            elif (reason := self.withdrawn(item.adapter)) is not None:
                item.settle(AdapterWithdrawn(reason))
            else:
                take.append(item)
        return take

    def _deliver(self, running: dict[int, Pending], done) -> None:
        now = time.monotonic()
        for ticket, hypothesis in done:
            item = running.pop(ticket)
            if hypothesis is None:
                self.events.dropped(item, "batch")
            else:
                self.events.finished(item, now - (item.started_at or now))
            item.settle(hypothesis)
