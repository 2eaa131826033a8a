"""P8: DEFER's chain -- ResNet50 over 1, 2, 4 and 8 emulated Raspberry Pi 4 nodes on Ray.

Model: Keras ResNet50 at 224x224, ``weights=None`` (seeded random weights: throughput, payload and
energy do not depend on trained weights; compressed sizes do somewhat, so payloads are those of
random-weight activations on two natural photos, scikit-learn's sample images). It is exported
once as fine LiteRT segments (one per stretch between candidate cut points); each chain groups
them as :func:`edgelesspart.planning.chain.plan_chain` decides (exact bottleneck DP on the
host-measured profile scaled to the RPi4, with the measured encode/decode times and encoded
bytes), so every node count runs from the same export.

Emulation: every stage is a Ray actor on this host that pads its thread CPU time to ``k`` times
(sleeping), ``k = 556 ms / host ResNet50 CPU ms`` (RPi4 ResNet50 under TFLite, REFERENCE.md
§5.1; codec and framing CPU time is scaled by the same k, which is pessimistic for them), and
its link thread sleeps ``rtt + bytes*8/100 Mbit/s`` to send each output while the next input is
computed (the dispatcher sends the input photos as 8-bit pixels the same way). Link codecs: raw,
zfp+lz4 (DEFER's) and int8+zstd on every link, and ``auto``: the planner's choice per link among
those three. Measured per chain: steady-state throughput (answers/s once the window is full),
payload per link, per-node busy time and modelled energy (RPi4 3.1 W idle / 6.1 W busy; a
model), host CPU utilisation and load, and the share of calls whose wall time exceeded k x
their CPU time (the host, not the emulated node, set the pace); a chain with more than 5 % such
calls is flagged host-bound and its figure is not reported as the pipeline's.

Baseline: 1 node (the whole model on one emulated RPi4): the median of every 1-node run not
flagged host-bound (each codec series and each repeat runs that same chain). DEFER reports 1.53x
throughput and -63 % energy per node at 8 nodes. Goal: >= 3x at 8 nodes with the planner's codec
choice (``auto``); the headline is the median of ``--repeats`` (3) runs of that 8-node chain, as
this shared host moves single runs by +-20 %. Every run's figures are in the JSON.

Learned bottleneck as a link codec: at every candidate cut point an encoder/decoder pair of
``--bottleneck-divisor`` (8) times fewer channels (1x1 convolutions) is timed with LiteRT on this
host and its int8 code's bytes measured on the photos' activations (untrained: bytes and ms
hardly depend on the weights); the chain planner then gets it as one more codec choice per link
(``ChainCosts.crossings``) and the JSON reports, per node count, the plan's link codecs and
predicted throughput with it vs ``auto`` without it (``details.bottleneck_planned``). Then, per
node count above 1, two chains **run** on Ray with the bottleneck in their stage segments
(``details.bottleneck_runs``): ``auto+bottleneck`` (the planner's choice; not run where it kept
the generic codecs) and ``bottleneck`` (``auto``'s cuts with the bottleneck's code on every
link). For each, the pairs at its bottleneck cuts are distilled from the model
(``train_bottleneck``, backbone frozen, ``--bottleneck-epochs`` epochs on
``--bottleneck-images`` random crops of the two photos, not the crops the chains run on), the
plan is exported with them (``export_chain(bottlenecks=...)``: encoder at the end of the
sending stage, decoder at the start of the receiving one) and run like the codec series:
throughput, bytes per hop, energy, and -- ResNet50 has random weights here, so there is no
accuracy -- the answers' top-1 agreement with the unmodified model on the same crops and the
mean L1 distance of their probabilities. ``--bottleneck-divisor 0`` skips this part.

Usage::

    .venv/bin/python experiments/bench_p8_pipeline.py [--quick] [--nodes 1,2,4,8]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

GOAL = 3.0
DEFER_SPEEDUP = 1.53
DEFER_ENERGY_PER_NODE = -0.63
RPI4_RESNET50_MS = 556.0
LINK_MBPS = 100.0
LINK_RTT_MS = 0.5
#: ``auto``: the planner picks each link's codec among the three fixed ones (``--codec auto``).
CODECS = ("auto", "raw", "zfp+lz4", "int8+zstd")
AUTO_CHOICES = ("raw", "zfp+lz4", "int8+zstd")
HEADLINE_CODEC = "auto"
HOST_BOUND_SHARE = 0.05
#: The dispatcher sends each photo as 8-bit pixels (int8: affine uint8, exact up to float
#: rounding for an 8-bit image scaled to [0, 1]), as a camera would.
INPUT_CODEC = "int8"


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--nodes", default=None, help="node counts (1,2,4,8; quick 1,2)")
        parser.add_argument("--codecs", default=None, help="link codecs (all; quick auto)")
        parser.add_argument("--size", type=int, default=None, help="input side (224; quick 64)")
        parser.add_argument(
            "--cuts", type=int, default=None, help="candidate cut points (24; quick 8)"
        )
        parser.add_argument(
            "--node-ms", type=float, default=RPI4_RESNET50_MS, help="emulated node model ms"
        )
        parser.add_argument("--items", type=int, default=None, help="inputs per node (6)")
        parser.add_argument(
            "--summarise", default=None, help="recompute the summary of an earlier p8.json"
        )
        parser.add_argument(
            "--repeats",
            type=int,
            default=None,
            help="runs of the headline pair (1 and 8 nodes; 3, quick 1)",
        )
        parser.add_argument(
            "--bottleneck-divisor", type=int, default=8,
            help="plan with a learned-bottleneck link codec of C/divisor channels (0: skip)",
        )  # fmt: skip
        parser.add_argument(
            "--bottleneck-epochs", type=int, default=4,
            help="distillation epochs of each bottleneck a chain runs with",
        )  # fmt: skip
        parser.add_argument(
            "--bottleneck-images", type=int, default=None,
            help="random photo crops the bottlenecks are distilled on (64; quick 32)",
        )  # fmt: skip

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def sample_images(size: int, count: int) -> np.ndarray:
    """``count`` size x size crops of scikit-learn's two sample photos, scaled to [0, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = min(h, w) - 40 * (i // len(photos) % 5)
        top, left = (h - side) // 2, (w - side) // 2 + 10 * (i // 2)
        left = min(max(left, 0), w - side)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size))
        out.append(np.asarray(crop, dtype=np.float32) / 255.0)
    return np.stack(out)


