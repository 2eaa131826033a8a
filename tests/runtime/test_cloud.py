"""CloudPart: loads only the cloud stage, continues offloaded tensors, answers Lambda events."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgelesspart.errors import (
    BundleError,
    BundleMismatchError,
    CodecError,
    ConfigError,
    InferenceError,
    InputError,
    ServiceClosed,
)
from edgelesspart.runtime import codecs
from edgelesspart.runtime.bundle import Bundle
from edgelesspart.runtime.cloud import CloudPart, error_response, status_for
from edgelesspart.runtime.executor import ProgressiveExecutor


@pytest.fixture(scope="module")
def cloud(tiny_bundle) -> CloudPart:
    return CloudPart(tiny_bundle, pool_size=2)


@pytest.fixture(scope="module")
def boundary(tiny_bundle, digits_x) -> np.ndarray:
    edge = ProgressiveExecutor(Bundle.load(tiny_bundle, stages=["edge"]), "edge", threshold=2.0)
    return edge.run(digits_x[:12]).boundary


def _payload(cloud: CloudPart, x: np.ndarray, codec: str = "raw", **meta) -> bytes:
    return codecs.encode_tensor(x, codec, meta={"bundle_id": cloud.bundle_id, **meta})


def test_cloud_part_loads_only_the_cloud_stage(cloud):
    assert cloud.bundle.stages == ("cloud",)
    assert cloud.init_ms > 0
    with pytest.raises(BundleError, match="'edge_0' is not loaded"):
        cloud.bundle.runner("edge_0")


def test_continue_request_answers_every_row_like_running_the_stage(cloud, boundary):
    # GIVEN the expected answers of the cloud stage run directly
    expected = ProgressiveExecutor(cloud.bundle, "cloud", threshold=0.9).run(boundary).answers
    # WHEN the encoded boundary is continued with threshold 0.9 in its meta
    result = cloud.continue_request(_payload(cloud, boundary, threshold=0.9))
    # THEN every row gets the same label from the same exit
    assert [(a["exit"], a["label"]) for a in result["answers"]] == [
        (a.exit, a.label) for a in expected
    ]
    assert result["bundle_id"] == cloud.bundle_id
    assert set(result["timings"]) == {"decode", "run", "total"}


def test_threshold_argument_beats_meta_which_beats_the_default(cloud, boundary):
    payload = _payload(cloud, boundary, threshold=2.0)
    assert {a["exit"] for a in cloud.continue_request(payload)["answers"]} == {"final"}
    overridden = cloud.continue_request(payload, threshold=0.0)["answers"]
    assert {a["exit"] for a in overridden} == {"exit_3"}
    with pytest.raises(ConfigError, match="got nan"):
        cloud.continue_request(payload, threshold=float("nan"))


def test_any_codec_is_accepted(cloud, boundary):
    raw = cloud.continue_request(_payload(cloud, boundary, threshold=2.0))["answers"]
    packed = cloud.continue_request(_payload(cloud, boundary, "fp16+lz4", threshold=2.0))
    agree = np.mean([a["label"] == b["label"] for a, b in zip(raw, packed["answers"])])
    assert agree >= 0.9


def test_bundle_mismatch_and_missing_bundle_id_are_refused(cloud, boundary):
    other = codecs.encode_tensor(boundary, meta={"bundle_id": "someone-else"})
    with pytest.raises(BundleError, match="made for bundle 'someone-else'.*serves bundle"):
        cloud.continue_request(other)
    with pytest.raises(BundleError, match="made for bundle None"):
        cloud.continue_request(codecs.encode_tensor(boundary))


def test_bad_payloads_are_refused(tiny_bundle, cloud, boundary):
    with pytest.raises(InputError, match="non-empty encoded tensor"):
        cloud.continue_request(b"")
    with pytest.raises(CodecError, match="Bad magic"):
        cloud.continue_request(b"not a tensor payload at all")
    with pytest.raises(InputError, match=r"\(N, 16, 16, 16\) float32 .* got shape \(2, 8, 8, 24\)"):
        cloud.continue_request(_payload(cloud, np.zeros((2, 8, 8, 24), np.float32)))
    small = CloudPart(tiny_bundle, pool_size=1, max_bytes=1000)
    with pytest.raises(CodecError, match="over the limit of 1000 bytes"):
        small.continue_request(_payload(small, boundary))


def test_handle_event_reports_cold_start_once(tiny_bundle, boundary):
    # GIVEN a fresh cloud part (a new container)
    part = CloudPart(tiny_bundle, pool_size=1)
    event = {"tensor_b64": codecs.to_base64(_payload(part, boundary[:3])), "threshold": 0.5}
    # WHEN two events arrive
    first, second = part.handle_event(event), part.handle_event(event)
    # THEN only the first is a cold start, both carry init time and answers
    assert first["cold_start"] is True and second["cold_start"] is False
    assert first["init_ms"] == second["init_ms"] == part.init_ms
    assert len(first["answers"]) == 3
    assert [a["label"] for a in first["answers"]] == [a["label"] for a in second["answers"]]
    assert first["bundle_id"] == part.bundle_id and "total" in first["timings"]


@pytest.mark.parametrize(
    ("event", "status", "kind", "message"),
    [
        ([1, 2], 400, "InputError", "JSON object event"),
        ({}, 400, "InputError", "needs 'tensor_b64'"),
        ({"tensor_b64": "@@@"}, 400, "CodecError", "Invalid base64"),
    ],
)
def test_bad_events_get_error_dicts(cloud, event, status, kind, message):
    response = cloud.handle_event(event)
    assert response["status"] == status
    assert response["error"]["type"] == kind
    assert message in response["error"]["message"]


def test_event_errors_for_bundle_and_threshold(cloud, boundary):
    wrong = {
        "tensor_b64": codecs.to_base64(codecs.encode_tensor(boundary, meta={"bundle_id": "x"}))
    }
    assert cloud.handle_event(wrong)["status"] == 409
    bad_thr = {"tensor_b64": codecs.to_base64(_payload(cloud, boundary)), "threshold": "high"}
    response = cloud.handle_event(bad_thr)
    assert response["status"] == 400 and response["error"]["type"] == "ConfigError"


def test_status_mapping_blames_the_caller_only_for_what_it_caused(caplog):
    # a tensor made for another bundle is the caller's mismatch; a broken bundle is ours
    assert status_for(BundleMismatchError("x")) == 409
    assert status_for(InputError("x")) == 400
    assert status_for(BundleError("x")) == 500
    assert status_for(InferenceError("x")) == 500
    assert status_for(ServiceClosed("x")) == 503  # shutting down: not the caller's fault
    assert error_response(ServiceClosed("closed"))["error"]["message"] == "closed"  # not logged
    with caplog.at_level("ERROR", logger="edgelesspart.cloud"):
        body = error_response(InferenceError("segment blew up"))
    assert body["status"] == 500 and "segment blew up" not in body["error"]["message"]
    correlation = body["error"]["message"].split("correlation id ")[1].rstrip(").")
    assert any(
        correlation in r.getMessage() and "segment blew up" in r.getMessage()
        for r in caplog.records
    )
    assert error_response(CodecError("bad")) == {
        "error": {"type": "CodecError", "message": "bad"},
        "status": 400,
    }


def test_a_cloud_part_must_end_in_the_final_classifier(tiny_bundle):
    with pytest.raises(BundleError, match=r"Cloud stages \['edge'\] do not end in the final"):
        CloudPart(tiny_bundle, stages=["edge"])


def test_cloud_package_without_edge_files(bundle_copy, boundary):
    for path in (bundle_copy / "segments").glob("edge_*"):
        path.unlink()
    part = CloudPart(bundle_copy)
    assert len(part.continue_request(_payload(part, boundary[:2]))["answers"]) == 2


def test_concurrent_events(cloud, boundary):
    event = {"tensor_b64": codecs.to_base64(_payload(cloud, boundary)), "threshold": 0.8}
    expected = cloud.handle_event(event)["answers"]
    labels = [a["label"] for a in expected]
    mismatches: list[int] = []

    def work() -> None:
        for _ in range(5):
            got = [a["label"] for a in cloud.handle_event(event)["answers"]]
            if got != labels:
                mismatches.append(1)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []


def test_the_header_is_checked_against_the_bundle_before_anything_is_decoded(tiny_bundle):
    # GIVEN a cloud part that takes at most 8 rows per request
    small = CloudPart(tiny_bundle, pool_size=1, max_rows=8)
    # AND a few hundred compressed bytes announcing 300 boundary rows, with a corrupt body
    zeros = np.zeros((300, 16, 16, 16), np.float32)
    bomb = bytearray(_payload(small, zeros, "lz4"))
    assert len(bomb) < 25_000 < zeros.nbytes // 100
    bomb[-8:] = b"\xff" * 8  # a checksum error would only show up if the body were decoded
    # WHEN it is continued, THEN the row count in the header refuses it (no decode, no CodecError)
    with pytest.raises(InputError, match=r"300 rows; this cloud part accepts 1\.\.8"):
        small.continue_request(bytes(bomb))
    # AND a header with the wrong per-row shape is refused the same way, before decoding
    wrong = bytearray(_payload(small, np.zeros((2, 8, 8, 24), np.float32), "lz4"))
    wrong[-8:] = b"\xff" * 8
    with pytest.raises(InputError, match=r"\(N, 16, 16, 16\) float32 .* got shape \(2, 8, 8, 24\)"):
        small.continue_request(bytes(wrong))


def test_cloud_batching_coalesces_concurrent_requests_and_keeps_rows_aligned(tiny_bundle, boundary):
    # GIVEN a batching cloud part (a wide window so that concurrent requests meet)
    import threading

    from edgelesspart.runtime.batching import BatchSettings

    batched = CloudPart(tiny_bundle, pool_size=1, batch=BatchSettings(64, 50_000))
    alone = CloudPart(tiny_bundle, pool_size=1)
    slices = [boundary[i : i + 3] for i in range(0, 12, 3)] * 2
    expected = [alone.continue_request(_payload(alone, s, threshold=0.5)) for s in slices]
    got: list = [None] * len(slices)

    def call(k: int) -> None:
        got[k] = batched.continue_request(_payload(batched, slices[k], threshold=0.5))

    # WHEN 8 requests arrive at once
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(slices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # THEN every request gets exactly its own rows' answers, as if it had run alone
    for mine, ref in zip(got, expected):
        assert [(a["exit"], a["label"]) for a in mine["answers"]] == [
            (a["exit"], a["label"]) for a in ref["answers"]
        ]
        assert mine["answers"][0]["confidence"] == pytest.approx(
            ref["answers"][0]["confidence"], abs=1e-5
        )
    # AND they shared fewer runs than there were requests
    stats = batched.batcher.stats()
    assert stats["requests"] == 8 and stats["rows"] == 24 and stats["batches"] < 8
    batched.close()
