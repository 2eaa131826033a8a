"""Fault injection and load: does the edge service keep answering while the cloud misbehaves?

Starts, on loopback, a cloud part (``experiments/chaos_cloud.py``: the real local cloud server
behind a chaos switch) and the edge service (``edgelesspart serve-edge``) as two processes, then:

1. **Faults.** Sends ``--requests`` one-row inferences (default 10,000) from ``--clients``
   concurrent clients, paced at ``--rate`` per second, while a schedule (:data:`SCHEDULE`,
   seventeen phases of 1/17 of the requests) kills the cloud (SIGKILL), restarts it, makes it
   slow past the edge's timeout, answer 500, answer garbage, answer well-formed JSON with
   wrongly typed fields (``malformed``), refuse with 401 and with 404, with healthy phases in
   between; in the ``overlimit`` phase the cloud is healthy but every request carries
   ``faultlib.OVERLIMIT_ROWS`` rows whose offload is over the edge's per-request limit, so it
   must be split into chunks (all rows must come back from the cloud).
   Phases do not overlap: a phase's fault is applied once every request of the previous phase
   has been answered, and before any request of its own goes out. Every reply is checked: a
   cloud answer, an edge early-exit answer, or an edge answer marked ``degraded`` with a
   reason. Anything else (no reply, a 5xx, a malformed body, a 429 still refused after three
   polite retries) is **lost**. Breaker transitions are read from the edge's ``/metrics`` at
   each phase boundary, the cloud's per-mode call counts from its ``/_chaos`` route, and the
   edge process's resident memory is sampled throughout.
2. **Load.** With a healthy cloud: the capacity is the closed-loop throughput of
   ``max_inflight`` clients; the sustainable rate is the highest open-loop rate, stepping down
   from the capacity, answered with at most 1 % 429s; then open-loop arrivals at 1x, 2x and 4x
   the sustainable rate for ``--load-s`` seconds each. Latency counts from the scheduled send
   time (no coordinated omission); p50/p99, the 429 rate and the error rate (non-429 failures)
   are reported per level.

Writes ``<out>/fault_harness.json`` (default ``results/reliability/``, git-ignored) and prints a
summary whose last line is the headline. Every request asks for ``threshold=1.0`` so nearly
every row takes the whole edge -> cloud path (the worst case for faults).

Usage::

    .venv/bin/python experiments/fault_harness.py --bundle bundles/demo
    .venv/bin/python experiments/fault_harness.py --bundle B --requests 600 --rate 100 --load-s 1
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from faultlib import (  # noqa: E402
    OVERLIMIT_ROWS,
    ROOT,
    Client,
    EdgeSettings,
    RssSampler,
    Services,
    Tally,
    delta,
    pct,
    scrape,
)

RESULTS_DIR = ROOT / "results" / "reliability"
SCHEMA = "edgelesspart-fault-harness/1"
#: (mode, share of the requests). ``kill`` SIGKILLs the cloud; ``restart`` starts it again and
#: keeps sending while it boots; the other modes switch the running cloud's chaos mode.
SCHEDULE = tuple(
    (mode, 1.0)
    for mode in (
        "ok", "kill", "restart", "ok", "slow", "ok", "error", "ok", "garbage", "ok",
        "malformed", "ok", "unauthorized", "ok", "notfound", "ok", "overlimit",
    )
)  # fmt: skip
#: Chaos modes of the running cloud (its /_chaos route counts the calls in each).
CHAOS = ("slow", "error", "garbage", "malformed", "unauthorized", "notfound")
FAULTS = ("kill", *CHAOS)
#: The growth of the edge's RSS (end - start of the run) above which memory is called unbounded.
RSS_GROWTH_LIMIT_MIB = 64.0


@dataclass(frozen=True)
class HarnessConfig:
    """Settings of one harness run."""

    requests: int = 10_000
    rate_per_s: float = 200.0
    clients: int = 8
    warmup: int = 32
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    load_s: float = 8.0
    load_levels: tuple[float, ...] = (1.0, 2.0, 4.0)
    load_clients: int = 48
    rss_interval_s: float = 0.25
    seed: int = 0


class FaultRun:
    """Drives the chaos schedule from the request counter while the clients keep sending."""

    def __init__(self, services: Services, client: Client, config: HarnessConfig) -> None:
        self.services, self.client, self.config = services, client, config
        shares = np.array([share for _, share in SCHEDULE], dtype=float)
        bounds = np.floor(np.cumsum(shares / shares.sum()) * config.requests).astype(int)
        self.starts = [0, *bounds[:-1].tolist()]
        self.tallies = [Tally() for _ in SCHEDULE]
        self.marks: list[dict[str, Any]] = [{} for _ in SCHEDULE]
        self._phase_t0 = [0.0 for _ in SCHEDULE]
        self._next = 0
        self._outstanding = 0
        self._entering = False
        self._cond = threading.Condition()
        self._booting: threading.Thread | None = None

    def _take(self) -> tuple[int, int, float] | None:
        """The next request index, its phase and when it is due.

        Phases do not overlap: before a phase's first request, every request of the previous
        phase has been answered, then the phase's fault is applied (all under the lock, so no
        request of the phase goes out before that). Requests are paced at ``rate_per_s`` from
        the start of their phase, so a phase lasts long enough for the breaker's timer to matter.
        """
        with self._cond:
            self._cond.wait_for(lambda: not self._entering)
            if self._next >= self.config.requests:
                return None
            i, self._next = self._next, self._next + 1
            k = int(np.searchsorted(self.starts, i, side="right") - 1)
            if i == self.starts[k]:
                self._entering = True  # nobody draws a request until the fault is applied
                self._cond.wait_for(lambda: self._outstanding == 0)
                try:
                    self._enter(k)
                finally:
                    self._entering = False
                    self._cond.notify_all()
                self._phase_t0[k] = time.monotonic()
            self._outstanding += 1
            return i, k, self._phase_t0[k] + (i - self.starts[k]) / self.config.rate_per_s

    def _done(self) -> None:
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    def _enter(self, k: int) -> None:
        mode = SCHEDULE[k][0]
        services = self.services
        mark: dict[str, Any] = {"t": time.monotonic(), "edge": scrape(services.edge_url)}
        if mode == "kill":
            mark["cloud"] = services.set_mode("ok")
            services.kill_cloud()
        elif mode == "restart":
            services.spawn_cloud()
            self._booting = threading.Thread(target=services.wait_cloud, daemon=True)
            self._booting.start()
            mark["restarted"] = True
        else:
            if self._booting is not None:  # the cloud must be up before a chaos mode applies
                self._booting.join()
                self._booting = None
            if not services.cloud_alive():
                services.spawn_cloud()
                services.wait_cloud()
                mark["restarted"] = True
            mark["cloud"] = services.set_mode("ok" if mode == "overlimit" else mode)
        self.marks[k] = mark

    def _worker(self) -> None:
        while (taken := self._take()) is not None:
            i, k, due = taken
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            rows = OVERLIMIT_ROWS if SCHEDULE[k][0] == "overlimit" else 1
            try:
                self.client.ask(i, self.tallies[k], rows=rows)
            finally:
                self._done()

    def run(self) -> list[dict[str, Any]]:
        """Warm up (uncounted), send every request; return one summary per phase."""
        warm = Tally()
        for i in range(self.config.warmup):
            self.client.ask(i, warm)
        self.warmup = dict(warm.counts)
        threads = [threading.Thread(target=self._worker) for _ in range(self.config.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._booting is not None:
            self._booting.join()
        end = {"t": time.monotonic(), "edge": scrape(self.services.edge_url)}
        if self.services.cloud_alive():
            end["cloud"] = self.services.set_mode("ok")
        return [self._phase(k, end) for k in range(len(SCHEDULE))]

    def _phase(self, k: int, end: dict[str, Any]) -> dict[str, Any]:
        mark = self.marks[k]
        after = self.marks[k + 1] if k + 1 < len(SCHEDULE) else end
        tally = self.tallies[k]
        mode = SCHEDULE[k][0]
        seen = calls_ok = None
        if after.get("cloud") and mark.get("cloud"):
            counted = after["cloud"]["seen"], mark["cloud"]["seen"]
            if mode in CHAOS:
                seen = counted[0][mode] - counted[1][mode]
            calls_ok = counted[0]["ok"] - counted[1]["ok"]
        duration = after["t"] - mark["t"]
        return {
            "mode": mode,
            "restarted_cloud": bool(mark.get("restarted")),
            "requests": sum(tally.counts.values()),
            "outcomes": dict(tally.counts),
            "statuses": dict(tally.statuses),
            "degraded_reasons": dict(tally.reasons.most_common()),
            "reason_examples": dict(tally.examples),
            "duration_s": round(duration, 2),
            "breaker": delta(after["edge"]["transitions"], mark["edge"]["transitions"]),
            "breaker_state_after": after["edge"]["state"],
            "cloud_calls_in_mode": seen,
            "cloud_calls_ok": calls_ok,
            "cloud_calls_bound": self._call_bound(duration) if seen is not None else None,
            "p50_ms": pct(tally.latencies_ms, 50),
            "p99_ms": pct(tally.latencies_ms, 99),
        }

    def _call_bound(self, duration_s: float) -> int:
        """Most calls a failing cloud may see in a phase if the breaker works as specified.

        Closed: ``breaker_failures`` failed calls plus the calls already in flight
        (``offload_workers``), each tried at most ``retries + 1`` times. Open: none. Half-open:
        one trial per ``breaker_reset_s``.
        """
        e = self.config.edge
        attempts = e.retries + 1
        trials = int(np.ceil(duration_s / e.breaker_reset_s)) + 1
        return (e.breaker_failures + e.offload_workers) * attempts + trials


def closed_loop(client: Client, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` clients back to back for ``seconds``: the sustainable rate (answers/s)."""
    tally = Tally()
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    sent = [0]

    def worker() -> None:
        while time.monotonic() < stop:
            with lock:
                i = sent[0] = sent[0] + 1
            status, body, _ = client.send(i)
            kind, _ = client.classify(status, body)
            tally.add(kind, 0.0, status=status)

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(worker)
    elapsed = time.monotonic() - start
    answered = sum(n for kind, n in tally.counts.items() if kind not in ("busy", "lost"))
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "answered": answered,
        "rate_per_s": round(answered / elapsed, 1),
        "outcomes": dict(tally.counts),
    }