def export_segments(out: Path, size: int, cuts: int, probe: np.ndarray) -> Path:
    """ResNet50 (weights=None) exported as fine segments; reused when already there."""
    bundle = out / "bundles" / f"p8-resnet50-{size}-{cuts}"
    if (bundle / "manifest.json").is_file():
        return bundle
    from edgelesspart.model import zoo
    from edgelesspart.model.graph import find_cut_points, functional_model
    from edgelesspart.pipeline.export import export_chain, segment_plan
    from edgelesspart.profiling.profiler import candidate_cut_points

    model = functional_model(zoo.build_model("resnet50", (size, size, 3), 1000, seed=0))
    names = [c.name for c in candidate_cut_points(find_cut_points(model), cuts)]
    benchlib.log(f"P8: exporting ResNet50 {size}x{size} as {len(names) + 1} segments")
    export_chain(
        model,
        segment_plan(names),
        bundle,
        probe=probe[:1],
        classes=tuple(f"class_{i}" for i in range(1000)),
        preprocessing={"height": size, "width": size, "channels": 3, "scale": 1 / 255},
        model_info={"name": "resnet50", "source": "zoo", "weights": None},
        overwrite=True,
    )
    return bundle


def _codec_costs(rows: np.ndarray, codecs: tuple[str, ...]) -> tuple[dict, dict]:
    """Mean frame bytes and median encode/decode CPU ms (thread time) per codec over batch-1
    ``rows``."""
    from edgelesspart.runtime.codecs import decode_tensor, encode_tensor

    encoded, times = {}, {}
    for codec in codecs:
        sizes, enc, dec = [], [], []
        for row in rows:
            t0 = time.thread_time()
            frame = encode_tensor(row[None], codec)
            t1 = time.thread_time()
            decode_tensor(frame)
            enc.append((t1 - t0) * 1000)
            dec.append((time.thread_time() - t1) * 1000)
            sizes.append(len(frame))
        encoded[codec] = int(statistics.mean(sizes))
        times[codec] = (statistics.median(enc), statistics.median(dec))
    return encoded, times


