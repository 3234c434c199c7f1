"""Prometheus text-format metrics for the HTTP service (counters and a latency histogram, no dependency).

Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (version 0.0.4).
"""

from __future__ import annotations

import threading
from collections import defaultdict

# Latency bucket upper bounds in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # (path, status) -> count
        self.bucket_counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)

    def observe(self, path: str, status: int, seconds: float) -> None:
        # Unknown paths share one label so that a scan of random URLs cannot grow the label set.
        path = path if len(path) < 40 and status != 404 else "other"
        with self._lock:
            self.requests[(path, status)] += 1
            counts = self.bucket_counts[path]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self.latency_sum[path] += seconds
            self.latency_count[path] += 1

    def render(self, *, queue_depth: int, batches: int, batched_items: int) -> str:
        lines = [
            "# HELP bertforge_requests_total HTTP requests by path and status.",
            "# TYPE bertforge_requests_total counter",
        ]
        with self._lock:
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'bertforge_requests_total{{path="{path}",status="{status}"}} {n}')
            lines += ["# HELP bertforge_request_seconds Request latency.",
                      "# TYPE bertforge_request_seconds histogram"]
            for path in sorted(self.bucket_counts):
                for bound, n in zip(BUCKETS, self.bucket_counts[path], strict=True):
                    lines.append(f'bertforge_request_seconds_bucket{{path="{path}",le="{bound}"}} {n}')
                lines.append(f'bertforge_request_seconds_bucket{{path="{path}",le="+Inf"}} '
                             f"{self.latency_count[path]}")
                lines.append(f'bertforge_request_seconds_sum{{path="{path}"}} {self.latency_sum[path]:.6f}')
                lines.append(f'bertforge_request_seconds_count{{path="{path}"}} {self.latency_count[path]}')
        lines += [
            "# HELP bertforge_queue_depth Requests waiting for the model.",
            "# TYPE bertforge_queue_depth gauge",
            f"bertforge_queue_depth {queue_depth}",
            "# HELP bertforge_batches_total Model calls made by the micro-batcher.",
            "# TYPE bertforge_batches_total counter",
            f"bertforge_batches_total {batches}",
            "# HELP bertforge_batched_items_total Texts processed in micro-batches.",
            "# TYPE bertforge_batched_items_total counter",
            f"bertforge_batched_items_total {batched_items}",
        ]
        return "\n".join(lines) + "\n"
