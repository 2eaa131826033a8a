"""``edgelesspart replay`` without a service: data loading, metric parsing, the summary, errors.

The replay against a live edge service is in ``tests/integration/test_replay_live.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgelesspart.cli import main
from edgelesspart.errors import ConfigError, DatasetError
from edgelesspart.profiling.pricing import cost_per_invocation, load_prices
from edgelesspart.replay.client import (
    OFFLOADS_METRIC,
    Pricing,
    ReplayData,
    ReplayReport,
    Sample,
    array_to_png,
    check_url,
    load_replay_data,
    parse_metric_series,
    parse_metrics,
    summarise,
)
from edgelesspart.runtime.manifest import InputSpec, TensorSpec
from edgelesspart.runtime.preprocess import image_to_tensor


def images(n: int = 6, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, channels)).astype(np.float32)


def test_png_round_trip_matches_the_edge_preprocessing():
    # GIVEN float images in [0, 1] (a dataset's test split)
    x = images(2)
    spec = InputSpec(tensor=TensorSpec((8, 8, 3), "float32"), preprocessing={})
    # WHEN encoded as PNG and decoded as the edge service decodes a posted image
    decoded = image_to_tensor(array_to_png(x[0]), spec)
    # THEN the tensor is the original up to 8-bit quantisation
    np.testing.assert_allclose(decoded[0], x[0], atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("keys", [("x_test", "y_test"), ("x", "y")])
def test_npz_with_either_key_pair(tmp_path, keys):
    path = tmp_path / "data.npz"
    np.savez(path, **{keys[0]: images(5, 1), keys[1]: np.arange(5) % 3})
    data = load_replay_data(path, limit=4)
    assert len(data) == 4 and data.labels == (0, 1, 2, 0)
    assert all(body.startswith(b"\x89PNG") for body in data.images)


def test_folder_of_class_subfolders_uses_the_bundles_class_names(tmp_path):
    # GIVEN one subfolder per class, named like the bundle's classes (not in sorted order)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(2):
            (tmp_path / name / f"{i}.png").write_bytes(array_to_png(images(1)[0]))
    # WHEN loaded for a bundle whose classes are ("dog", "cat")
    data = load_replay_data(tmp_path, classes=("dog", "cat"))
    # THEN each image carries the bundle's index of its folder's class
    by_folder = {name.split("/")[-2]: label for name, label in zip(data.names, data.labels)}
    assert by_folder == {"cat": 1, "dog": 0} and len(data) == 4


def test_flat_folder_is_unlabelled(tmp_path):
    (tmp_path / "a.png").write_bytes(array_to_png(images(1)[0]))
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_replay_data(tmp_path)
    assert len(data) == 1 and data.labels is None and data.media_types == ("image/png",)


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_replay_data(tmp_path / "missing")
    with pytest.raises(DatasetError, match="holds no .png/.jpg images"):
        load_replay_data(tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=images(2))
    with pytest.raises(DatasetError, match="expected x_test,y_test or x,y"):
        load_replay_data(bad)
    text = tmp_path / "x.csv"
    text.write_text("1,2")
    with pytest.raises(DatasetError, match="neither a folder of images nor an .npz"):
        load_replay_data(text)


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://host", "http://"])
def test_bad_url(url):
    with pytest.raises(ConfigError, match="Bad edge service URL"):
        check_url(url)


def test_metrics_parsing_sums_label_sets():
    text = (
        "# HELP edgelesspart_offloads_total Cloud calls\n"
        "# TYPE edgelesspart_offloads_total counter\n"
        'edgelesspart_offloads_total{outcome="ok"} 7\n'
        'edgelesspart_offloads_total{outcome="busy"} 2\n'
        "edgelesspart_offload_bytes_sent_total 4096.5\n"
    )
    assert parse_metrics(text) == {
        OFFLOADS_METRIC: 9.0, "edgelesspart_offload_bytes_sent_total": 4096.5
    }
    assert parse_metric_series(text, OFFLOADS_METRIC) == {'outcome="ok"': 7.0,
                                                         'outcome="busy"': 2.0}


def test_summary_counts_edge_share_accuracy_and_prices_each_cloud_call():
    # GIVEN four answered requests (two on the edge, one in the cloud, one degraded) and a 500
    samples = [
        Sample(0, 200, 5.0, label=1, predicted=1, exit="exit_1", stage="edge"),
        Sample(1, 200, 7.0, label=2, predicted=2, exit="exit_2", stage="edge"),
        Sample(2, 200, 30.0, label=3, predicted=0, exit="final", stage="cloud", cloud_ms=120.0),
        Sample(3, 200, 40.0, label=4, predicted=4, exit="exit_2", stage="edge", degraded=True),
        Sample(4, 500, 1.0, label=5, error="HTTP 500: boom"),
    ]
    data = ReplayData((b"",) * 5, ("image/png",) * 5, (1, 2, 3, 4, 5), ("x",) * 5, "mem")
    table = load_prices("gcf")
    # WHEN summarised with the edge's metric deltas
    report = summarise(
        samples, url="http://e", data=data, info={"bundle_id": "b", "threshold": 0.8},
        threshold=None, deltas={OFFLOADS_METRIC: 2.0, "edgelesspart_offload_bytes_sent_total":
                                 3000.0}, wall_s=2.0, concurrency=1, price=table,
        pricing=Pricing(),
    )
    # THEN the numbers follow the documented definitions
    assert report.answered == 4 and report.errors == 1 and report.degraded == 1
    assert report.edge_share == pytest.approx(2 / 4)
    assert report.accuracy == pytest.approx(3 / 4)
    assert report.exit_mix == {"exit_1": 1, "exit_2": 2, "final": 1}
    assert report.cloud_calls == 2 and report.bytes_sent == 3000 and report.threshold == 0.8
    assert report.cost == pytest.approx(cost_per_invocation(table, 120.0, 2048, egress_bytes=512))
    assert report.latency_p50_ms == pytest.approx(np.percentile([5, 7, 30, 40], 50))
    assert ReplayReport.from_dict(report.to_dict()) == report


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["replay", f"http://127.0.0.1:{_free_port()}", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "Cannot reach the edge service" in err and "serve-edge" in err


def test_bad_url_exits_2(tmp_path, capsys):
    assert main(["replay", "localhost:8080", str(tmp_path)]) == 2
    assert "Bad edge service URL" in capsys.readouterr().err


def test_replay_imports_without_tensorflow():
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None  # the lean install: importing it fails
        import edgelesspart.replay.client, edgelesspart.commands.replay  # noqa: F401
        from edgelesspart.replay.client import array_to_png, Pricing, summarise  # noqa: F401
        print("heavy", [m for m in ("keras", "sklearn", "matplotlib") if m in sys.modules])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy []" in result.stdout
