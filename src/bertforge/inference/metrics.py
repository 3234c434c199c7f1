"""Prometheus metrics for the HTTP service, written by `prometheus-client` (which escapes label values).

Each app gets a registry of its own, so several services in one process (tests) never share a counter.
Requests are labelled by route template (`/embed`), never by the raw URL: every unknown path shares the
label "unmatched", so a scan of random URLs cannot grow the label set. Exposed:

    bertforge_requests_total{path, status}    HTTP requests by route and status (499: the client left)
    bertforge_request_seconds{path}           latency histogram (buckets below), by route
    bertforge_queue_depth                     requests waiting for the model
    bertforge_batches_total                   model calls made by the micro-batcher
    bertforge_batched_items_total             texts processed in micro-batches
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency bucket upper bounds in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class BatcherSnapshot:
    queue_depth: int = 0
    batches: int = 0
    batched_items: int = 0


class _BatcherCollector(Collector):
    """Reads the micro-batcher's numbers at scrape time (they live in the batcher, not here)."""

    def __init__(self, snapshot: Callable[[], BatcherSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        now = self.snapshot()
        yield GaugeMetricFamily("bertforge_queue_depth", "Requests waiting for the model.", value=now.queue_depth)
        yield CounterMetricFamily("bertforge_batches", "Model calls made by the micro-batcher.", value=now.batches)
        yield CounterMetricFamily("bertforge_batched_items", "Texts processed in micro-batches.",
                                  value=now.batched_items)


class Metrics:
    """Args:
        batcher: () -> the micro-batcher's numbers now.
    """

    content_type = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes

    def __init__(self, batcher: Callable[[], BatcherSnapshot] = BatcherSnapshot) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bertforge_requests", "HTTP requests by route and status.", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("bertforge_request_seconds", "Request latency by route.", ["path"],
                                 buckets=BUCKETS, registry=self.registry)
        self.registry.register(_BatcherCollector(batcher))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(path=route, status=str(status)).inc()
        self.latency.labels(path=route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
