"""Do ``build`` and ``evaluate`` agree on a bundle's measured compute saving? (issue 22)

Re-times a bundle the way both commands do (``evaluation.compute``: the bundle's reference full
model and its segments interleaved in one trace) at the manifest's serving threshold, with the
validation exit mix (what ``build`` prints on its ``compute:`` line) and the test exit mix (what
``evaluate`` prints), ``--repeats`` times each, alternating, and prints every figure with the
load. Nothing is written.

Usage::

    PYTHONPATH=. .venv/bin/python experiments/compute_agreement.py results/demo-hard [--repeats 3]
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    """Print the build-style and evaluate-style saving of a bundle, alternating."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from edgelesspart.evaluation import compute
    from edgelesspart.evaluation.pipeline import load_eval_data, trace_split
    from edgelesspart.runtime.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    threshold = float(bundle.manifest.serving["threshold"])
    data = load_eval_data(bundle.manifest)
    kw = {"batch_size": 256, "show": False}
    val = trace_split(bundle, data.x_val, label="val", **kw)
    test = trace_split(bundle, data.x_test, label="test", **kw)
    print(f"bundle {bundle.bundle_id}, threshold {threshold:g}, load {os.getloadavg()}")
    for _ in range(args.repeats):
        for name, trace, x in (("build (val)", val, data.x_val), ("evaluate (test)", test,
                                                                  data.x_test)):  # fmt: skip
            net = compute.measured_compute(trace, threshold, compute.time_interleaved(bundle, x))
            print(
                f"{name:16s} served {net['served_host_ms']:.4f} ms, full model "
                f"{net['full_model_host_ms']:.4f} ms: {compute.format_saving(net)}"
            )
    print(f"load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
