"""Build-time side of device profiling: write profiling kits and measure this host's reference.

* :func:`write_kit` converts the stretch between every two consecutive candidate cut points
  (the same candidates the build's profiler and planner use) and the whole model to LiteRT and
  writes them with a ``kit.json`` manifest (format: :mod:`edgelesspart.runtime.device_profiler`).
  Copy the directory to the device and run ``edgelesspart profile-device KIT --out DEVICE.json``
  there (lean install, no TensorFlow); ``edgelesspart build --edge-device DEVICE.json`` then plans
  with the device's own numbers.
* :func:`host_reference_ms` measures, on this host and at build time, the latency of a reference
  model for which a device has a published figure (ResNet50 at 224x224 for ``rpi4`` and
  ``jetson-orin-nano``), with the same LiteRT path and settings the profiler uses. A device
  without a measured profile is scaled by ``published / this measurement`` instead of a stored
  constant from another machine. The result is cached per host identity, model and LiteRT
  version in ``$XDG_CACHE_HOME/edgelesspart/host_reference.json`` (``~/.cache`` by default),
  because converting ResNet50 costs ~30 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, ProfileError
from edgelesspart.progress import progress
from edgelesspart.runtime.device_profiler import device_identity
from edgelesspart.runtime.kit import KIT_MANIFEST, WHOLE, KitCutPoint, KitManifest
from edgelesspart.runtime.plan import MODEL_INPUT

#: Input shape of each reference model the published device figures were measured at.
REFERENCE_INPUTS = {"resnet50": (224, 224, 3), "mobilenetv2": (224, 224, 3)}
REFERENCE_CLASSES = 1000
CACHE_FILE = "host_reference.json"


def write_kit(
    model: Any,
    out: str | Path,
    *,
    model_name: str,
    max_cut_points: int = 16,
    overwrite: bool = False,
) -> KitManifest:
    """Write a profiling kit for ``model`` to ``out`` (atomically: all or nothing).

    Args:
        model: a flat functional Keras model (the backbone the build profiles).
        out: the kit directory to create.
        model_name: the name recorded (the build's model name).
        max_cut_points: candidate cut points, as in the build (``--max-cut-points``).
        overwrite: replace an existing directory.

    Raises:
        BundleError: ``out`` exists and ``overwrite`` is false.
    """
    from edgelesspart.model.graph import cut_tensor, extract, find_cut_points
    from edgelesspart.model.graph import functional_model as _functional
    from edgelesspart.model.litert import to_tflite
    from edgelesspart.profiling.profiler import candidate_cut_points, memory_profile
    from edgelesspart.runtime.plan import MODEL_OUTPUT

    target = Path(out)
    if target.exists() and not overwrite:
        raise BundleError(f"{target} already exists; pass --overwrite or choose another path.")
    model = _functional(model)
    names = [c.name for c in candidate_cut_points(find_cut_points(model), max_cut_points)]
    names.append(MODEL_OUTPUT)
    memory = memory_profile(model, names)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (tmp / "slices").mkdir()
        entries, start = [], MODEL_INPUT
        converting = progress(enumerate(names), len(names), "profile-kit: converting slices")
        for index, name in converting:
            tensor = cut_tensor(model, name)
            stretch = extract(model, start, {"boundary": tensor}, name=f"stretch_{index}")
            rel = f"slices/stretch_{index}.tflite"
            (tmp / rel).write_bytes(to_tflite(stretch))
            shape = tuple(int(d) for d in tensor.shape[1:])
            mem, weights = memory[name]
            entries.append(
                KitCutPoint(name, index, rel, mem, weights, shape, 4 * int(np.prod(shape)))
            )
            start = name
        whole_rel = f"slices/{WHOLE}.tflite"
        whole = extract(model, MODEL_INPUT, {"boundary": model.outputs[0]}, name=WHOLE)
        (tmp / whole_rel).write_bytes(to_tflite(whole))
        manifest = _kit_manifest(tmp, model, model_name, tuple(entries), whole_rel)
        (tmp / KIT_MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", "utf-8")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _kit_manifest(
    root: Path, model: Any, model_name: str, entries: tuple[KitCutPoint, ...], whole: str
) -> KitManifest:
    files = {}
    for rel in [e.slice for e in entries] + [whole]:
        files[rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    digest = hashlib.sha256(
        json.dumps([model_name, [e.to_dict() for e in entries], files], sort_keys=True).encode()
    )
    return KitManifest(
        kit_id=digest.hexdigest()[:16],
        model=model_name,
        input_shape=tuple(int(d) for d in model.inputs[0].shape[1:]),
        cut_points=entries,
        whole=whole,
        files=files,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def cache_path() -> Path:
    """Where host reference measurements are cached (``$XDG_CACHE_HOME/edgelesspart``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgelesspart" / CACHE_FILE


def _cache_key(model_name: str) -> str:
    ident = device_identity()
    return "|".join(
        str(v) for v in (model_name, ident["cpu_model"], ident["cores"], ident["litert_version"], 1)
    )


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def measure_reference_ms(model_name: str, *, repeats: int = 15, warmup: int = 3) -> float:
    """This host's batch-1 LiteRT latency of a reference model (1 thread, median; no cache)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgelesspart.model import zoo
    from edgelesspart.model.graph import extract, functional_model
    from edgelesspart.model.litert import to_tflite

    key = model_name.lower()
    if key not in REFERENCE_INPUTS:
        raise ProfileError(
            f"No reference input known for {model_name!r}; reference models: "
            f"{', '.join(sorted(REFERENCE_INPUTS))}."
        )
    model = functional_model(zoo.build_model(key, REFERENCE_INPUTS[key], REFERENCE_CLASSES))
    whole = extract(model, MODEL_INPUT, {"probs": model.outputs[0]}, name="reference")
    runner = Interpreter(model_content=to_tflite(whole), num_threads=1).get_signature_runner(
        "serving_default"
    )
    x = np.random.default_rng(0).random((1, *REFERENCE_INPUTS[key]), dtype=np.float32)
    for _ in range(warmup):
        runner(x=x)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(x=x)
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(samples))


def host_reference_ms(
    model_name: str,
    *,
    cache: Path | None = None,
    measure: Callable[[str], float] = measure_reference_ms,
) -> tuple[float, str]:
    """This host's reference latency of ``model_name`` and where it came from.

    Returns:
        ``(ms, how)``: ``how`` says whether it was measured now or read from the cache (with
        the date it was measured).
    """
    path = cache or cache_path()
    key = _cache_key(model_name.lower())
    entry = _read_cache(path).get(key)
    cached = entry.get("ms") if isinstance(entry, dict) else None
    if isinstance(cached, (int, float)) and not isinstance(cached, bool) and cached > 0:
        return float(cached), f"measured on this host {entry.get('measured', '?')} (cached)"
    ms = float(measure(model_name.lower()))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = _read_cache(path)
    data[key] = {"ms": ms, "measured": now}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # written whole, then renamed: builds running at once never read a torn file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only home: measure again next time
    return ms, f"measured on this host at build time ({now})"
