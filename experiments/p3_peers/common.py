"""What every P3 peer server shares: the same edge stage, request decoding and answer JSON.

A peer is what a user would write around our runtime instead of running ``serve-edge``: load
the bundle's edge stage into a :class:`ProgressiveExecutor` (LiteRT) at the benchmark's
threshold, decode the body (tensor wire format or PNG/JPEG, with the runtime's own decoders),
run, answer JSON. No auth, admission, metrics or offload: the peers do less than we do.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

TENSOR = "application/x-edgelesspart-tensor"


def parse(description: str) -> argparse.Namespace:
    """The peers' common flags: bundle, port, threshold."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--mode", default="")
    return parser.parse_args()


def load_executor(bundle_path: str, threshold: float, pool_size: int = 4) -> Any:
    """The bundle's edge stage as a ProgressiveExecutor (LiteRT)."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import load_manifest

    stage = load_manifest(bundle_path, verify=False).stage_names[0]
    bundle = Bundle.load(bundle_path, stages=[stage], pool_size=pool_size)
    return ProgressiveExecutor(bundle, stage, threshold)


def decode(body: bytes, content_type: str, input_spec: Any) -> np.ndarray:
    """A request body as a batch: the tensor wire format, or a PNG/JPEG image."""
    if content_type.startswith(("image/png", "image/jpeg")):
        from edgelesspart.runtime.preprocess import image_to_tensor

        return image_to_tensor(body, input_spec)
    from edgelesspart.runtime.codecs import decode_tensor

    return decode_tensor(body)[0]


def answers(result: Any) -> list[dict[str, Any]]:
    """Each row's answer (best exit when no exit was confident: the edge runs alone)."""
    return [
        (a or b).to_dict() if (a or b) is not None else None
        for a, b in zip(result.answers, result.best)
    ]


def answers_json(result: Any) -> bytes:
    """The JSON body a peer answers with."""
    return json.dumps({"answers": answers(result)}).encode()