def host_profile(bundle: Path, images: np.ndarray, codecs: tuple[str, ...]) -> dict[str, Any]:
    """Per-segment host CPU ms (median thread time, LiteRT, 1 thread, batch 1) and, at every
    boundary, the mean encoded bytes and encode/decode ms of each codec over 4 photos."""
    from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
    from edgelesspart.runtime.bundle import Bundle

    loaded = Bundle.load(bundle, pool_size=1)
    cps, cumulative = [], 0.0
    codec_ms: dict[str, dict[str, tuple[float, float]]] = {}
    rows = images[:4]
    inputs: dict[str, np.ndarray] = {}
    boundaries: dict[str, np.ndarray] = {}
    for i, seg in enumerate(loaded.manifest.segments):
        runner = loaded.runner(seg.name)
        inputs[seg.name] = rows[:1]
        times, outs = [], []
        for rep in range(6):
            c0 = time.thread_time()
            probs, boundary = runner(rows[rep % len(rows)][None])
            if rep:
                times.append((time.thread_time() - c0) * 1000)
        for row in rows:
            probs, boundary = runner(row[None])
            outs.append((boundary if boundary is not None else probs)[0])
        cumulative += statistics.median(times)
        rows = np.stack(outs)
        encoded: dict[str, int] = {}
        if boundary is not None:
            encoded, codec_ms[seg.end] = _codec_costs(rows, codecs)
            boundaries[seg.end] = rows[:2]
        cps.append(
            CutPointProfile(
                name=seg.end,
                index=i,
                latency_ms=cumulative,
                memory_bytes=0,
                weight_bytes=0,
                boundary_shape=tuple(rows.shape[1:]),
                boundary_bytes=int(rows[0].nbytes),
                encoded_bytes=encoded,
            )
        )
    profile = ModelProfile(
        "resnet50", "host", tuple(images.shape[1:]), tuple(cps), method="litert thread CPU"
    )
    return {"profile": profile, "codec_ms": codec_ms, "inputs": inputs, "boundaries": boundaries}


