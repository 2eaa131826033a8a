"""Thread-safe counters and histograms rendered in the Prometheus text format (version 0.0.4).

A :class:`Registry` belongs to one app (kept in ``app.extensions``), never to the module, so two
apps in one process (tests) do not share numbers. Label values must come from a bounded set
(route templates, status codes, exit names from the manifest), never from a peer's reply:
:func:`bounded_label` maps anything outside a known set to ``"other"``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

LabelKey = tuple[tuple[str, str], ...]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _key(labels: dict[str, str] | None) -> LabelKey:
    return tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(key: LabelKey, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = key + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[LabelKey, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series named by ``labels``."""
        if amount < 0:
            raise ValueError(f"Counter {self.name} cannot decrease (got {amount}).")
        key = _key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_total(self, total: float, **labels: str) -> None:
        """Set the series to ``total``, a cumulative count kept elsewhere (e.g. a breaker's).

        Raises:
            ValueError: ``total`` is below the series' current value (counters never decrease).
        """
        key = _key(labels)
        with self._lock:
            current = self._values.get(key, 0.0)
            if total < current:
                raise ValueError(
                    f"Counter {self.name} cannot decrease (from {current:g} to {total:g})."
                )
            self._values[key] = float(total)

    def value(self, **labels: str) -> float:
        """Current value of one series (0 if never incremented)."""
        with self._lock:
            return self._values.get(_key(labels), 0.0)

    def total(self) -> float:
        """Sum over all label sets."""
        with self._lock:
            return sum(self._values.values())

    def samples(self) -> Iterable[str]:
        """Exposition lines of this metric."""
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels_text(key)} {_number(value)}"


class Gauge:
    """A value per label set that can go up and down (set, not accumulated)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[LabelKey, float] = {}
        self._lock = threading.Lock()

    def set(self, value: float, **labels: str) -> None:
        """Set the series named by ``labels`` to ``value``."""
        with self._lock:
            self._values[_key(labels)] = float(value)

    def value(self, **labels: str) -> float:
        """Current value of one series (0 if never set)."""
        with self._lock:
            return self._values.get(_key(labels), 0.0)

    def samples(self) -> Iterable[str]:
        """Exposition lines of this metric."""
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels_text(key)} {_number(value)}"


class Histogram:
    """Cumulative-bucket histogram per label set (seconds by default)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.name, self.help = name, help_text
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[LabelKey, list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation in the series named by ``labels``."""
        key = _key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def count(self, **labels: str) -> int:
        """Observations recorded in one series."""
        with self._lock:
            series = self._series.get(_key(labels))
            return int(series[-1]) if series else 0

    def samples(self) -> Iterable[str]:
        """Exposition lines of this metric."""
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for key, series in items:
            for bound, cumulative in zip(self.buckets, series):
                le = (("le", _number(bound)),)
                yield f"{self.name}_bucket{_labels_text(key, le)} {_number(cumulative)}"
            yield f"{self.name}_sum{_labels_text(key)} {_number(series[-2])}"
            yield f"{self.name}_count{_labels_text(key)} {_number(series[-1])}"


class Registry:
    """The metrics of one service (of one worker process, when :meth:`share` is called)."""

    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self._shared: SharedMetrics | None = None

    def on_render(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` before every rendering (e.g. to copy live gauges in)."""
        self._hooks.append(hook)

    def share(self, directory: str | Path, interval_s: float = 1.0) -> SharedMetrics:
        """Publish this worker's metrics into ``directory``; :meth:`render` then sums all.

        Pre-forked workers each call this with the same directory (see
        :mod:`service_http.prefork`). Returns the publisher (already started).
        """
        self._shared = SharedMetrics(directory, self.render_local, interval_s).start()
        return self._shared

    def counter(self, name: str, help_text: str) -> Counter:
        """Create (or return the existing) counter ``name``."""
        return self._add(Counter(name, help_text))

    def gauge(self, name: str, help_text: str) -> Gauge:
        """Create (or return the existing) gauge ``name``."""
        return self._add(Gauge(name, help_text))

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...] | None = None):
        """Create (or return the existing) histogram ``name``."""
        return self._add(Histogram(name, help_text, buckets or LATENCY_BUCKETS_S))

    def _add(self, metric):
        with self._lock:
            return self._metrics.setdefault(metric.name, metric)

    def render(self) -> str:
        """The Prometheus text of this registry, summed over every worker when shared."""
        if self._shared is not None:
            return self._shared.aggregate()
        return self.render_local()

    def render_local(self) -> str:
        """This process's registry in the Prometheus text exposition format."""
        for hook in self._hooks:
            hook()
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


