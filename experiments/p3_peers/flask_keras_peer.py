"""P3 peer: plain Flask + Keras ``model(x)`` (the naive server).

The edge stage's ``.keras`` segments (the same weights as the ``.tflite`` ones), loaded with
``safe_mode=True`` and called as ``model(x, training=False)`` in order, each exit checked at the
threshold (the same progressive behaviour); served by Flask's own threaded server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    """Serve until killed."""
    import keras
    import numpy as np
    from flask import Flask, request

    from edgelesspart.runtime.manifest import load_manifest, safe_path

    args = common.parse(__doc__.splitlines()[0])
    manifest = load_manifest(args.bundle, verify=False)
    stage = manifest.stage_names[0]
    segments = [s for s in manifest.segments if s.stage == stage]
    models = [keras.saving.load_model(str(safe_path(Path(args.bundle), s.files["keras"])),
                                      safe_mode=True, compile=False) for s in segments]  # fmt: skip
    classes = list(manifest.classes)
    app = Flask("flask_keras_peer")

    @app.post("/v1/infer")
    def infer():
        x = common.decode(request.get_data(), request.content_type or "", manifest.input)
        best = None
        for seg, model in zip(segments, models):
            out = model(x, training=False)
            if seg.exit is not None:
                probs = np.asarray(out["probs"])[0]
                label, conf = int(probs.argmax()), float(probs.max())
                if best is None or conf > best[1]:
                    best = (label, conf, seg.exit)
                if conf >= args.threshold:
                    break
            if "boundary" in out:
                x = out["boundary"]
        label, conf, exit_name = best
        return json.dumps({"answers": [{"label": label, "class_name": classes[label],
                                        "confidence": conf, "exit": exit_name}]})  # fmt: skip

    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
