"""Whether the server can take one more stream, judged by how late its streams' results are.

`--max_streams` caps the open streams, but how many a server keeps up with depends on its CPU and
model (bench/RESULTS.md: the AISHELL-size INT8 model on ONNX Runtime kept up with 24 streams on a
2-core Xeon held to AVX2, 36-56 on 2-core CPUs with AVX-512 VNNI). One stream more than that makes
every open stream's results late. So the front end also times each partial result that waited for
the encoder (frame received -> reply ready), and refuses new streams while half of those of the
last few seconds or more took longer than `--max_latency`: the open streams fall no further behind,
and a new one is told to retry (`LatencyGauge`); then `StreamCap` lets streams back in one by one.
Frames that complete no chunk window are answered at once and are not timed.
"""

from __future__ import annotations

import math
import time
from collections import deque

from paddle_asr.errors import AsrError

# Seconds. On a 2-core AMD EPYC (Zen 4), bench/serve.py's 48 INT8 streams (which that server kept up
# with) held the median under 0.21 s, its briefest peaks included; one at a time (which it did not
# keep up with) 0.64 s.
DEFAULT_MAX_LATENCY = 0.5
LATENCY_WINDOW = 3.0       # seconds of recent replies that decide
MIN_REPLIES = 5            # fewer recent replies than this never refuse (one slow first chunk is no trend)
CAP_DECREASE = 0.9         # StreamCap: the share of the open streams it keeps when results are late


class LatencyGauge:
    """The latencies of the last `LATENCY_WINDOW` seconds of encoder-bound partial results;
    `late()` says whether half of them or more took longer than `max_latency` (0: never). The median
    and not a high percentile: a burst of finals or a long tick delays some replies now and then, but
    only a server that is behind real time delays most of them, and more so every second."""

    def __init__(self, max_latency: float = DEFAULT_MAX_LATENCY) -> None:
        if not (max_latency >= 0 and math.isfinite(max_latency)):
            raise AsrError(f"--max_latency must be >= 0 seconds (0: no limit), got {max_latency}")
        self.max_latency = max_latency
        self._replies: deque[tuple[float, float]] = deque()  # (when, latency in s), oldest first

    def record(self, latency: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._replies.append((now, latency))
        self._forget(now)

    def late(self, now: float | None = None) -> float | None:
        """The recent replies' median latency (s) when it is over `max_latency`, else None."""
        if not self.max_latency:
            return None
        median = self.median(now)
        return median if len(self._replies) >= MIN_REPLIES and median > self.max_latency else None

    def median(self, now: float | None = None) -> float | None:
        """The recent replies' median latency (the upper one of an even count; s), or None without
        any (GET /health)."""
        self._forget(time.monotonic() if now is None else now)
        if not self._replies:
            return None
        latencies = sorted(latency for _, latency in self._replies)
        return latencies[len(latencies) // 2]

    def refusal(self, now: float | None = None) -> str:
        """Why a new stream must wait, or ''."""
        median = self.late(now)
        return "" if median is None else self.late_message(median)

    def late_message(self, median: float) -> str:
        """The refusal for a recent median of `median` seconds, over the bound."""
        return (f"the server is behind real time: half of its streams' partial results of the last "
                f"{LATENCY_WINDOW:g} s took {median:.2f} s or more (--max_latency {self.max_latency:g} s); "
                "retry later or connect to another instance")

    def _forget(self, now: float) -> None:
        while self._replies and self._replies[0][0] < now - LATENCY_WINDOW:
            self._replies.popleft()


class StreamCap:
    """How many streams the server takes now, by TCP's congestion rule (additive increase,
    multiplicative decrease). It starts at `--max_streams`. When the partial results are late it
    drops to 90 % of the streams open then (at most once a `LATENCY_WINDOW`: the gauge still holds
    the late replies for that long after a cut); after each window in time it grows by one, up to
    `--max_streams`. Refused clients that retry thus come back a few at a time instead of all at once,
    which would make every stream late again, and the cap settles near what the CPU keeps up with."""

    def __init__(self, max_streams: int, gauge: LatencyGauge) -> None:
        self.max_streams, self.gauge = max_streams, gauge
        self.cap = max_streams
        self._changed = -math.inf  # when the cap last moved

    def refusal(self, open_streams: int, now: float | None = None) -> str:
        """Why a new stream cannot start with `open_streams` open, or ''."""
        now = time.monotonic() if now is None else now
        median = self.gauge.late(now)
        if now - self._changed >= LATENCY_WINDOW:
            if median is not None:
                self.cap, self._changed = max(1, int(CAP_DECREASE * min(self.cap, open_streams))), now
            elif self.cap < self.max_streams:
                self.cap, self._changed = self.cap + 1, now
        if open_streams < self.cap:
            return ""
        if median is not None:
            return self.gauge.late_message(median)
        if self.cap < self.max_streams:
            return (f"the server is serving the {self.cap} streams it keeps up with (its partial results were "
                    f"late with more, --max_latency {self.gauge.max_latency:g} s); retry later or connect to "
                    "another instance")
        return f"the server is serving its maximum of {self.max_streams} streams (--max_streams); retry later"