def open_loop(client: Client, rate: float, seconds: float, pool_size: int) -> dict[str, Any]:
    """One request every ``1/rate`` s for ``seconds``; latency from each scheduled send time."""
    tally = Tally()
    total = max(1, int(rate * seconds))
    t0 = time.perf_counter() + 0.05

    def one(i: int, due: float) -> None:
        status, body, headers = client.send(i)
        kind, reason = client.classify(status, body)
        if kind == "busy" and "Retry-After" not in headers:
            tally.refused_without_retry_after()
        tally.add(kind, (time.perf_counter() - due) * 1000.0, reason, status)

    with ThreadPoolExecutor(pool_size) as pool:
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, due)
    elapsed = time.perf_counter() - t0
    n = sum(tally.counts.values())
    answered = [lat for lat, kind in zip(tally.latencies_ms, tally.kinds) if kind != "busy"]
    return {
        "target_rate_per_s": round(rate, 1),
        "sent": n,
        "elapsed_s": round(elapsed, 2),
        "answered_per_s": round((n - tally.counts["busy"] - tally.counts["lost"]) / elapsed, 1),
        "outcomes": dict(tally.counts),
        "statuses": dict(tally.statuses),
        "rate_429": round(tally.counts["busy"] / n, 4),
        "error_rate": round(tally.counts["lost"] / n, 4),
        "missing_retry_after": tally.missing_retry_after,
        "p50_ms": pct(tally.latencies_ms, 50),
        "p99_ms": pct(tally.latencies_ms, 99),
        "answered_p50_ms": pct(answered, 50),
        "answered_p99_ms": pct(answered, 99),
    }


