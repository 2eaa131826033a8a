"""``serve-pipeline`` under the shared serving contract, with an optional cloud tail.

:class:`PipelineBackend` answers ``POST /v1/infer`` of :func:`service_http.contract.contract_app`
from a started :class:`~edgelesspart.pipeline.dispatcher.Pipeline`: every row of a request goes
through the chain as its own input (so each row stops at its own exit), and each answer names
the exit, the stage and the stage's node.

**Cloud tail.** A bundle built with ``build --nodes N --cloud-device ...`` has N edge stages and
a cloud stage. The pipeline runs the edge stages only; a row that no edge exit answered leaves
the last edge stage as a boundary tensor, which the backend sends to the cloud function through
the two-part service's offloaders (:mod:`edgelesspart.runtime.offload`: HTTP or Lambda, with
retries and the circuit breaker). When the cloud fails, or none is configured, the row is
answered from the last local exit, marked ``degraded`` with the reason -- never lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgelesspart.errors import OffloadError, OffloadRejected
from service_http.contract import InferTarget, Served, answer_row, as_batch, threshold_checker

DEFAULT_MAX_BATCH = 64
#: Plan stage ``options["tier"]`` of a chain with a cloud tail (``edge`` / ``cloud``).
TIER_KEY = "tier"


def cloud_stage_names(manifest: Any, *, cloud_tail: bool = False) -> list[str]:
    """The stages a cloud tail runs: those the plan marks ``tier: cloud`` (``build --nodes N
    --cloud-device``); with none marked and ``cloud_tail``, the last stage (a two-part bundle)."""
    marked = [s.name for s in manifest.plan.stages if s.options.get(TIER_KEY) == "cloud"]
    if not marked and cloud_tail and len(manifest.plan.stages) > 1:
        return [manifest.plan.stages[-1].name]
    return marked


def edge_stage_names(manifest: Any, *, cloud_tail: bool = False) -> list[str]:
    """The stages the chain of edge nodes runs: all but :func:`cloud_stage_names`."""
    cloud = set(cloud_stage_names(manifest, cloud_tail=cloud_tail))
    return [s.name for s in manifest.plan.stages if s.name not in cloud]


def make_offloader(
    cloud: str,
    *,
    token: str | None = None,
    lambda_endpoint: str | None = None,
    region: str | None = None,
    timeout_s: float = 2.0,
    retries: int = 1,
    codec: str = "raw",
    breaker_failures: int = 5,
    breaker_reset_s: float = 10.0,
) -> Any:
    """The offloader ``cloud`` names: ``lambda://FUNCTION`` or an HTTP(S) URL."""
    from edgelesspart.runtime.offload import HttpOffloader, LambdaOffloader, OffloadPolicy

    policy = OffloadPolicy(
        timeout_s=timeout_s,
        retries=retries,
        codec=codec,
        breaker_failures=breaker_failures,
        breaker_reset_s=breaker_reset_s,
    )
    if cloud.startswith("lambda://"):
        return LambdaOffloader(
            cloud.removeprefix("lambda://"),
            endpoint_url=lambda_endpoint,
            region=region,
            policy=policy,
            secret=token,
        )
    return HttpOffloader(cloud.rstrip("/"), policy, token=token)


