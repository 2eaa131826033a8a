"""Re-planning time of SlimEdge's NSGA-II for the survivors, timed in one process.

``slimedge_sim.py`` records re-planning times while its worker processes share the cores; this
re-times the same failure sets (the first ``--count`` feasible scenarios of
``results/slimedge/sim.json``, 1 and 2 devices lost) one after another in a single process, as
the dispatcher would run them, and records the host load. Writes
``results/slimedge/replan_timing.json``.

Usage::

    .venv/bin/python experiments/slimedge_replan_timing.py [--count 100]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import slimedge_sim  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time the re-plans and print their distribution."""
    from edgelesspart.profiling.devices import load_device
    from edgelesspart.slimedge.curves import CurveModel, ViewCurves
    from edgelesspart.slimedge.deploy import slots_for
    from edgelesspart.slimedge.optimize import DeviceSlot, replan

    def extra(parser: Any) -> None:
        parser.add_argument("--count", type=int, default=100)

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    out = slimedge_sim.OUT
    sim = json.loads((out / "sim.json").read_text())
    model = CurveModel(ViewCurves.from_dict(sim["curves"]))
    unpruned = float(model.curves.memory_bytes[0])
    cpu0, load0 = slimedge_sim.cpu_times(), os.getloadavg()
    seconds = []
    rows = [r for r in sim["scenarios"] if r["slimedge"]["feasible"]][: args.count]
    for row in rows:
        devices = slots_for([load_device(d) for d in row["devices"]])
        slots = [
            DeviceSlot(d.name, d.factor, r * unpruned) for d, r in zip(devices, row["memory_ratio"])
        ]
        for failure in row["failures"].values():
            alive = [v for v in range(len(slots)) if v not in failure["lost"]]
            start = time.perf_counter()
            replan(model, slots, alive, max_drop=slimedge_sim.MAX_DROP)
            seconds.append(time.perf_counter() - start)
    cpu1 = slimedge_sim.cpu_times()
    util = round(100 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]), 1) if cpu0 and cpu1 else None
    q = np.percentile(seconds, [50, 95, 99]).tolist()
    record = {
        "replans": len(seconds),
        "mean_s": float(np.mean(seconds)),
        "p50_p95_p99_s": q,
        "max_s": float(np.max(seconds)),
        "over_1s": int(sum(s > 1.0 for s in seconds)),
        "load_average_before": [round(x, 2) for x in load0],
        "host_cpu_utilisation_percent": util,
        "machine": benchlib.machine_info(),
    }
    (out / "replan_timing.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