class SharedMetrics:
    """Metrics of several worker processes, published as files and summed on read.

    Like ``prometheus_client``'s multiprocess mode, simplified: every worker writes its own
    rendering to ``<directory>/<pid>.prom`` once per ``interval_s`` (and whenever it answers
    ``/metrics``); :meth:`aggregate` sums the samples of all files: counters and histograms of
    every worker that ever ran (so totals never go down when a worker is restarted), gauges
    of the live workers only (an in-flight gauge is then the total over workers; a
    breaker-state gauge is the number of workers in that state). Another worker's numbers
    can be up to ``interval_s`` old.
    """

    def __init__(self, directory: str | Path, render: Callable[[], str], interval_s: float):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._render, self.interval_s = render, float(interval_s)
        self._stop = threading.Event()

    def start(self) -> SharedMetrics:
        """Publish now and then every ``interval_s`` from a daemon thread."""
        self.publish()
        threading.Thread(target=self._loop, name="metrics-publish", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop publishing (the last file stays, so counters keep their totals)."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publish()

    def publish(self, text: str | None = None) -> str:
        """Write this worker's rendering atomically; return it."""
        text = self._render() if text is None else text
        tmp = self.directory / f".{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.directory / f"{os.getpid()}.prom")
        return text

    def aggregate(self) -> str:
        """This worker's fresh numbers plus every other worker's file, summed."""
        mine = self.publish()
        texts = [(os.getpid(), mine)]
        for path in sorted(self.directory.glob("*.prom")):
            pid = int(path.stem) if path.stem.isdigit() else -1
            if pid == os.getpid():
                continue
            try:
                texts.append((pid, path.read_text()))
            except OSError:  # a worker replacing its file right now: skip it this time
                continue
        return merge_texts([(text, _alive(pid)) for pid, text in texts])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's pid: exists
        return True
    return True


def merge_texts(texts: list[tuple[str, bool]]) -> str:
    """Sum Prometheus text renderings ``(text, live)`` sample by sample.

    Counters and histograms are summed over all texts, gauges over the live ones only.
    """
    meta: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    values: dict[str, dict[str, float]] = {}
    for text, live in texts:
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                name = parts[2] if len(parts) > 2 else ""
                meta.setdefault(name, [])
                if line not in meta[name]:
                    meta[name].append(line)
                if parts[1] == "TYPE" and len(parts) > 3:
                    kinds[name] = parts[3]
                    values.setdefault(name, {})
                continue
            key, _, raw = line.rpartition(" ")
            if not key:
                continue
            name = _family(key.split("{", 1)[0], kinds)
            if kinds.get(name) == "gauge" and not live:
                continue
            series = values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + float(raw)
    lines: list[str] = []
    for name, series in values.items():
        lines.extend(meta.get(name, []))
        lines.extend(f"{key} {_number(value)}" for key, value in series.items())
    return "\n".join(lines) + "\n"


def _family(sample: str, kinds: dict[str, str]) -> str:
    """The metric a sample belongs to (``x_bucket``, ``x_sum``, ``x_count`` belong to ``x``)."""
    if sample in kinds:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in kinds:
            return sample[: -len(suffix)]
    return sample


OTHER = "other"


def bounded_label(value: object, known: Iterable[str]) -> str:
    """``str(value)`` if it is in ``known``, else ``"other"`` (bounds label cardinality)."""
    text = str(value)
    return text if text in known else OTHER