def bottleneck_crossings(boundaries: dict[str, np.ndarray], divisor: int) -> dict[str, Any]:
    """Per cut point, an untrained C/divisor-channel 1x1 bottleneck with int8 on its code:
    LiteRT host ms of encoder and decoder, int8 encode/decode ms and bytes (planning only)."""
    from edgelesspart.model.bottleneck import BottleneckShape, build_pair, host_ms
    from edgelesspart.planning.bottleneck import Crossing
    from edgelesspart.runtime.codecs import decode_tensor, encode_tensor

    out = {}
    for cut, rows in boundaries.items():
        if rows.ndim != 4 or rows.shape[-1] < 2 * divisor:
            continue
        shape = BottleneckShape(max(1, rows.shape[-1] // divisor), 1)
        encoder, decoder = build_pair(tuple(rows.shape[1:]), shape, bool(rows.min() >= 0))
        code = np.asarray(encoder(rows, training=False), np.float32)
        sizes, enc, dec = [], [], []
        for row in code:
            t0 = time.perf_counter()
            frame = encode_tensor(row[None], "int8")
            t1 = time.perf_counter()
            decode_tensor(frame)
            enc.append((t1 - t0) * 1000)
            dec.append((time.perf_counter() - t1) * 1000)
            sizes.append(len(frame))
        out[cut] = Crossing(
            f"{shape.label}+int8", "int8", float(np.mean(sizes)), float(max(sizes)),
            host_ms(encoder, rows) + statistics.median(enc),
            statistics.median(dec) + host_ms(decoder, code), float("nan"),
        )  # fmt: skip
    return out


def plan_with_bottleneck(
    rpi: Any, nodes: list[int], base: dict[str, Any], crossings: dict[str, Any], input_bytes: int
) -> dict[str, Any]:
    """Per node count: the chain plan with the bottleneck as a link codec vs ``auto`` without."""
    from edgelesspart.planning.chain import ChainCosts, plan_chain
    from edgelesspart.profiling.links import Link

    link = Link("lan100", LINK_MBPS, LINK_MBPS, LINK_RTT_MS, source="emulated 100 Mbit/s")
    plans = {}
    for n in nodes:
        row = {}
        for name, extra in (("auto", {}), ("auto+bottleneck", {"crossings": crossings})):
            costs = ChainCosts((rpi,) * n, link=link, codecs=AUTO_CHOICES, **base, **extra)
            plan = plan_chain(costs, input_bytes=input_bytes)
            row[name] = {
                "cuts": [s.end for s in plan.stages[:-1]],
                "link_codecs": plan.parameters["link_codecs"],
                "predicted_per_s": plan.parameters["throughput_per_s"],
                "bottleneck_ms": plan.parameters["bottleneck_ms"],
                "out_bytes": [s.options["cost"]["out_bytes"] for s in plan.stages[:-1]],
            }
        plans[str(n)] = row
        benchlib.log(
            f"P8 planned n={n}: auto {row['auto']['predicted_per_s']:.2f}/s "
            f"{row['auto']['link_codecs']}; with a bottleneck choice "
            f"{row['auto+bottleneck']['predicted_per_s']:.2f}/s "
            f"{row['auto+bottleneck']['link_codecs']}"
        )
    return plans


def training_crops(size: int, count: int, seed: int) -> np.ndarray:
    """``count`` random square crops (random side and position) of the two sample photos,
    resized to ``size`` and scaled to [0, 1]: what the chain bottlenecks are distilled on (not
    the deterministic crops of :func:`sample_images` the chains run on)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed + 25)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size))
        out.append(np.asarray(crop, dtype=np.float32) / 255.0)
    return np.stack(out)


def forced_bottleneck_plan(plan: Any, costs: Any, crossings: dict[str, Any]) -> Any:
    """``plan`` (its cuts) with the bottleneck's code on every link that has one, restaged
    with the chain planner's own stage costs; ``None`` when no link of it has a bottleneck."""
    from edgelesspart.planning.chain import chain_stage_costs

    position = {cp.name: i for i, cp in enumerate(costs.profiles[0].cut_points)}
    links = []
    for stage in plan.stages[:-1]:
        crossing = crossings.get(stage.end)
        codec = crossing.name if crossing else stage.options["codec_out"]
        links.append((position[stage.end], codec))
    if not any(stage.end in crossings for stage in plan.stages[:-1]):
        return None
    stage_costs = chain_stage_costs(costs, links)
    stages = tuple(
        replace(s, options={**s.options, "codec_out": c.codec_out, "cost": c.to_dict()})
        for s, c in zip(plan.stages, stage_costs, strict=True)
    )
    pace = max(c.pace_ms for c in stage_costs)
    parameters = {
        **plan.parameters,
        "link_codecs": [c for _, c in links],
        "bottleneck_ms": pace,
        "throughput_per_s": 1000.0 / max(pace, plan.parameters.get("dispatcher_send_ms", 0.0)),
        "forced_bottleneck": True,
    }
    return replace(plan, stages=stages, parameters=parameters)


def _bottleneck_links(plan: Any) -> dict[str, str]:
    """Cut point -> crossing name of the links of ``plan`` that send a bottleneck's code."""
    from edgelesspart.pipeline.stage import link_codec

    return {
        s.end: s.options["codec_out"]
        for s in plan.stages[:-1]
        if link_codec(s.options["codec_out"]) != s.options["codec_out"]
    }


def train_chain_bottlenecks(
    model: Any, cuts: list[str], divisor: int, crops: np.ndarray, epochs: int, seed: int
) -> dict[str, Any]:
    """The C/divisor 1x1 pair at each cut, distilled from ``model`` (frozen) on ``crops``
    (the last quarter is the validation set of its early stopping)."""
    from edgelesspart.model.bottleneck import BottleneckShape, train_bottleneck
    from edgelesspart.model.graph import split_model

    cut_at = max(1, len(crops) * 3 // 4)
    necks = {}
    for cut in cuts:
        head, tail = split_model(model, cut)
        channels = int(head.outputs[0].shape[-1])
        shape = BottleneckShape(max(1, channels // divisor), 1)
        benchlib.log(f"P8: distilling {shape.label} at {cut} ({epochs} epochs)")
        necks[cut] = train_bottleneck(
            head, tail, cut, shape, crops[:cut_at], crops[cut_at:], epochs=epochs, seed=seed
        )
    return necks


def agreement(probs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement and mean L1 distance of ``probs`` to the unmodified model's answers."""
    top, ref_top = probs.argmax(1), reference.argmax(1)
    return {
        "top1_agreement": float(np.mean(top == ref_top)),
        "mean_l1": float(np.mean(np.sum(np.abs(probs - reference), axis=1))),
        "reference_distinct_top1": int(len(set(ref_top.tolist()))),
        "samples": len(probs),
    }


def run_bottleneck_chains(
    args: Any,
    rpi: Any,
    nodes: list[int],
    images: np.ndarray,
    base: dict[str, Any],
    crossings: dict[str, Any],
    input_bytes: int,
) -> dict[str, Any]:
    """Per node count above 1, the ``auto+bottleneck`` and the forced ``bottleneck`` chains
    exported with their trained bottlenecks and run on Ray (see the module docstring)."""
    from edgelesspart.model import zoo
    from edgelesspart.model.graph import functional_model
    from edgelesspart.pipeline.export import export_chain
    from edgelesspart.planning.chain import ChainCosts, plan_chain
    from edgelesspart.profiling.links import Link

    link = Link("lan100", LINK_MBPS, LINK_MBPS, LINK_RTT_MS, source="emulated 100 Mbit/s")
    k = float(rpi.extra["latency_factor"])
    size = images.shape[1]
    # the very model export_segments exported (zoo models are seeded); the unmodified answers
    model = functional_model(zoo.build_model("resnet50", (size, size, 3), 1000, seed=0))
    crops = training_crops(size, args.bottleneck_images or (32 if args.quick else 64), args.seed)
    necks: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    for n in (n for n in nodes if n > 1):
        with_neck = ChainCosts(
            (rpi,) * n, link=link, codecs=AUTO_CHOICES, crossings=crossings, **base
        )
        plain = plan_chain(
            ChainCosts((rpi,) * n, link=link, codecs=AUTO_CHOICES, **base), input_bytes=input_bytes
        )
        candidates = {
            "auto+bottleneck": plan_chain(with_neck, input_bytes=input_bytes),
            "bottleneck": forced_bottleneck_plan(plain, with_neck, crossings),
        }
        row: dict[str, Any] = {}
        for name, plan in candidates.items():
            links = {} if plan is None else _bottleneck_links(plan)
            summary = None if plan is None else {
                "cuts": [s.end for s in plan.stages[:-1]],
                "link_codecs": plan.parameters["link_codecs"],
                "predicted_per_s": plan.parameters["throughput_per_s"],
                "bottleneck_ms": plan.parameters["bottleneck_ms"],
            }  # fmt: skip
            if not links:
                why = "the planner kept the generic codecs" if plan else "no cut has a bottleneck"
                row[name] = {"executed": False, "why": why, "plan": summary}
                benchlib.log(f"P8 {name} n={n}: not run ({why})")
                continue
            todo = [c for c in links if c not in necks]
            necks.update(
                train_chain_bottlenecks(
                    model, todo, args.bottleneck_divisor, crops, args.bottleneck_epochs, args.seed
                )
            )
            tag = "-".join(f"{c}-{links[c].split('+')[0]}" for c in links)
            bundle = args.out / "bundles" / f"p8-bn-{size}-{n}-{tag}"
            export_chain(
                model,
                plan,
                bundle,
                probe=images[:1],
                classes=tuple(f"class_{i}" for i in range(1000)),
                preprocessing={"height": size, "width": size, "channels": 3, "scale": 1 / 255},
                model_info={"name": "resnet50", "source": "zoo", "weights": None},
                bottlenecks={c: necks[c] for c in links},
                overwrite=True,
            )
            items = (args.items or (3 if args.quick else 6)) * max(n, 2)
            benchlib.log(f"P8: {name}, {n} node(s), {items} inputs, bottleneck at {list(links)}")
            record = run_chain(bundle, plan, images[:items], k, window=2 * n + 2, keep_probs=True)
            reference = np.asarray(model.predict(images[:items], batch_size=8, verbose=0))
            record["agreement"] = agreement(record.pop("probs"), reference)
            record["energy"] = energy(record, items)
            record["plan"] = {**summary, "equal_layer": plan.parameters["equal_layer"]}
            record["bottlenecks"] = {c: necks[c].describe() for c in links}
            record["bottleneck_val_loss"] = {
                c: min(necks[c].history.get("val_loss", [float("nan")])) for c in links
            }
            record["executed"] = True
            row[name] = record
        runs[str(n)] = row
    return runs


def calibrate_overhead(bundle: Path, measured: dict[str, Any]) -> dict:
    """Host CPU ms a stage call costs inside a Ray actor beyond its profiled parts (compute and
    raw encode/decode): three single-segment raw stages from the middle of the model run 12
    inputs without emulation; per stage, measured CPU per call minus the profiled parts. The
    median is the planner's ``stage_overhead_ms`` (it is measured under the same host load as
    the chains, so it also holds what a crowded host adds to every call)."""
    from edgelesspart.pipeline.dispatcher import Pipeline
    from edgelesspart.pipeline.stage import StageSpec
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bundle)
    cps = measured["profile"].cut_points
    first = len(manifest.segments) // 2 - 1
    picks = range(first, first + 3)
    stages = [StageSpec(f"cal{i}", (manifest.segments[i].name,), codec_out="raw") for i in picks]
    stages[-1] = stages[-1].with_(codec_out=None)
    x = measured["inputs"][manifest.segments[first].name][0]
    with Pipeline(bundle, stages, window=3) as pipe:
        pipe.run_many([x] * 3)
        before = pipe.metrics()["stages"]
        pipe.run_many([x] * 12)
        after = pipe.metrics()["stages"]
    samples = []
    for i, spec in zip(picks, stages):
        cpu = (after[spec.name]["host_cpu_s"] - before[spec.name]["host_cpu_s"]) * 1000 / 12
        parts = cps[i].latency_ms - cps[i - 1].latency_ms
        parts += measured["codec_ms"][cps[i - 1].name]["raw"][1]
        if spec.codec_out:
            parts += measured["codec_ms"][cps[i].name]["raw"][0]
        samples.append(cpu - parts)
    return {"stage_overhead_ms": max(0.0, statistics.median(samples)), "samples_ms": samples}


def run_chain(
    bundle: Path, plan: Any, images: np.ndarray, k: float, window: int, keep_probs: bool = False
) -> dict:
    """Stream ``images`` through the chain of ``plan``; throughput, bytes, busy time, host CPU
    (and, with ``keep_probs``, the answers' probabilities under ``probs``)."""
    from edgelesspart.pipeline.dispatcher import Pipeline, stages_for_plan
    from edgelesspart.pipeline.emulation import DeviceEmulation, HostCpuMeter
    from edgelesspart.runtime.manifest import load_manifest

    link = DeviceEmulation(link_mbps=LINK_MBPS, link_rtt_ms=LINK_RTT_MS)
    node = DeviceEmulation(slowdown=k, link_mbps=LINK_MBPS, link_rtt_ms=LINK_RTT_MS)
    stages = [s.with_(emulation=node) for s in stages_for_plan(load_manifest(bundle), plan)]
    with Pipeline(
        bundle, stages, window=window, input_emulation=link, input_codec=INPUT_CODEC
    ) as pipe:
        pipe.run_many(images[: min(len(stages), 2)])  # warm every interpreter
        before = pipe.metrics()["stages"]
        done, pending, probs = [], [], []
        with HostCpuMeter() as meter:
            start = time.perf_counter()
            for x in images:
                if len(pending) >= window:
                    probs.append(pipe.result(pending.pop(0)).probs)
                    done.append(time.perf_counter())
                pending.append(pipe.submit(x, block=True, timeout=300))
            for ticket in pending:
                probs.append(pipe.result(ticket).probs)
                done.append(time.perf_counter())
        after = pipe.metrics()
    steady = done[window:] if len(done) > window + 2 else done
    wall = done[-1] - start
    per_s = (len(steady) - 1) / (steady[-1] - steady[0])
    items = len(images)
    stages_out = {}
    for name, totals in after["stages"].items():
        delta = {  # counters only: a stage's health (state, last failure) is not a count
            key: totals[key] - before[name][key]
            for key in totals
            if key != "queue" and _count(totals[key]) and _count(before[name].get(key))
        }
        stages_out[name] = {**delta, "bytes_out_per_item": delta["bytes_out"] / items}
    record = {
        "throughput_per_s": per_s,
        "overall_per_s": items / wall,
        "wall_s": wall,
        "items": items,
        "window": window,
        "stages": stages_out,
        "host": meter.result,
        "failed": after["failed"],
    }
    if keep_probs:  # in submission order (results are taken in order)
        record["probs"] = np.concatenate([np.asarray(p, np.float32) for p in probs])
    return record


def _count(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def energy(record: dict, items: int) -> dict[str, Any]:
    """Per-node modelled energy per inference (busy = compute incl. emulation pad)."""
    from edgelesspart.pipeline.energy import RPI4, node_energy

    nodes = [
        node_energy(RPI4, busy_s=s["busy_s"], wall_s=record["wall_s"], items=items)
        for s in record["stages"].values()
    ]
    per_node = [n["energy_per_item_j"] for n in nodes]
    return {
        "per_node_j_per_item": per_node,
        "mean_node_j_per_item": statistics.mean(per_node),
        "chain_j_per_item": sum(per_node),
        "model": RPI4.to_dict(),
    }


def run_codec(
    args: Any,
    bundle: Path,
    rpi: Any,
    codec: str,
    nodes: list[int],
    images: np.ndarray,
    base: dict[str, Any],
    input_bytes: int,
) -> dict[str, Any]:
    """Plan and run the chain of every node count with one link codec (or ``auto``)."""
    from edgelesspart.planning.chain import ChainCosts, plan_chain
    from edgelesspart.profiling.links import Link

    link = Link("lan100", LINK_MBPS, LINK_MBPS, LINK_RTT_MS, source="emulated 100 Mbit/s")
    k = float(rpi.extra["latency_factor"])
    runs = {}
    for n in nodes:
        choices = AUTO_CHOICES if codec == "auto" else (codec,)
        costs = ChainCosts((rpi,) * n, link=link, codecs=choices, **base)
        plan = plan_chain(costs, input_bytes=input_bytes)
        items = (args.items or (3 if args.quick else 6)) * max(n, 2)
        benchlib.log(f"P8: {codec}, {n} node(s), {items} inputs")
        record = run_chain(bundle, plan, images[:items], k, window=2 * n + 2)
        record["energy"] = energy(record, items)
        record["plan"] = {
            "cuts": [s.end for s in plan.stages[:-1]],
            "link_codecs": plan.parameters["link_codecs"],
            "predicted_per_s": plan.parameters["throughput_per_s"],
            "bottleneck_ms": plan.parameters["bottleneck_ms"],
            "equal_layer": plan.parameters["equal_layer"],
        }
        runs[str(n)] = record
    return runs


def measure(args: Any) -> dict[str, Any]:
    """Export, profile, then plan and run every (codec, nodes) pair."""
    from edgelesspart.pipeline import raykit
    from edgelesspart.pipeline.energy import RaplMeter

    args.nodes = args.nodes or ("1,2" if args.quick else "1,2,4,8")
    args.size = args.size or (64 if args.quick else 224)
    args.cuts = args.cuts or (8 if args.quick else 24)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.codecs = args.codecs or ("auto" if args.quick else ",".join(CODECS))
    nodes = [int(n) for n in args.nodes.split(",")]
    codecs = tuple(c.strip() for c in args.codecs.split(","))
    images = sample_images(args.size, 8 * max(nodes))
    bundle = export_segments(args.out, args.size, args.cuts, images)
    concrete = tuple(dict.fromkeys([*AUTO_CHOICES, *(c for c in codecs if c != "auto")]))
    measured = host_profile(bundle, images, concrete)
    host = measured["profile"]
    input_bytes, input_ms = _codec_costs(images[:4], (INPUT_CODEC,))
    k = args.node_ms / host.total.latency_ms
    rpi = replace(host.scaled("rpi4-emulated", k), extra={"latency_factor": k})
    rapl = RaplMeter().start()
    owned = raykit.connect("local", num_cpus=2)
    try:
        overhead = calibrate_overhead(bundle, measured)
        benchlib.log(f"P8: stage call overhead {overhead['stage_overhead_ms']:.2f} ms host CPU")
        base = {
            "codec_ms": measured["codec_ms"],
            "input_decode_ms": input_ms[INPUT_CODEC][1],
            "stage_overhead_ms": overhead["stage_overhead_ms"],
        }
        planned, neck_runs = None, None
        if args.bottleneck_divisor:
            crossings = bottleneck_crossings(measured["boundaries"], args.bottleneck_divisor)
            planned = {
                "divisor": args.bottleneck_divisor,
                "crossings": {cut: c.to_dict() for cut, c in crossings.items()},
                "plans": plan_with_bottleneck(
                    rpi, nodes, base, crossings, input_bytes[INPUT_CODEC]
                ),
            }
            neck_runs = run_bottleneck_chains(
                args, rpi, nodes, images, base, crossings, input_bytes[INPUT_CODEC]
            )
        runs = {
            codec: run_codec(
                args, bundle, rpi, codec, nodes, images, base, input_bytes[INPUT_CODEC]
            )
            for codec in codecs
        }
        pair = sorted({1, max(nodes)})
        repeats = [
            run_codec(
                args, bundle, rpi, HEADLINE_CODEC, pair, images, base, input_bytes[INPUT_CODEC]
            )
            for _ in range(args.repeats - 1 if HEADLINE_CODEC in codecs else 0)
        ]
    finally:
        raykit.disconnect(owned)
    return {
        "runs": runs,
        "repeats": repeats,
        "slowdown_k": k,
        "host_resnet50_cpu_ms": host.total.latency_ms,
        "host_profile": host.to_dict(),
        "codec_ms": measured["codec_ms"],
        "rapl": rapl.stop(),
        "input": {"codec": INPUT_CODEC, "bytes": input_bytes[INPUT_CODEC]},
        "overhead": overhead,
        "bundle": str(bundle),
        "segments": len(host.cut_points),
        "bottleneck_planned": planned,
        "bottleneck_runs": neck_runs,
    }


def _flag_host_bound(rec: dict[str, Any]) -> None:
    bound = sum(s["host_bound_items"] for s in rec["stages"].values())
    calls = sum(s["items"] for s in rec["stages"].values()) or 1
    rec["host_bound_share"] = bound / calls
    rec["host_bound"] = bound / calls > HOST_BOUND_SHARE


def _all_runs(details: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(codec, nodes, record) of the matrix and of the headline repeats."""
    rows = [(c, n, r) for c, runs in details["runs"].items() for n, r in runs.items()]
    for rep in details.get("repeats", []):
        rows.extend((HEADLINE_CODEC, n, r) for n, r in rep.items())
    return rows


def baseline(details: dict[str, Any]) -> dict[str, Any]:
    """The 1-node figure: every codec series (and every repeat) runs the same 1-node chain (one
    stage, no link between nodes), so the baseline is the median throughput of those runs not
    flagged host-bound, with their mean energy per inference."""
    ones = [r for _, n, r in _all_runs(details) if n == "1"]
    valid = [r for r in ones if not r.get("host_bound")] or ones
    if not valid:
        return {}
    return {
        "throughput_per_s": statistics.median(r["throughput_per_s"] for r in valid),
        "energy_j_per_item": statistics.mean(r["energy"]["mean_node_j_per_item"] for r in valid),
        "runs": len(ones),
        "valid_runs": len(valid),
        "all_per_s": [r["throughput_per_s"] for r in ones],
    }


def headline_figure(details: dict[str, Any]) -> dict[str, Any]:
    """Median throughput of the headline chain (planner's codecs, most nodes) over the matrix
    run and its repeats, skipping host-bound runs, against the 1-node baseline."""
    sizes = [int(n) for c, n, _ in _all_runs(details) if c == HEADLINE_CODEC]
    if not sizes or not details.get("baseline"):
        return {}
    top = str(max(sizes))
    runs = [r for c, n, r in _all_runs(details) if c == HEADLINE_CODEC and n == top]
    valid = [r for r in runs if not r.get("host_bound")]
    per_s = statistics.median(r["throughput_per_s"] for r in valid) if valid else None
    one = details["baseline"]["throughput_per_s"]
    return {
        "nodes": top,
        "throughput_per_s": per_s,
        "ratio": None if per_s is None else per_s / one,
        "runs_per_s": [r["throughput_per_s"] for r in runs],
        "host_bound_runs": len(runs) - len(valid),
        "baseline_per_s": one,
    }


def summarise(details: dict[str, Any]) -> None:
    """Host-bound flags, speedups and energy changes vs the 1-node baseline; log lines."""
    for _, _, rec in _all_runs(details):
        _flag_host_bound(rec)
    base = details["baseline"] = baseline(details)
    details["headline"] = headline_figure(details)
    for codec, n, rec in _all_runs(details):
        if base:
            rec["speedup_vs_1"] = rec["throughput_per_s"] / base["throughput_per_s"]
            e1 = base["energy_j_per_item"]
            rec["energy_per_node_change_vs_1"] = rec["energy"]["mean_node_j_per_item"] / e1 - 1
            rec["chain_energy_change_vs_1"] = rec["energy"]["chain_j_per_item"] / e1 - 1
        benchlib.log(
            f"P8 {codec:>9} n={n}: {rec['throughput_per_s']:.2f}/s "
            f"(x{rec.get('speedup_vs_1', float('nan')):.2f}; predicted "
            f"{rec['plan']['predicted_per_s']:.2f}/s), payload/link "
            f"{[round(s['bytes_out_per_item']) for s in rec['stages'].values()]}, energy/node "
            f"{rec['energy']['mean_node_j_per_item']:.2f} J, host cpu "
            f"{(rec['host']['cpu_utilisation'] or 0) * 100:.0f}%, host-bound calls "
            f"{rec['host_bound_share']:.0%}, {rec['items']} items"
        )


def main(argv: list[str] | None = None) -> int:
    """Run P8 and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    if args.summarise:
        details = json.loads(Path(args.summarise).read_text())["details"]
        args.size = args.size or int(details["host_profile"]["input_shape"][0])
    else:
        details = measure(args)
    summarise(details)
    head = details["headline"]
    top, ratio = head.get("nodes"), head.get("ratio")
    bound = bool(head) and head["throughput_per_s"] is None
    # the goal is for 8 nodes: fewer (--quick, --nodes) is reported but not judged
    met = None if ratio is None or top != "8" else (ratio >= GOAL and not bound)
    note = " (host-bound: not the pipeline's figure)" if bound else ""
    result = benchlib.BenchResult(
        bench="P8",
        what=f"ResNet50 {args.size}x{args.size} (weights=None) throughput on {top} emulated RPi4 "
        f"nodes (Ray actors), planner's codec per link, emulated 100 Mbit/s link{note}",
        baseline="the whole model on 1 emulated RPi4 node (median of the 1-node runs, same link); "
        "DEFER: 1.53x",
        headline=benchlib.Headline(
            "P8",
            f"{top}-node/1-node throughput",
            ratio,
            "x",
            f">= {GOAL:g}x (DEFER {DEFER_SPEEDUP}x)",
            met,
            ours=f"{head.get('throughput_per_s') or 0:.2f} inputs/s (median of "
            f"{len(head.get('runs_per_s', []))} runs)",
            reference=f"{details['baseline'].get('throughput_per_s', 0):.2f} inputs/s (median "
            f"of {details['baseline'].get('valid_runs', 0)} 1-node runs)",
        ),
        quick=args.quick,
        reduced=[f"nodes {args.nodes}, codecs {args.codecs}"] if args.quick else [],
        details=details,
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
