"""Replay a labelled image set through a running edge service and measure what it did.

TensorFlow-free (numpy, Pillow, requests): usable from the lean install.
:func:`~edgelesspart.replay.data.load_replay_data` reads an image folder or an ``.npz`` as PNG
request bodies (:mod:`edgelesspart.replay.data`); :func:`replay` posts
each image to ``POST /v1/infer`` exactly as a camera client would, reads the edge's
``/metrics`` before and after, and returns a :class:`ReplayReport`: exit mix, edge share,
accuracy (when labels are known), p50/p95 latency seen by the client, cloud calls, bytes sent
to the cloud and the cost of the run, priced from the cloud part's measured durations (the
cloud segments' timings in each answer) with :mod:`edgelesspart.profiling.pricing`.
The CLI is ``edgelesspart replay URL DATA`` (:mod:`edgelesspart.commands.replay`).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgelesspart.errors import ConfigError
from edgelesspart.replay.data import (  # noqa: F401  (re-exported: the replay's public API)
    IMAGE_SUFFIXES,
    ReplayData,
    array_to_png,
    load_replay_data,
)

REPORT_VERSION = 1
#: Metrics of the edge service read before and after a replay (Prometheus counter names).
BYTES_METRIC = "edgelesspart_offload_bytes_sent_total"
OFFLOADS_METRIC = "edgelesspart_offloads_total"
ROWS_METRIC = "edgelesspart_offloaded_rows_total"


# --------------------------------------------------------------------------- the edge client


def check_url(url: str) -> str:
    """Normalise an edge service URL (``http(s)://host:port``) or raise :class:`ConfigError`."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"Bad edge service URL {url!r}: expected http://HOST:PORT (for example "
            "http://127.0.0.1:8080, what `edgelesspart serve-edge` prints)."
        )
    return url.strip().rstrip("/")


