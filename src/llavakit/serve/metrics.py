"""Prometheus text metrics without a client library: a few counters, gauges and histograms behind one lock."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, x: float) -> None:
        for i, b in enumerate(self.buckets):
            if x <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += x

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]
        return out


class Metrics:
    """What /metrics reports. Gauges that live elsewhere (queue depth) are read through callbacks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = defaultdict(int)  # by HTTP status
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.timeouts = 0
        self.rejected = 0  # queue full
        self.errors = 0  # generations that failed inside the model worker (500)
        self.prefill_seconds = 0.0  # model worker time admitting jobs (vision + prefill + cache merge)
        self.decode_seconds = 0.0  # model worker time in decode steps (sampling, detokenizing, one forward)
        self.prefills = 0  # prefill calls (jobs arriving together share one)
        self.step_retries = 0  # shared decode steps that raised and were run again row by row
        self.latency = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def count_request(self, status: int) -> None:
        with self.lock:
            self.requests[str(status)] += 1

    def add(self, field: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + n)

    def observe(self, hist: str, x: float) -> None:
        with self.lock:
            getattr(self, hist).observe(x)

    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP llava_requests_total HTTP requests answered, by status code",
                "# TYPE llava_requests_total counter",
            ]
            lines += [f'llava_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            for name, value, help_ in [
                ("llava_prompt_tokens_total", self.prompt_tokens, "prompt tokens processed (image tokens included)"),
                ("llava_completion_tokens_total", self.completion_tokens, "tokens generated"),
                ("llava_cancelled_requests_total", self.cancelled, "generations cancelled by a client disconnect"),
                ("llava_timeout_requests_total", self.timeouts, "requests that ran out of their time limit"),
                ("llava_rejected_requests_total", self.rejected, "requests refused because the queue was full"),
                ("llava_failed_generations_total", self.errors, "generations that failed in the model worker"),
                ("llava_worker_prefill_seconds_total", self.prefill_seconds, "model worker time in prefills"),
                ("llava_worker_decode_seconds_total", self.decode_seconds, "model worker time in decode steps"),
                ("llava_prefills_total", self.prefills, "prefill calls (requests arriving together share one)"),
                ("llava_decode_step_retries_total", self.step_retries, "failed batch decode steps rerun row by row"),
            ]:
                shown = round(value, 6) if isinstance(value, float) else value
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {shown}"]
            for name, hist, help_ in [
                ("llava_request_latency_seconds", self.latency, "chat completion latency, arrival to last token"),
                ("llava_time_to_first_token_seconds", self.ttft, "arrival to first generated token"),
                ("llava_batch_size", self.batch_size, "rows generated together, per decode step"),
            ]:
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"] + hist.lines(name)
        for name, (help_, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