#: Fractions of the closed-loop capacity tried, in order, when looking for the sustainable rate.
SUSTAINABLE_STEPS = (1.0, 0.85, 0.7, 0.55, 0.4, 0.25)
#: Largest share of 429s (and no other error) at which an offered rate counts as sustainable.
SUSTAINABLE_MAX_429 = 0.01


def find_sustainable(client: Client, capacity: float, config: HarnessConfig) -> dict[str, Any]:
    """The highest offered rate (a step down from ``capacity``) that is answered with at most
    1% 429s and no other error, each step an open-loop probe of ``load_s / 4`` seconds."""
    probe_s = max(1.0, config.load_s / 4)
    probes = []
    for step in SUSTAINABLE_STEPS:
        probe = open_loop(client, step * capacity, probe_s, config.load_clients)
        probes.append({"fraction": step, **{k: probe[k] for k in (
            "target_rate_per_s", "sent", "rate_429", "error_rate", "p50_ms", "p99_ms")}})
        time.sleep(0.5)
        if probe["rate_429"] <= SUSTAINABLE_MAX_429 and probe["error_rate"] == 0:
            return {"rate_per_s": probe["target_rate_per_s"], "probes": probes}
    return {"rate_per_s": probes[-1]["target_rate_per_s"], "probes": probes, "met": False}