class EdgeClient:
    """A small ``requests`` client of one edge service; every call has a timeout."""

    def __init__(
        self, url: str, *, token: str | None = None, timeout_s: float = 30.0, connections: int = 10
    ) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.url = check_url(url)
        self.timeout_s = float(timeout_s)
        self.session = requests.Session()
        # one kept-alive connection per request in flight (the default pool keeps 10)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(10, int(connections)))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _get(self, path: str) -> Any:
        import requests

        try:
            response = self.session.get(self.url + path, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ConfigError(
                f"Cannot reach the edge service at {self.url} ({type(exc).__name__}). Is "
                "`edgelesspart serve-edge BUNDLE` running there? Check the URL and port."
            ) from exc
        if response.status_code in (401, 403):
            raise ConfigError(
                f"The edge service at {self.url} refused GET {path} ({response.status_code}): "
                "pass its token with --token."
            )
        if response.status_code != 200:
            raise ConfigError(
                f"GET {self.url}{path} answered {response.status_code}; is this an "
                "EdgeLessPart edge service?"
            )
        return response

    def bundle(self) -> dict[str, Any]:
        """``GET /v1/bundle``: what the service serves (classes, segments, threshold)."""
        try:
            return dict(self._get("/v1/bundle").json())
        except ValueError as exc:
            raise ConfigError(f"{self.url}/v1/bundle did not answer JSON: {exc}.") from exc

    def metrics(self) -> dict[str, float]:
        """``GET /metrics`` summed per metric name; ``offloads_total`` counts real calls only.

        An offload refused locally because every offload slot was busy (``outcome="busy"``)
        never reached the cloud, so it is left out of :data:`OFFLOADS_METRIC`.
        """
        text = self._get("/metrics").text
        totals = parse_metrics(text)
        if OFFLOADS_METRIC in totals:
            busy = parse_metric_series(text, OFFLOADS_METRIC).get('outcome="busy"', 0.0)
            totals[OFFLOADS_METRIC] -= busy
        return totals

    def infer(
        self, body: bytes, media_type: str, threshold: float | None
    ) -> tuple[int, Any, float]:
        """Post one image; return ``(status, JSON body or text, client ms)``."""
        import requests

        params = {} if threshold is None else {"threshold": f"{threshold:g}"}
        start = time.perf_counter()
        try:
            response = self.session.post(
                self.url + "/v1/infer",
                data=body,
                headers={"Content-Type": media_type},
                params=params,
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            return 0, f"{type(exc).__name__}: {exc}", (time.perf_counter() - start) * 1000
        ms = (time.perf_counter() - start) * 1000
        try:
            return response.status_code, response.json(), ms
        except ValueError:
            return response.status_code, response.text[:200], ms

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()


def parse_metrics(text: str) -> dict[str, float]:
    """Sum every Prometheus sample per metric name (labels dropped; comments skipped)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            totals[name] = totals.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return totals


def parse_metric_series(text: str, name: str) -> dict[str, float]:
    """The samples of one metric keyed by their label text (``outcome="ok"`` ...)."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        labels = head[len(name) :].strip("{}")
        try:
            series[labels] = float(value)
        except ValueError:
            continue
    return series


# --------------------------------------------------------------------------- the replay


@dataclass(frozen=True)
class Sample:
    """What happened to one posted image."""

    index: int
    status: int
    latency_ms: float
    label: int | None = None
    predicted: int | None = None
    exit: str | None = None
    stage: str | None = None
    degraded: bool = False
    cloud_ms: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class ReplayReport:
    """Measured outcome of one replay against a live edge service (see ``docs/demo.md``).

    ``edge_share`` counts answers from the edge stage that were not degraded (a degraded answer
    is the edge's fallback after a cloud failure, reported separately). ``cost`` prices one
    invocation per cloud call at the measured cloud duration of that call.
    """

    url: str
    source: str
    bundle_id: str
    threshold: float | None
    samples: int
    answered: int
    errors: int
    exit_mix: dict[str, int]
    edge_share: float
    degraded: int
    accuracy: float | None
    latency_p50_ms: float
    latency_p95_ms: float
    latency_mean_ms: float
    cloud_calls: int
    bytes_sent: int
    cloud_ms_mean: float
    cost: float
    cost_per_million: float
    pricing: dict[str, Any]
    wall_s: float
    requests_per_s: float
    concurrency: int
    error_examples: tuple[str, ...] = ()
    metrics_source: str = "metrics"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (versioned)."""
        data = asdict(self)
        data["error_examples"] = list(self.error_examples)
        return {"version": REPORT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayReport:
        """Build from :meth:`to_dict` output."""
        clean = {k: v for k, v in data.items() if k != "version"}
        clean["error_examples"] = tuple(clean.get("error_examples", ()))
        return cls(**clean)


def _sample(index: int, label: int | None, status: int, body: Any, ms: float, cloud: set) -> Sample:
    if status != 200 or not isinstance(body, dict) or not body.get("answers"):
        message = body.get("error", body) if isinstance(body, dict) else body
        return Sample(index, status, ms, label, error=f"HTTP {status}: {message}"[:300])
    answer = body["answers"][0]
    timings = answer.get("timings") or {}
    cloud_ms = float(sum(float(v) for k, v in timings.items() if k in cloud))
    predicted = answer.get("label")
    return Sample(
        index=index,
        status=status,
        latency_ms=ms,
        label=label,
        predicted=None if predicted is None else int(predicted),
        exit=None if answer.get("exit") is None else str(answer["exit"]),
        stage=None if answer.get("stage") is None else str(answer["stage"]),
        degraded=bool(answer.get("degraded", False)),
        cloud_ms=cloud_ms,
    )


@dataclass(frozen=True)
class Pricing:
    """How a replay prices its cloud calls (the evaluation's tables; Cloud Functions 2nd gen by
    default, as ``evaluate`` and ``package-cloud``)."""

    provider: str = "gcf-2nd-gen"
    memory_mb: int = 2048
    response_bytes: int = 512


def replay(
    url: str,
    data: ReplayData,
    *,
    threshold: float | None = None,
    concurrency: int = 1,
    token: str | None = None,
    timeout_s: float = 30.0,
    pricing: Pricing | None = None,
    show_progress: bool = True,
) -> ReplayReport:
    """Post every image of ``data`` to ``url``'s ``POST /v1/infer`` and measure the run.

    Args:
        url: the edge service, e.g. ``http://127.0.0.1:8080``.
        data: from :func:`load_replay_data`.
        threshold: per-request confidence threshold; ``None`` uses the service's default.
        concurrency: requests in flight at once (>= 1).
        token: the edge service's bearer token, if it has one.
        timeout_s: per-request timeout.
        pricing: provider and memory used to price the cloud calls.
        show_progress: draw a progress bar on stderr.

    Raises:
        ConfigError: bad URL or options, or the service cannot be reached at all.
    """
    from edgelesspart.progress import progress

    if concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency}.")
    pricing = pricing or Pricing()
    price = _price_fn(pricing)
    client = EdgeClient(url, token=token, timeout_s=timeout_s, connections=concurrency)
    try:
        info = client.bundle()
        edge = edge_stages(info)
        cloud = {s["name"] for s in info.get("segments", []) if s.get("stage") not in edge}
        before = client.metrics()
        labels = data.labels or (None,) * len(data)

        def post(i: int) -> Sample:
            status, body, ms = client.infer(data.images[i], data.media_types[i], threshold)
            return _sample(i, labels[i], status, body, ms, cloud)

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency, thread_name_prefix="replay") as pool:
            results = list(
                progress(pool.map(post, range(len(data))), len(data), "replay",
                         enabled=show_progress)
            )
        wall = time.perf_counter() - start
        after = client.metrics()
    finally:
        client.close()
    return summarise(
        results, url=client.url, data=data, info=info, threshold=threshold,
        deltas=_deltas(before, after), wall_s=wall, concurrency=concurrency,
        price=price, pricing=pricing,
    )


def edge_stages(info: dict[str, Any]) -> set[str]:
    """The stages that answer on the edge: ``edge_stages`` of ``GET /v1/bundle`` (a chain of
    edge nodes, a width chain, a multi-view deployment) or the one ``edge_stage``."""
    stages = info.get("edge_stages")
    if isinstance(stages, list) and stages:
        return {str(s) for s in stages}
    return {str(info.get("edge_stage", "edge"))}


def _price_fn(pricing: Pricing) -> Any:
    from edgelesspart.profiling.pricing import load_prices

    table = load_prices(pricing.provider)
    table.check_memory(pricing.memory_mb)
    return table


def _deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    names = (BYTES_METRIC, OFFLOADS_METRIC, ROWS_METRIC)
    return {n: after.get(n, 0.0) - before.get(n, 0.0) for n in names if n in after}


def _served_threshold(asked: float | None, info: dict[str, Any]) -> float | None:
    """The threshold the run used: the one asked for, else the service's default."""
    if asked is not None:
        return float(asked)
    default = info.get("threshold")
    return None if default is None else float(default)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def summarise(
    results: list[Sample],
    *,
    url: str,
    data: ReplayData,
    info: dict[str, Any],
    threshold: float | None,
    deltas: dict[str, float],
    wall_s: float,
    concurrency: int,
    price: Any,
    pricing: Pricing,
) -> ReplayReport:
    """Turn per-sample results and metric deltas into a :class:`ReplayReport` (pure)."""
    from edgelesspart.profiling.pricing import cost_per_invocation

    edge = edge_stages(info)
    ok = [s for s in results if s.error is None]
    failed = [s for s in results if s.error is not None]
    mix = Counter(s.exit or "none" for s in ok)
    on_edge = [s for s in ok if s.stage in edge and not s.degraded]
    in_cloud = [s for s in ok if s.stage not in edge and not s.degraded]
    labelled = [s for s in ok if s.label is not None]
    accuracy = (
        float(np.mean([s.predicted == s.label for s in labelled])) if labelled else None
    )
    latencies = [s.latency_ms for s in ok]
    calls = int(round(deltas.get(OFFLOADS_METRIC, len(in_cloud))))
    cost = sum(
        cost_per_invocation(
            price, s.cloud_ms, pricing.memory_mb, egress_bytes=pricing.response_bytes
        )
        for s in in_cloud
    )
    return ReplayReport(
        url=url,
        source=data.source,
        bundle_id=str(info.get("bundle_id", "")),
        threshold=_served_threshold(threshold, info),
        samples=len(results),
        answered=len(ok),
        errors=len(failed),
        exit_mix={k: int(mix[k]) for k in sorted(mix)},
        edge_share=len(on_edge) / len(ok) if ok else 0.0,
        degraded=sum(1 for s in ok if s.degraded),
        accuracy=accuracy,
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
        latency_mean_ms=float(np.mean(latencies)) if latencies else 0.0,
        cloud_calls=calls,
        bytes_sent=int(round(deltas.get(BYTES_METRIC, 0.0))),
        cloud_ms_mean=float(np.mean([s.cloud_ms for s in in_cloud])) if in_cloud else 0.0,
        cost=float(cost),
        cost_per_million=float(cost) / len(ok) * 1e6 if ok else 0.0,
        pricing={**asdict(pricing), "table": price.name, "date": price.date},
        wall_s=wall_s,
        requests_per_s=len(results) / wall_s if wall_s > 0 else 0.0,
        concurrency=concurrency,
        error_examples=tuple(s.error for s in failed[:3] if s.error),
        metrics_source="metrics" if OFFLOADS_METRIC in deltas else "answers",
        extra={"cloud": info.get("cloud"), "labelled": len(labelled)},
    )


def format_report(report: ReplayReport) -> str:
    """The human summary ``edgelesspart replay`` prints."""
    mix = "  ".join(
        f"{name} {count} ({count / max(report.answered, 1):.0%})"
        for name, count in report.exit_mix.items()
    )
    accuracy = "n/a (no labels)" if report.accuracy is None else f"{report.accuracy:.1%}"
    threshold = "service default" if report.threshold is None else f"{report.threshold:g}"
    lines = [
        f"replay of {report.samples} images from {report.source} to {report.url} "
        f"(bundle {report.bundle_id}, threshold {threshold}, concurrency {report.concurrency})",
        f"  answered      {report.answered} ({report.errors} errors, {report.degraded} degraded)",
        f"  exit mix      {mix}",
        f"  edge share    {report.edge_share:.1%} answered on the edge",
        f"  accuracy      {accuracy}",
        f"  latency       p50 {report.latency_p50_ms:.1f} ms  p95 {report.latency_p95_ms:.1f} ms"
        f"  mean {report.latency_mean_ms:.1f} ms (client wall time, this host)",
        f"  cloud calls   {report.cloud_calls}, {report.bytes_sent:,} bytes sent to the cloud"
        f" ({report.bytes_sent / max(report.cloud_calls, 1):,.0f} per call), cloud part "
        f"{report.cloud_ms_mean:.2f} ms per call",
        f"  cost          ${report.cost:.3g} for this run, ${report.cost_per_million:.3g} per 1M "
        f"requests ({report.pricing['table']} {report.pricing['date']}, "
        f"{report.pricing['memory_mb']} MB)",
        f"  throughput    {report.requests_per_s:.1f} requests/s over {report.wall_s:.1f} s",
    ]
    lines.extend(f"  error         {e}" for e in report.error_examples)
    return "\n".join(lines)
