"""Prometheus metrics: counters, gauges and histograms, exposed in text format 0.0.4.

A small registry with no dependency. Metric families are created on a :class:`Registry`
(``registry.counter(...)``, ``.gauge(...)``, ``.histogram(...)``); a family with label names
hands out one child per label-value tuple through ``labels(...)``, a family without labels is
used directly. ``Registry.exposition()`` renders every family as Prometheus text exposition
format 0.0.4 (``CONTENT_TYPE``), after running the registered collectors, which let live state
(open connections, calls per worker) be read at scrape time instead of being tracked on the hot
path.

Not thread-safe: a registry belongs to one event loop (the supervisor's).

Names follow the Prometheus conventions: counters end in ``_total``, times are in seconds
(histograms of durations end in ``_seconds``). ``watch_loop_lag`` samples the lateness of a loop
into a histogram.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "LATENCY_BUCKETS",
    "Counter",
    "Gauge",
    "Histogram",
    "LoopLagWatch",
    "Registry",
    "watch_loop_lag",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of :meth:`Registry.exposition`."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""The Prometheus client libraries' default histogram buckets (seconds)."""

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Buckets for sub-tick times (seconds): VAD time per 20 ms tick, event-loop lag."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    value = float(value)  # collectors may assign ints
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{_escape_label_value(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class CounterChild:
    """One time series of a counter: a value that only goes up."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (non-negative)."""
        if amount < 0:
            raise ValueError("a counter cannot decrease")
        self.value += amount


class GaugeChild:
    """One time series of a gauge: a value that goes up and down."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        """Set the value."""
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        self.value -= amount


class HistogramChild:
    """One time series of a histogram: observations counted into cumulative buckets."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # counts[i] counts observations in (bounds[i-1], bounds[i]]; the last slot is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value


_Child = TypeVar("_Child", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[_Child]):
    """A metric family: name, help, label names, and one child per label-value tuple."""

    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names in {name}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        self._default: _Child | None = None if labelnames else self._new_child()

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def labels(self, *values: str) -> _Child:
        """The child for these label values (in ``labelnames`` order), created on first use.

        A collector may assign ``child.value`` of a counter or gauge child directly, to mirror
        a total kept elsewhere.
        """
        if not self.labelnames and not values:
            return self._unlabelled()
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def _unlabelled(self) -> _Child:
        if self._default is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._default

    def _series(self) -> Iterable[tuple[tuple[str, ...], _Child]]:
        if self._default is not None:
            yield (), self._default
        yield from sorted(self._children.items())

    def _samples(self, labels: tuple[str, ...], child: _Child) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> Iterable[str]:
        """The exposition lines of this family."""
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, child in self._series():
            yield from self._samples(labels, child)


class Counter(_Family[CounterChild]):
    """A counter family; its name must end in ``_total``."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter name ends in _total: {name!r}")
        super().__init__(name, help, labelnames)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _samples(self, labels: tuple[str, ...], child: CounterChild) -> Iterable[str]:
        yield f"{self.name}{_label_text(self.labelnames, labels)} {_format_value(child.value)}"

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the counter without labels."""
        self._unlabelled().inc(amount)

    @property
    def value(self) -> float:
        """The value of the counter without labels."""
        return self._unlabelled().value


class Gauge(_Family[GaugeChild]):
    """A gauge family."""

    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def _samples(self, labels: tuple[str, ...], child: GaugeChild) -> Iterable[str]:
        yield f"{self.name}{_label_text(self.labelnames, labels)} {_format_value(child.value)}"

    def set(self, value: float) -> None:
        """Set the gauge without labels."""
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add to the gauge without labels."""
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        """Subtract from the gauge without labels."""
        self._unlabelled().dec(amount)

    @property
    def value(self) -> float:
        """The value of the gauge without labels."""
        return self._unlabelled().value


class Histogram(_Family[HistogramChild]):
    """A histogram family with fixed upper bounds (``le``); ``+Inf`` is implied."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram buckets must be increasing and non-empty")
        if "le" in labelnames:
            raise ValueError("'le' is reserved for histogram buckets")
        self.bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        """Record one observation in the histogram without labels."""
        self._unlabelled().observe(value)

    def _samples(self, labels: tuple[str, ...], child: HistogramChild) -> Iterable[str]:
        names = (*self.labelnames, "le")
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), child.counts, strict=True):
            cumulative += count
            le = _format_bound(bound)
            yield f"{self.name}_bucket{_label_text(names, (*labels, le))} {cumulative}"
        plain = _label_text(self.labelnames, labels)
        yield f"{self.name}_sum{plain} {_format_value(child.sum)}"
        yield f"{self.name}_count{plain} {child.count}"


def _format_bound(bound: float) -> str:
    # Client libraries render bucket bounds as floats ("1.0", "+Inf"); keep that spelling so
    # series from activecall and other exporters match in queries.
    return "+Inf" if math.isinf(bound) else repr(bound)


class Registry:
    """The metric families of one process, rendered together by :meth:`exposition`."""

    def __init__(self) -> None:
        self._families: dict[str, Counter | Gauge | Histogram] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, family: Counter | Gauge | Histogram) -> None:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register and return a counter family."""
        family = Counter(name, help, labelnames)
        self._add(family)
        return family

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Register and return a gauge family."""
        family = Gauge(name, help, labelnames)
        self._add(family)
        return family

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """Register and return a histogram family."""
        family = Histogram(name, help, labelnames, buckets)
        self._add(family)
        return family

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Run ``collect`` before each exposition (to set gauges and counters from live state)."""
        self._collectors.append(collect)

    def exposition(self) -> bytes:
        """Every family in Prometheus text format 0.0.4, sorted by name."""
        for collect in self._collectors:
            collect()
        lines: list[str] = []
        for name in sorted(self._families):
            lines.extend(self._families[name].render())
        return ("\n".join(lines) + "\n").encode() if lines else b""


class LoopLagWatch:
    """Samples how late an event loop runs its timers into a histogram; see ``watch_loop_lag``."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, target: HistogramChild, interval: float
    ) -> None:
        self._loop = loop
        self._target = target
        self._interval = interval
        due = loop.time() + interval
        self._handle = loop.call_at(due, self._tick, due)

    def _tick(self, due: float) -> None:
        now = self._loop.time()
        self._target.observe(max(0.0, now - due))
        due = now + self._interval
        self._handle = self._loop.call_at(due, self._tick, due)

    def cancel(self) -> None:
        """Stop sampling."""
        self._handle.cancel()


def watch_loop_lag(
    histogram: Histogram | HistogramChild,
    interval: float = 0.5,
    loop: asyncio.AbstractEventLoop | None = None,
) -> LoopLagWatch:
    """Observe every ``interval`` s how late ``loop`` (default: the running one) runs a timer.

    The lateness of a timer is the time the loop spent on other callbacks past its deadline:
    the delay every frame waiting on that loop sees. ``cancel()`` the result to stop.
    """
    target = histogram._unlabelled() if isinstance(histogram, Histogram) else histogram
    return LoopLagWatch(loop or asyncio.get_running_loop(), target, interval)
