"""`serve.admission.LatencyGauge`: when the server refuses new streams because its open ones' partial
results are late. Times are given explicitly, so every case is exact; tests/test_serve.py drives the
same rule through a real server."""

from __future__ import annotations

import math

import pytest

from paddle_asr.errors import AsrError
from paddle_asr.serve.admission import LATENCY_WINDOW, MIN_REPLIES, LatencyGauge, StreamCap


def gauge_with(latencies: list[float], bound: float = 0.25, start: float = 100.0) -> LatencyGauge:
    gauge = LatencyGauge(bound)
    for i, latency in enumerate(latencies):
        gauge.record(latency, now=start + 0.01 * i)
    return gauge


def test_half_of_the_replies_late_refuses_new_streams():
    assert gauge_with([0.02] * 5 + [0.4] * 5).late(now=100.2) == 0.4      # 5 of 10
    assert gauge_with([0.02] * 6 + [0.4] * 5).late(now=100.2) is None     # 5 of 11
    assert gauge_with([0.02] * 10 + [2.0] * 4).late(now=100.2) is None    # a burst of late ones is no trend
    late = gauge_with([0.02] * 9 + [0.3, 0.5] * 5)                        # 10 of 19, the middle one 0.30 s
    assert late.late(now=100.3) == 0.3
    message = late.refusal(now=100.3)
    assert "behind real time: half of its streams' partial results of the last 3 s took 0.30 s or more" in message
    assert "(--max_latency 0.25 s); retry later" in message


def test_replies_at_the_bound_and_too_few_replies_do_not_refuse():
    assert gauge_with([0.25] * 20).late(now=100.3) is None                 # not over the bound
    assert gauge_with([3.0] * (MIN_REPLIES - 1)).late(now=100.1) is None   # one slow start is no trend
    assert gauge_with([3.0] * MIN_REPLIES).late(now=100.1) == 3.0


def test_late_replies_are_forgotten_after_the_window():
    gauge = gauge_with([2.0] * 10)
    assert gauge.late(now=100.0 + LATENCY_WINDOW) == 2.0                   # the oldest is 3 s old, still in
    assert gauge.late(now=100.1 + LATENCY_WINDOW) is None
    assert gauge.median(now=100.1 + LATENCY_WINDOW) is None and gauge.refusal(now=200.0) == ""
    gauge.record(0.01, now=300.0)
    assert gauge.median(now=300.0) == 0.01


def test_zero_turns_the_limit_off_and_bad_bounds_are_refused():
    off = gauge_with([9.0] * 30, bound=0.0)
    assert off.late(now=100.3) is None and off.refusal(now=100.3) == ""
    assert off.median(now=100.3) == 9.0                                    # still reported (GET /health)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(AsrError, match=r"--max_latency must be >= 0 seconds \(0: no limit\)"):
            LatencyGauge(bad)


def late_gauge(now: float, bound: float = 0.25) -> LatencyGauge:
    """A gauge whose last LATENCY_WINDOW seconds, as of `now`, hold only late replies."""
    return gauge_with([1.0] * MIN_REPLIES, bound=bound, start=now - 0.1)


def test_the_cap_drops_to_nine_tenths_of_the_open_streams_once_a_window_and_grows_back_one_a_window():
    gauge = LatencyGauge(0.25)
    cap = StreamCap(40, gauge)
    assert cap.refusal(39, now=100.0) == "" and cap.cap == 40
    assert "maximum of 40 streams (--max_streams)" in cap.refusal(40, now=100.0)
    for i in range(MIN_REPLIES):
        gauge.record(1.0, now=100.0 + 0.01 * i)
    assert "behind real time" in cap.refusal(30, now=100.1) and cap.cap == 27   # 90 % of the 30 open
    assert cap.refusal(26, now=101.0) == ""                                     # below the cap: in
    assert "behind real time" in cap.refusal(27, now=102.0) and cap.cap == 27   # no second cut this window
    for i in range(MIN_REPLIES):                                                # still late a window on
        gauge.record(1.0, now=103.0 + 0.01 * i)
    assert "behind real time" in cap.refusal(27, now=103.1) and cap.cap == 24
    # In time again once the late replies have aged out: one more per window, never past --max_streams.
    t = 103.1 + LATENCY_WINDOW
    assert "the 24 streams it keeps up with (its partial results were late with more, --max_latency 0.25 s)" \
        in cap.refusal(24, now=t - 0.01)
    assert cap.refusal(24, now=t) == "" and cap.cap == 25
    assert "the 25 streams it keeps up with" in cap.refusal(25, now=t + 1.0)
    for k in range(1, 30):
        cap.refusal(0, now=t + k * LATENCY_WINDOW)
    assert cap.cap == 40 and "maximum of 40 streams" in cap.refusal(40, now=t + 999)


def test_the_cap_never_drops_below_one_stream():
    now = 100.0
    cap = StreamCap(4, late_gauge(now))
    assert "behind real time" in cap.refusal(1, now=now) and cap.cap == 1
    assert cap.refusal(0, now=now) == "" and cap.cap == 1                   # late, but nothing open: one gets in
    assert cap.refusal(1, now=now + LATENCY_WINDOW) == "" and cap.cap == 2  # the late replies gone: one more
