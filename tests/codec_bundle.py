"""Give a copy of the tiny test bundle a measured codec table, with the runtime only (no TF).

``edgelesspart build`` measures the codecs with the Keras tail of the trained model
(:func:`edgelesspart.planning.codec_selection.measure_at_split`). Here the tail is the bundle's own
LiteRT
cloud segments, so the table is real (every available codec encodes, decodes and is classified
at batch 1 on validation digits) and takes a second instead of a build. The copy keeps its
bundle id, gets ``codecs.json`` (hashed in the manifest like every file) and a manifest
``codec`` entry chosen by the same rule as the build.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

NO_EXITS = 2.0  # a threshold above 1: no early exit answers, every row reaches the split


def runtime_tail(bundle: Any) -> Any:
    """A Keras-like ``tail(x, training=False) -> final probabilities`` over the cloud segments."""
    from edgelesspart.runtime.manifest import FINAL_EXIT

    segments = [s for stage in bundle.stages[1:] for s in bundle.segments(stage)]

    def tail(x: np.ndarray, training: bool = False) -> np.ndarray:
        current, probs = x, None
        for seg in segments:
            out, current = bundle.runner(seg.name)(current)
            if seg.exit == FINAL_EXIT:
                probs = out
        return probs

    return tail


def with_codec_table(
    source: Path, target: Path, *, samples: int = 60, codec: str = "auto", max_loss_pp: float = 0.5
) -> Path:
    """Copy the bundle at ``source`` to ``target`` and add its measured codec table."""
    from edgelesspart.model.datasets import load_dataset
    from edgelesspart.planning.codec_selection import codec_entry, measure_codecs
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import hash_files, load_manifest, write_manifest

    shutil.copytree(source, target)
    data = load_dataset("digits", seed=0)
    x, y = data.x_val[:samples], data.y_val[:samples]
    bundle = Bundle.load(target, pool_size=1)
    boundary = ProgressiveExecutor(bundle, bundle.stages[0]).run(x, threshold=NO_EXITS).boundary
    manifest = load_manifest(target)
    table = measure_codecs(
        runtime_tail(bundle), boundary, y, cut_point=manifest.plan.split, host="test host"
    )
    (target / "codecs.json").write_text(json.dumps(table.to_dict(), indent=2) + "\n", "utf-8")
    files = {**manifest.files, **hash_files(target, ["codecs.json"])}
    entry = codec_entry(table, codec, max_loss_pp)
    write_manifest(target, replace(manifest, codec=entry, files=files))
    return target