def run_load(client: Client, config: HarnessConfig) -> dict[str, Any]:
    """Capacity, the sustainable rate, then open-loop load at each multiple of the latter.

    The capacity is the closed-loop throughput of ``max_inflight`` clients (every admission
    slot busy, nobody waiting). The sustainable rate is the highest offered (open-loop) rate,
    stepping down from the capacity, answered with at most 1% 429s (:func:`find_sustainable`).
    """
    capacity = closed_loop(client, config.edge.max_inflight, config.load_s)
    sustainable = find_sustainable(client, max(capacity["rate_per_s"], 1.0), config)
    levels = []
    for factor in config.load_levels:
        level = open_loop(client, factor * sustainable["rate_per_s"], config.load_s,
                          config.load_clients)
        levels.append({"factor": factor, **level})
        time.sleep(0.5)  # let the waiting room drain between levels
    return {"capacity": capacity, "sustainable": sustainable, "levels": levels}


def chunk_limit(bundle: Path) -> int:
    """An offload limit that fits 2 boundary rows (raw codec) but not ``OVERLIMIT_ROWS``."""
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bundle, verify=False)
    cloud = [s for s in manifest.segments if s.stage != manifest.stage_names[0]]
    return int(2.5 * cloud[0].input.nbytes) + 1024


def run_harness(bundle: Path, config: HarnessConfig, out: Path) -> dict[str, Any]:
    """Run the fault schedule and the load levels against ``bundle``; return the report."""
    out.mkdir(parents=True, exist_ok=True)
    config = replace(config, edge=replace(config.edge, offload_max_bytes=chunk_limit(bundle)))
    services = Services(bundle, config.edge, out / "logs")
    load_before = benchlib.load_average()
    t0 = time.monotonic()
    try:
        services.spawn_cloud()
        services.wait_cloud()
        services.start_edge()
        sampler = RssSampler(services.edge.pid, config.rss_interval_s)
        sampler.start()
        client = Client(services.edge_url, bundle, seed=config.seed)
        fault_run = FaultRun(services, client, config)
        phases = fault_run.run()
        rss_after_faults = sampler.mark()
        load = run_load(client, config)
        rss = sampler.stop()
        rss["after_faults_mib"] = None if rss_after_faults is None else round(rss_after_faults, 1)
        final = scrape(services.edge_url)
    finally:
        services.stop()
    report = {
        "schema": SCHEMA,
        "bundle": str(bundle),
        "config": asdict(config),
        "machine": {
            **benchlib.machine_info(),
            "load_average_before": load_before,
            "load_average_after": benchlib.load_average(),
        },
        "wall_s": round(time.monotonic() - t0, 1),
        "cloud": {
            "starts": services.cloud_starts,
            "kills": services.cloud_kills,
            "start_s": services.restart_s,
        },
        "warmup": fault_run.warmup,
        "phases": phases,
        "faults": summarize(phases, config),
        "breaker_transitions_total": final["transitions"],
        "rss": rss,
        "load": load,
    }
    report["checks"] = checks(report)
    return report


def summarize(phases: list[dict[str, Any]], config: HarnessConfig) -> dict[str, Any]:
    """Totals of the fault run: sent, lost, outcomes, degraded reasons, 5xx."""
    outcomes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for phase in phases:
        for source, target in (
            (phase["outcomes"], outcomes),
            (phase["degraded_reasons"], reasons),
            (phase["statuses"], statuses),
        ):
            for key, n in source.items():
                target[key] = target.get(key, 0) + n
    return {
        "sent": sum(outcomes.values()),
        "lost": outcomes.get("lost", 0),
        "outcomes": outcomes,
        "degraded_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "statuses": statuses,
        "http_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "requested": config.requests,
    }


