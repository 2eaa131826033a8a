"""The served half of ``make demo``: real services, a real replay, then both services stopped.

Given a built bundle, this script

1. exports the bundle's test split (the build's own dataset, seed and split) as PNG files, one
   subfolder per class, next to the bundle (``<bundle>-test-png/``);
2. starts ``edgelesspart serve-cloud`` and ``edgelesspart serve-edge --cloud ...`` as separate
   processes on free loopback ports and waits for their ``/healthz``;
3. runs ``edgelesspart replay`` against the edge (the service's default threshold, i.e. the
   one the manifest records) and writes its JSON report;
4. prints whether the demo goal holds: at least ``--min-edge-share`` of the samples answered on
   the edge, with accuracy within ``--max-drop`` points of the final classifier's;
5. stops both services, also when any step fails or the user presses Ctrl-C.

Usage::

    .venv/bin/python experiments/demo_serve.py BUNDLE [--json results/demo/replay.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEALTH_TIMEOUT_S = 90.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def export_test_pngs(bundle: Path, out: Path) -> tuple[int, float | None]:
    """Write the bundle's test split as ``out/<class>/<index>.png``; return (count, final acc)."""
    from edgelesspart.evaluation.pipeline import load_eval_data
    from edgelesspart.replay.client import array_to_png
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bundle)
    data = load_eval_data(manifest)
    classes = [str(c) for c in manifest.classes]
    out.mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(data.x_test, data.y_test)):
        folder = out / classes[int(label)]
        folder.mkdir(exist_ok=True)
        (folder / f"{index:05d}.png").write_bytes(array_to_png(image))
    final = manifest.training.get("accuracy", {}).get("test", {}).get("final")
    return len(data.x_test), None if final is None else float(final)


class Services:
    """``serve-cloud`` and ``serve-edge`` as child processes; :meth:`stop` ends both."""

    def __init__(self, bundle: Path, logs: Path, edge_args: list[str]) -> None:
        self.bundle, self.logs, self.edge_args = bundle, logs, edge_args
        self.procs: dict[str, subprocess.Popen] = {}
        self._log_files: list[Any] = []
        self.cloud_url = self.edge_url = ""

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self._log_files.append(log)  # the child has its own copy; ours is closed in stop()
        exe = [sys.executable, "-m", "edgelesspart.cli"]
        self.procs[name] = subprocess.Popen(
            exe + args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def start(self) -> None:
        """Start the cloud, then the edge pointing at it; wait until both are healthy."""
        cloud_port, edge_port = free_port(), free_port()
        self.cloud_url = f"http://127.0.0.1:{cloud_port}"
        self.edge_url = f"http://127.0.0.1:{edge_port}"
        self._start("cloud", ["serve-cloud", str(self.bundle), "--port", str(cloud_port)])
        self._start(
            "edge",
            ["serve-edge", str(self.bundle), "--port", str(edge_port), "--cloud", self.cloud_url,
             *self.edge_args],
        )
        self._wait_healthy("cloud", self.cloud_url)
        self._wait_healthy("edge", self.edge_url)

    def _wait_healthy(self, name: str, url: str) -> None:
        import requests

        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"serve-{name} exited early:\n{self.log_tail(name)}")
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    print(f"serve-{name} is up on {url}")
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"serve-{name} not healthy after {HEALTH_TIMEOUT_S:g} s")

    def log_tail(self, name: str, chars: int = 2000) -> str:
        """The end of a service's log."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM both (edge first), then SIGKILL what is still running after 10 s."""
        for name in ("edge", "cloud"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            print(f"serve-{name} stopped (exit {proc.returncode})")
        for log in self._log_files:
            log.close()
        self._log_files = []


def verdict(report: dict[str, Any], final: float | None, min_share: float, max_drop: float) -> str:
    """One line per demo goal: measured value, goal and met/missed."""
    share = float(report["edge_share"])
    lines = [
        f"demo goal: edge share {share:.1%} (goal >= {min_share:.0%}): "
        + ("met" if share >= min_share else "MISSED")
    ]
    accuracy = report.get("accuracy")
    if accuracy is None or final is None:
        lines.append("demo goal: accuracy not measured (no labels or no final accuracy)")
    else:
        drop = (final - float(accuracy)) * 100
        lines.append(
            f"demo goal: accuracy {accuracy:.1%} vs final classifier {final:.1%} "
            f"({round(-drop, 1) + 0.0:+.1f} points, goal within {max_drop:g}): "
            + ("met" if drop <= max_drop + 1e-9 else "MISSED")
        )
    return "\n".join(lines)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--json", type=Path, default=None, help="replay report (JSON)")
    parser.add_argument("--images", type=Path, default=None, help="PNG folder to write")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--min-edge-share", type=float, default=0.5)
    parser.add_argument("--max-drop", type=float, default=1.0, help="accuracy points")
    parser.add_argument("--edge-arg", action="append", default=[], help="extra serve-edge flag")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export, serve, replay, judge, stop; exit 0 only when the replay ran."""
    args = _args(argv)
    # make (or a CI runner) stops us with SIGTERM: turn it into SystemExit so `finally` runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bundle = args.bundle.resolve()
    images = args.images or bundle.parent / f"{bundle.name}-test-png"
    report_path = args.json or bundle / "replay.json"
    count, final = export_test_pngs(bundle, images)
    print(f"exported {count} test images as PNG to {images}")
    services = Services(bundle, Path(tempfile.mkdtemp(prefix="edgelesspart-demo-")), args.edge_arg)
    try:
        services.start()
        replay = [
            sys.executable, "-m", "edgelesspart.cli", "replay", services.edge_url, str(images),
            "--concurrency", str(args.concurrency), "--json", str(report_path),
        ]
        done = subprocess.run(replay, cwd=ROOT, check=False)
        if done.returncode not in (0, 1):
            print(services.log_tail("edge"), file=sys.stderr)
            return done.returncode
        report = json.loads(report_path.read_text(encoding="utf-8"))
        print(verdict(report, final, args.min_edge_share, args.max_drop))
        return done.returncode
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        services.stop()


if __name__ == "__main__":
    raise SystemExit(main())
