"""`GET /metrics`: what the server is doing, in Prometheus' text format (the `prometheus_client` library).

Every app has its own registry (no process-global state), so several apps in one process (tests,
the bench) count apart. Names follow Prometheus' conventions (vLLM and LoRAX expose the same kind):
- `nola_requests_total{status, adapter}`: answered requests;
- `nola_prompts_dropped_total{where}`: prompts not decoded to the end because their request was
  cancelled (client gone, deadline passed), `where` = queue | batch;
- `nola_queue_depth`, `nola_resident_adapters`, `nola_factor_cache_bytes`: now;
- `nola_factor_cache_hits_total`, `nola_factor_cache_misses_total`: the adapter bank's factor cache;
- `nola_batch_rows`: rows (live beams) per decode step; `nola_queue_seconds`, `nola_decode_seconds`:
  per prompt, time waiting in the queue and time from admission to its answer.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nola.serve.worker import Pending, WorkerEvents

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _BankCollector:
    """The bank's state, read when /metrics is scraped."""

    def __init__(self, bank) -> None:
        self.bank = bank

    def collect(self):
        yield GaugeMetricFamily("nola_resident_adapters", "adapters loaded in the bank", value=len(self.bank.adapters))
        yield GaugeMetricFamily("nola_factor_cache_bytes", "bytes of materialised adapter factors",
                                value=self.bank.cached_bytes)
        yield CounterMetricFamily("nola_factor_cache_hits", "adapter factor lookups served from the cache",
                                  value=self.bank.cache_hits)
        yield CounterMetricFamily("nola_factor_cache_misses", "adapter factor lookups that materialised them",
                                  value=self.bank.cache_misses)


class ServerMetrics:
    """The app's registry and its instruments; `events` feeds the decode worker's reports in."""

    def __init__(self, bank) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("nola_requests", "answered completion requests", ("status", "adapter"),
                                registry=self.registry)
        self.dropped = Counter("nola_prompts_dropped", "prompts dropped because their request was cancelled",
                               ("where",), registry=self.registry)
        self.queue_depth = Gauge("nola_queue_depth", "prompts waiting for the decode worker", registry=self.registry)
        self.batch_rows = Histogram("nola_batch_rows", "rows (live beams) per decode step", buckets=ROWS,
                                    registry=self.registry)
        self.queue_seconds = Histogram("nola_queue_seconds", "time a prompt waited in the queue", buckets=SECONDS,
                                       registry=self.registry)
        self.decode_seconds = Histogram("nola_decode_seconds", "time from a prompt's admission to its answer",
                                        buckets=SECONDS, registry=self.registry)
        self.registry.register(_BankCollector(bank))
        self.events = WorkerEvents(admitted=self._admitted, finished=self._finished, dropped=self._dropped,
                                   stepped=self.batch_rows.observe)

    def watch_queue(self, depth) -> None:
        """Read the queue depth from `depth()` at every scrape."""
        self.queue_depth.set_function(depth)

    def _admitted(self, item: Pending) -> None:
        self.queue_seconds.observe(time.monotonic() - item.queued_at)

    def _finished(self, item: Pending, seconds: float) -> None:
        self.decode_seconds.observe(seconds)

    def _dropped(self, item: Pending, where: str) -> None:
        self.dropped.labels(where=where).inc()