def recoveries(phases: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each fault phase's mode with the healthy phases that follow it (up to the next fault)."""
    out = []
    for k, phase in enumerate(phases):
        if phase["mode"] in FAULTS:
            after = []
            for nxt in phases[k + 1 :]:
                if nxt["mode"] in FAULTS:
                    break
                after.append(nxt)
            out.append((phase["mode"], after))
    return out


def opened(phase: dict[str, Any]) -> bool:
    """Whether the breaker opened during a phase and was not closed at its end (it may have
    gone half-open by then; it may also have entered the phase already open)."""
    moves = phase["breaker"]
    into_open = moves.get("closed->open", 0) + moves.get("half-open->open", 0)
    return into_open >= 1 and phase["breaker_state_after"] in ("open", "half-open")


def checks(report: dict[str, Any]) -> dict[str, bool]:
    """The pass/fail checks of issue 7 on a finished report."""
    phases, faults, rss = report["phases"], report["faults"], report["rss"]
    levels = report["load"]["levels"]
    return {
        "all_sent": faults["sent"] == faults["requested"],
        "zero_lost": faults["lost"] == 0,
        "no_5xx": faults["http_5xx"] == 0,
        "breaker_opened_in_every_fault": all(opened(p) for p in phases if p["mode"] in FAULTS),
        "breaker_closed_after_every_fault": all(
            bool(after)
            and sum(p["breaker"].get("half-open->closed", 0) for p in after) >= 1
            and after[-1]["breaker_state_after"] == "closed"
            for _, after in recoveries(phases)
        ),
        "cloud_calls_within_breaker_bound": all(
            p["cloud_calls_in_mode"] <= p["cloud_calls_bound"]
            for p in phases
            if p["cloud_calls_in_mode"] is not None
        ),
        "overlimit_requests_split_and_answered": all(
            p["outcomes"].get("cloud", 0) == p["requests"] > 0
            and (p["cloud_calls_ok"] or 0) >= 2 * p["requests"]
            for p in phases
            if p["mode"] == "overlimit"
        ),
        "every_429_has_retry_after": all(level["missing_retry_after"] == 0 for level in levels),
        "load_no_errors_besides_429": all(level["error_rate"] == 0 for level in levels),
        "rss_bounded": bool(rss.get("available")) and rss["growth_mib"] < RSS_GROWTH_LIMIT_MIB,
    }


def headline(report: dict[str, Any]) -> list[str]:
    """Human-readable summary lines; the last one is the headline."""
    f, rss, load = report["faults"], report["rss"], report["load"]
    lines = [f"{'phase':12} {'n':>6} {'cloud':>6} {'edge':>5} {'degr':>6} {'lost':>5}  breaker"]
    for p in report["phases"]:
        o = p["outcomes"]
        lines.append(
            f"{p['mode']:12} {p['requests']:6d} {o.get('cloud', 0):6d} {o.get('edge', 0):5d} "
            f"{o.get('degraded', 0):6d} {o.get('lost', 0):5d}  {p['breaker'] or '-'}"
            + (f" calls {p['cloud_calls_in_mode']}<={p['cloud_calls_bound']}"
               if p["cloud_calls_in_mode"] is not None else "")
        )
    lines.append(f"degraded by reason: {f['degraded_reasons']}")
    lines.append(f"breaker transitions (whole run): {report['breaker_transitions_total']}")
    if rss.get("available"):
        lines.append(
            f"edge RSS: min {rss['min_mib']} max {rss['max_mib']} start {rss['start_mib']} "
            f"end {rss['end_mib']} MiB (growth {rss['growth_mib']} MiB, {rss['samples']} samples)"
        )
    cap, s = load["capacity"], load["sustainable"]
    lines.append(
        f"capacity ({cap['clients']} closed-loop clients): {cap['rate_per_s']}/s; sustainable "
        f"(<= 1% 429, open loop): {s['rate_per_s']}/s"
    )
    for lv in load["levels"]:
        lines.append(
            f"  {lv['factor']:g}x {lv['target_rate_per_s']}/s: p50 {lv['p50_ms']} ms "
            f"p99 {lv['p99_ms']} ms, 429 {lv['rate_429']:.1%}, errors {lv['error_rate']:.1%}"
        )
    failed = [name for name, ok in report["checks"].items() if not ok]
    lines.append(
        f"fault harness: sent {f['sent']}, lost {f['lost']}, degraded "
        f"{f['outcomes'].get('degraded', 0)}, 5xx {f['http_5xx']}; checks "
        + ("all passed" if not failed else f"FAILED: {', '.join(failed)}")
    )
    return lines


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "demo")
    parser.add_argument("--requests", type=int, default=HarnessConfig.requests)
    parser.add_argument("--rate", type=float, default=HarnessConfig.rate_per_s,
                        help="fault-run pace in requests/s (per phase)")
    parser.add_argument("--clients", type=int, default=HarnessConfig.clients)
    parser.add_argument("--load-s", type=float, default=HarnessConfig.load_s)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the harness, write ``<out>/fault_harness.json``; exit 1 if a check failed."""
    args = _args(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(
            f"No bundle at {args.bundle}: build one with `make demo` or pass --bundle DIR.",
            file=sys.stderr,
        )
        return 2
    config = HarnessConfig(
        requests=args.requests,
        rate_per_s=args.rate,
        clients=args.clients,
        load_s=args.load_s,
        seed=args.seed,
    )
    report = run_harness(args.bundle, config, args.out)
    path = args.out / "fault_harness.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"written: {path}")
    print("\n".join(headline(report)))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
