"""Prometheus text exposition format 0.0.4 of the metrics registry."""

from __future__ import annotations

import asyncio
import math

import pytest

from activecall.supervisor.metrics import CONTENT_TYPE, LATENCY_BUCKETS, Registry, watch_loop_lag


def lines(registry: Registry) -> list[str]:
    text = registry.exposition().decode()
    assert text.endswith("\n")
    return text.splitlines()


def test_content_type() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_empty_registry() -> None:
    assert Registry().exposition() == b""


def test_counter_help_type_and_samples() -> None:
    registry = Registry()
    calls = registry.counter("activecall_calls_total", "Calls opened.")
    calls.inc()
    calls.inc(2)
    assert lines(registry) == [
        "# HELP activecall_calls_total Calls opened.",
        "# TYPE activecall_calls_total counter",
        "activecall_calls_total 3",
    ]


def test_counter_names_end_in_total_and_never_decrease() -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="_total"):
        registry.counter("activecall_calls", "Calls.")
    counter = registry.counter("x_total", "X.")
    with pytest.raises(ValueError, match="decrease"):
        counter.inc(-1)


def test_labels_sorted_and_escaped() -> None:
    registry = Registry()
    requests = registry.counter("http_requests_total", "Requests.", ("route", "code"))
    requests.labels("list", "200").inc()
    requests.labels("kill", "404").inc(2)
    requests.labels('a"b\\c\nd', "500").inc()
    assert lines(registry)[2:] == [
        'http_requests_total{route="a\\"b\\\\c\\nd",code="500"} 1',
        'http_requests_total{route="kill",code="404"} 2',
        'http_requests_total{route="list",code="200"} 1',
    ]


def test_help_escaping() -> None:
    registry = Registry()
    registry.gauge("g", 'first line\nback\\slash "quotes" stay')
    assert lines(registry)[0] == '# HELP g first line\\nback\\\\slash "quotes" stay'


def test_gauge_values() -> None:
    registry = Registry()
    gauge = registry.gauge("activecall_ws_calls", "Open calls.")
    gauge.set(5)
    gauge.dec(2)
    gauge.inc(0.5)
    per_worker = registry.gauge("activecall_worker_calls", "Calls per worker.", ("worker",))
    per_worker.labels("0").set(math.inf)
    per_worker.labels("1").set(-math.inf)
    per_worker.labels("2").set(math.nan)
    assert lines(registry) == [
        "# HELP activecall_worker_calls Calls per worker.",
        "# TYPE activecall_worker_calls gauge",
        'activecall_worker_calls{worker="0"} +Inf',
        'activecall_worker_calls{worker="1"} -Inf',
        'activecall_worker_calls{worker="2"} NaN',
        "# HELP activecall_ws_calls Open calls.",
        "# TYPE activecall_ws_calls gauge",
        "activecall_ws_calls 3.5",
    ]


def test_histogram_buckets_are_cumulative() -> None:
    registry = Registry()
    vad = registry.histogram(
        "activecall_vad_tick_seconds", "VAD time per tick.", ("worker",), buckets=(0.001, 0.01)
    )
    child = vad.labels("0")
    for value in (0.0005, 0.001, 0.005, 0.5):
        child.observe(value)
    assert lines(registry) == [
        "# HELP activecall_vad_tick_seconds VAD time per tick.",
        "# TYPE activecall_vad_tick_seconds histogram",
        'activecall_vad_tick_seconds_bucket{worker="0",le="0.001"} 2',
        'activecall_vad_tick_seconds_bucket{worker="0",le="0.01"} 3',
        'activecall_vad_tick_seconds_bucket{worker="0",le="+Inf"} 4',
        'activecall_vad_tick_seconds_sum{worker="0"} 0.5065',
        'activecall_vad_tick_seconds_count{worker="0"} 4',
    ]


def test_histogram_without_labels() -> None:
    registry = Registry()
    lag = registry.histogram("lag_seconds", "Lag.", buckets=(1,))
    lag.observe(2)
    assert lines(registry)[2:] == [
        'lag_seconds_bucket{le="1.0"} 0',
        'lag_seconds_bucket{le="+Inf"} 1',
        "lag_seconds_sum 2",
        "lag_seconds_count 1",
    ]


@pytest.mark.parametrize("buckets", [(), (2, 1), (1, 1)])
def test_histogram_rejects_bad_buckets(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        Registry().histogram("h", "H.", buckets=buckets)


def test_histogram_reserves_le() -> None:
    with pytest.raises(ValueError, match="le"):
        Registry().histogram("h", "H.", ("le",))


@pytest.mark.parametrize("name", ["1abc", "a-b", "a b", ""])
def test_invalid_metric_names(name: str) -> None:
    with pytest.raises(ValueError, match="metric name"):
        Registry().gauge(name, "X.")


@pytest.mark.parametrize("label", ["__reserved", "a-b", "1a"])
def test_invalid_label_names(label: str) -> None:
    with pytest.raises(ValueError, match="label name"):
        Registry().gauge("g", "G.", (label,))


def test_duplicate_names_and_wrong_label_count() -> None:
    registry = Registry()
    gauge = registry.gauge("g", "G.", ("a",))
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("g", "G.")
    with pytest.raises(ValueError, match="takes labels"):
        gauge.labels("x", "y")
    with pytest.raises(ValueError, match=r"use \.labels"):
        gauge.set(1)


def test_collectors_run_before_exposition() -> None:
    registry = Registry()
    live = registry.gauge("live", "Live things.")
    mirrored = registry.counter("seen_total", "Seen things.")
    source = [1, 2, 3]

    def collect() -> None:
        live.set(len(source))
        mirrored.labels().value = 10

    registry.add_collector(collect)
    assert "live 3" in lines(registry)
    source.append(4)
    assert "live 4" in lines(registry)
    assert "seen_total 10" in lines(registry)


def test_watch_loop_lag_observes_the_loop() -> None:
    registry = Registry()
    lag = registry.histogram("loop_lag_seconds", "Loop lag.", buckets=LATENCY_BUCKETS)

    async def main() -> None:
        watch = watch_loop_lag(lag, interval=0.001)
        async with asyncio.timeout(10):
            while lag.labels().count < 3:
                await asyncio.sleep(0.001)
        watch.cancel()
        count = lag.labels().count
        await asyncio.sleep(0.01)
        assert lag.labels().count == count

    asyncio.run(main())
    assert lag.labels().sum >= 0