class PipelineBackend:
    """The contract's backend over a started pipeline (and its cloud tail, if any).

    Args:
        pipeline: a started :class:`~edgelesspart.pipeline.dispatcher.Pipeline`.
        offloader: where rows no edge exit answered go (``None``: no cloud).
        cloud: the ``--cloud`` value, for ``/v1/bundle`` and ``/healthz``.
        max_batch: most rows in one request.
        refuse: ``refuse(call, x)`` runs ``call(x)`` and maps a full window and a failed chain
            to HTTP errors (``pipeline.app.answer_or_refuse``).
        render: the dispatcher's metrics as Prometheus text (``pipeline.app.prometheus_text``).
    """

    kind = "pipeline"

    def __init__(
        self,
        pipeline: Any,
        *,
        offloader: Any = None,
        cloud: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        refuse: Callable[[Callable[[np.ndarray], Any], np.ndarray], Any] | None = None,
        render: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        from edgelesspart.runtime.codecs import decode_tensor, from_base64
        from edgelesspart.runtime.preprocess import image_to_tensor

        self.pipeline = pipeline
        self.manifest = pipeline.manifest
        self._refuse = refuse or (lambda call, x: call(x))
        self._render = render
        self.offloader = offloader
        self.cloud = cloud
        self.classes = tuple(self.manifest.classes)
        self._nodes = {w.get("stage"): w.get("node_id") for w in pipeline.workers}
        spec = pipeline.input_spec
        self._rank = len(spec.shape)
        exits = any(s.exit not in (None, "final") for s in self.manifest.segments)
        self._default = _stage_threshold(pipeline.stages) if exits else None
        manifest_input = self.manifest.input
        self.target = InferTarget(
            bundle_id=self.manifest.bundle_id,
            rank=self._rank,
            row_nbytes=spec.nbytes,
            max_batch=int(max_batch),
            decode_tensor=lambda body, limit: decode_tensor(body, max_bytes=limit),
            decode_base64=from_base64,
            decode_image=lambda body: image_to_tensor(body, manifest_input),
            check_threshold=threshold_checker(0.0, 1.0) if exits else None,
        )
        self.offloads = dict.fromkeys(("ok", "failed", "none"), 0)
        self.offloaded_rows = 0

    # ------------------------------------------------------------------ the contract

    def default_threshold(self) -> float | None:
        """The stages' exit threshold (``None``: the chain has no early exits)."""
        return self._default

    def answer(self, x: np.ndarray, threshold: float | None) -> Served:
        """Run every row through the chain; offload the rows that left it unanswered.

        A full window is 429, a chain that cannot answer 503 (through ``refuse``).
        """
        return self._refuse(lambda rows: self._answer(rows, threshold), x)

    def _answer(self, x: np.ndarray, threshold: float | None) -> Served:
        start = time.perf_counter()
        rows = as_batch(np.asarray(x), self._rank)
        results = self._run_rows(rows, threshold)
        answers: list[dict[str, Any] | None] = [None] * len(results)
        pending = []
        for i, res in enumerate(results):
            if res.final:
                answers[i] = self._row(res)
            else:
                pending.append(i)
        offload_ms, degraded = 0.0, 0
        if pending:
            t0 = time.perf_counter()
            cloud, reason = self._offload([results[i] for i in pending], threshold)
            offload_ms = (time.perf_counter() - t0) * 1000.0
            for j, i in enumerate(pending):
                if cloud is not None:
                    answers[i] = self._merge(results[i], cloud[j], offload_ms)
                else:
                    answers[i] = self._degraded(results[i], reason)
                    degraded += 1
        total_ms = (time.perf_counter() - start) * 1000.0
        timings = {"chain_ms": total_ms - offload_ms, "offload_ms": offload_ms,
                   "total_ms": total_ms}  # fmt: skip
        return Served(answers, len(pending), degraded, timings)  # type: ignore[arg-type]

    def _run_rows(self, rows: np.ndarray, threshold: float | None) -> list[Any]:
        """One chain input per row; a full window refuses the request (429) at its first row."""
        pipeline = self.pipeline
        tickets: list[Any] = []
        results: list[Any] = []
        try:
            for k in range(rows.shape[0]):
                while len(tickets) >= pipeline.window:
                    results.append(pipeline.result(tickets.pop(0)))
                blocking = k > 0  # later rows of an admitted request wait for a slot
                tickets.append(
                    pipeline.submit(
                        rows[k : k + 1], block=blocking,
                        timeout=pipeline.timeout_s if blocking else None, threshold=threshold,
                    )
                )  # fmt: skip
            while tickets:
                results.append(pipeline.result(tickets.pop(0)))
        except BaseException:
            for ticket in tickets:
                pipeline._abandon(ticket)
            raise
        return results

    def _row(self, res: Any, **extra: Any) -> dict[str, Any]:
        row = answer_row(
            res.probs, self.classes, exit=res.exit, stage=res.stage,
            timings={"chain": res.latency_ms, "total": res.latency_ms},
            node=self._nodes.get(res.stage) or res.stage, **extra,
        )  # fmt: skip
        row["attempts"] = int(getattr(res, "attempts", 1))  # > 1: answered late, after a fault
        return row

    def _degraded(self, res: Any, reason: str) -> dict[str, Any]:
        best = res.meta.get("best")
        timings = {"chain": res.latency_ms, "total": res.latency_ms}
        if not best:
            return answer_row(
                None, self.classes, exit=None, stage=res.stage, timings=timings, degraded=True,
                reason=f"{reason}; the edge stages have no exit to answer from",
                node=self._nodes.get(res.stage) or res.stage,
            )  # fmt: skip
        return answer_row(
            np.asarray(best["probs"]), self.classes, exit=best.get("exit"),
            stage=best.get("stage"), timings=timings, degraded=True, reason=reason,
            node=self._nodes.get(best.get("stage")) or best.get("stage"),
        )  # fmt: skip

    def _merge(self, res: Any, cloud: dict[str, Any], offload_ms: float) -> dict[str, Any]:
        answer = dict(cloud)
        cloud_timings = dict(cloud.get("timings") or {})
        cloud_timings.pop("total", None)
        answer["timings"] = {"chain": res.latency_ms, **cloud_timings, "offload": offload_ms,
                             "total": res.latency_ms + offload_ms}  # fmt: skip
        answer["node"] = "cloud"
        answer.setdefault("degraded", False)
        answer.setdefault("reason", None)
        return answer

    def _offload(
        self, results: list[Any], threshold: float | None
    ) -> tuple[list[dict[str, Any]] | None, str]:
        """Send the unanswered rows' boundaries in one call; (answers, "") or (None, reason)."""
        if self.offloader is None:
            self.offloads["none"] += 1
            return None, "no cloud configured: the chain's last edge stage answers"
        from edgelesspart.runtime.offload import check_answers

        boundary = np.concatenate([np.asarray(r.probs) for r in results], axis=0)
        rows = int(boundary.shape[0])
        self.offloaded_rows += rows
        thr = 1.0 if threshold is None and self._default is None else threshold
        meta = {"bundle_id": self.manifest.bundle_id, "rows": rows}
        try:
            answers = self.offloader.offload(
                boundary, threshold=self._default if thr is None else thr, meta=meta
            )
            answers = check_answers({"answers": answers}, rows)
        except OffloadRejected as exc:
            self.offloads["failed"] += 1
            return None, f"cloud rejected the call: {exc.status}: {exc}"
        except OffloadError as exc:
            self.offloads["failed"] += 1
            return None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - no row is lost to a transport bug
            self.offloads["failed"] += 1
            return None, f"offload failed: {type(exc).__name__}: {exc}"
        self.offloads["ok"] += 1
        return answers, ""

    def bundle_summary(self) -> dict[str, Any]:
        """The bundle as this chain serves it: stages, their nodes, exits, the cloud tail."""
        manifest = self.manifest
        edge = [s.name for s in self.pipeline.stages]
        return {
            "bundle_id": manifest.bundle_id,
            "model": manifest.model,
            "classes": list(manifest.classes),
            "input": manifest.input.to_dict(),
            "stages": list(manifest.stage_names),
            "edge_stage": edge[-1],
            "edge_stages": edge,
            "segments": [
                {"name": s.name, "stage": s.stage, "exit": s.exit} for s in manifest.segments
            ],  # fmt: skip
            "exits": [
                {"name": e.name, "stage": e.stage, "cut_point": e.cut_point} for e in manifest.exits
            ],  # fmt: skip
            "threshold": self._default,
            "max_batch": self.target.max_batch,
            "window": self.pipeline.window,
            "cloud": self.cloud,
        }

    def health(self) -> dict[str, Any]:
        """Stages up (``down``: the stages that are not, with their state) and the cloud tail's
        breaker."""
        ready = bool(self.pipeline.actors)
        ready_fn = getattr(self.pipeline, "ready", None)
        if callable(ready_fn):
            ready = bool(ready_fn())
        breaker = getattr(self.offloader, "breaker", None)
        state = getattr(breaker, "state", None)
        supervisor = getattr(self.pipeline, "supervisor", None)
        health = supervisor.metrics() if supervisor is not None else {}
        return {
            "ready": ready,
            "stages": len(self.pipeline.actors),
            "stage_states": {n: v.get("state") for n, v in health.items()},
            "down": {n: v.get("state") for n, v in health.items() if not v.get("up")},
            "cloud": {"kind": _cloud_kind(self.cloud),
                      "breaker": None if state is None else str(getattr(state, "value", state))},
        }  # fmt: skip

    def metrics_text(self) -> str:
        """The dispatcher's Prometheus lines plus the cloud tail's counters."""
        lines = ["# TYPE edgelesspart_offloads_total counter"]
        lines += [f'edgelesspart_offloads_total{{outcome="{k}"}} {v}'
                  for k, v in self.offloads.items() if k != "none"]  # fmt: skip
        lines += ["# TYPE edgelesspart_offloaded_rows_total counter",
                  f"edgelesspart_offloaded_rows_total {self.offloaded_rows}"]  # fmt: skip
        stats = getattr(self.offloader, "stats", None)
        if callable(stats):
            sent = stats().get("bytes_sent", 0)
            lines += ["# TYPE edgelesspart_offload_bytes_sent_total counter",
                      f"edgelesspart_offload_bytes_sent_total {sent}"]  # fmt: skip
        head = self._render(self.pipeline.metrics()) if self._render is not None else ""
        return head + "\n".join(lines) + "\n"


def _stage_threshold(stages: list[Any]) -> float | None:
    values = [s.threshold for s in stages if s.threshold is not None]
    return float(values[0]) if values else None


def _cloud_kind(cloud: str | None) -> str | None:
    if cloud is None:
        return None
    return cloud.split("://", 1)[0]
