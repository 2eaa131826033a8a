"""Shared-secret request signing (``edgelesspart.runtime.signing``): HMAC-SHA256 of the body or
event and a timestamp, constant-time comparison, bounded clock skew."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from edgelesspart.runtime import signing

SECRET = "correct horse battery staple"
BODY = b"ELPT\x01 some tensor bytes \x00\xff"
NOW = 1_800_000_000


def test_signed_body_verifies_and_matches_the_documented_format():
    headers = signing.sign_body(SECRET, BODY, timestamp=NOW)
    # THEN the signature is v1=<hex HMAC-SHA256(secret, "<ts>." + body)>, as documented
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {signing.TIMESTAMP_HEADER: str(NOW),
                       signing.SIGNATURE_HEADER: f"v1={expected}"}
    assert signing.check_body(SECRET, BODY, headers, now=NOW) is None


@pytest.mark.parametrize(
    ("secret", "body", "pattern"),
    [
        ("wrong secret", BODY, "does not match the body"),
        (SECRET, BODY + b"!", "does not match the body"),
        (SECRET, BODY[:-1], "does not match the body"),
    ],
)
def test_wrong_secret_or_changed_body_is_refused(secret, body, pattern):
    headers = signing.sign_body(SECRET, BODY, timestamp=NOW)
    assert pattern in signing.check_body(secret, body, headers, now=NOW)


@pytest.mark.parametrize("offset", [-signing.MAX_SKEW_S - 1, signing.MAX_SKEW_S + 1, -86_400])
def test_a_stale_or_future_timestamp_is_refused(offset):
    # GIVEN a request signed correctly but at a time outside the skew window
    headers = signing.sign_body(SECRET, BODY, timestamp=NOW + offset)
    # THEN it is refused (a captured request cannot be replayed later)
    problem = signing.check_body(SECRET, BODY, headers, now=NOW)
    assert problem is not None and "away from this server's clock" in problem


def test_timestamps_inside_the_window_are_accepted():
    for offset in (-signing.MAX_SKEW_S, 0, signing.MAX_SKEW_S):
        headers = signing.sign_body(SECRET, BODY, timestamp=NOW + offset)
        assert signing.check_body(SECRET, BODY, headers, now=NOW) is None


def test_moving_the_timestamp_breaks_the_signature():
    headers = signing.sign_body(SECRET, BODY, timestamp=NOW - 1000)
    headers[signing.TIMESTAMP_HEADER] = str(NOW)  # refresh the time, keep the old signature
    assert "does not match" in signing.check_body(SECRET, BODY, headers, now=NOW)


@pytest.mark.parametrize(
    ("headers", "pattern"),
    [
        ({}, "missing"),
        ({signing.SIGNATURE_HEADER: "v1=00"}, "missing"),
        ({signing.SIGNATURE_HEADER: "v1=00", signing.TIMESTAMP_HEADER: "soon"}, "not an integer"),
        ({signing.SIGNATURE_HEADER: "", signing.TIMESTAMP_HEADER: str(NOW)}, "missing"),
        ({signing.SIGNATURE_HEADER: "v2=ab", signing.TIMESTAMP_HEADER: str(NOW)}, "not match"),
    ],
)
def test_malformed_signature_headers_are_refused(headers, pattern):
    assert pattern in signing.check_body(SECRET, BODY, headers, now=NOW)


def test_comparison_is_constant_time(monkeypatch):
    # GIVEN a spy on hmac.compare_digest
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    headers = signing.sign_body(SECRET, BODY, timestamp=NOW)
    # WHEN a body and an event are verified THEN both go through compare_digest
    assert signing.check_body(SECRET, BODY, headers, now=NOW) is None
    event = signing.sign_event(SECRET, {"tensor_b64": "QUJD"}, timestamp=NOW)
    assert signing.check_event(SECRET, event, now=NOW) is None
    assert len(calls) == 2


# --- Lambda events ---------------------------------------------------------------------------


def test_signed_event_verifies_whatever_the_key_order():
    event = {"tensor_b64": "QUJD", "threshold": 0.8}
    signed = signing.sign_event(SECRET, event, timestamp=NOW)
    assert signed["auth"]["v"] == 1 and signed["auth"]["ts"] == NOW
    # WHEN the event travels as JSON and comes back with another key order
    reordered = json.loads(json.dumps(dict(reversed(list(signed.items())))))
    # THEN it still verifies (canonical JSON), and the original event is not modified
    assert signing.check_event(SECRET, reordered, now=NOW) is None
    assert "auth" not in event


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda e: e.update(threshold=0.1), "does not match the event"),
        (lambda e: e.update(extra=1), "does not match the event"),
        (lambda e: e.pop("auth"), "no 'auth' signature"),
        (lambda e: e.update(auth="sig"), "no 'auth' signature"),
        (lambda e: e["auth"].update(sig=None), "no 'auth' signature"),
        (lambda e: e["auth"].update(ts=NOW - 3600), "away from this server's clock"),
        (lambda e: e["auth"].update(ts="later"), "not an integer"),
    ],
)
def test_changed_unsigned_or_stale_events_are_refused(change, pattern):
    event = signing.sign_event(SECRET, {"tensor_b64": "QUJD", "threshold": 0.8}, timestamp=NOW)
    change(event)
    assert pattern in signing.check_event(SECRET, event, now=NOW)


@pytest.mark.parametrize("event", [None, [], "text", 3])
def test_an_event_that_is_not_an_object_is_refused(event):
    assert "no 'auth' signature" in signing.check_event(SECRET, event, now=NOW)


def test_an_event_with_a_wrong_secret_is_refused():
    event = signing.sign_event("other", {"tensor_b64": "QUJD"}, timestamp=NOW)
    assert "does not match the event" in signing.check_event(SECRET, event, now=NOW)


def test_the_secret_never_travels():
    headers = signing.sign_body(SECRET, BODY, timestamp=NOW)
    event = signing.sign_event(SECRET, {"tensor_b64": "QUJD"}, timestamp=NOW)
    assert SECRET not in json.dumps(headers) and SECRET not in json.dumps(event)


# --- absurd timestamps and signatures: a refusal, never an exception -------------------------

ABSURD_TIMESTAMPS = [
    10**400, -(10**400), 10**5000, "9" * 400, "9" * 5000, 1e308, float("inf"), float("-inf"),
    float("nan"), "nan", "inf", "1e400", -5, "-5", 10**12, str(10**12), True, False, None,
    "", " 1800000000", "1800000000\n", "１８００", 1_800_000_000.0, [NOW], {"ts": NOW}, b"1",
]


@pytest.mark.parametrize("raw", ABSURD_TIMESTAMPS, ids=lambda raw: type(raw).__name__)
def test_an_absurd_timestamp_is_a_reason_not_an_exception(raw):
    # GIVEN a timestamp that is no Unix time (huge, negative, not finite, bool, text, nested)
    headers = {signing.SIGNATURE_HEADER: "v1=00", signing.TIMESTAMP_HEADER: raw}
    event = {"tensor_b64": "QUJD", "auth": {"v": 1, "ts": raw, "sig": "00"}}
    # THEN both verifiers return a short reason (no OverflowError / ValueError escapes)
    for problem in (signing.check_body(SECRET, BODY, headers, now=NOW),
                    signing.check_event(SECRET, event, now=NOW)):
        assert problem is not None and len(problem) < 300
        assert any(p in problem for p in ("not an integer", "away from this server", "missing"))


def test_a_signature_that_is_not_encodable_is_refused():
    # a lone surrogate survives json.loads and used to break str.encode() before the comparison
    event = json.loads(json.dumps(signing.sign_event(SECRET, {"tensor_b64": "QUJD"}, NOW)))
    event["auth"]["sig"] = "\ud800" * 64
    assert "does not match the event" in signing.check_event(SECRET, event, now=NOW)
    headers = {**signing.sign_body(SECRET, BODY, NOW), signing.SIGNATURE_HEADER: "v1=\udcff"}
    assert "does not match the body" in signing.check_body(SECRET, BODY, headers, now=NOW)
