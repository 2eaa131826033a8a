"""A Cloud Function behind IAM: the edge sends the ID token from a file and still signs its body.

Google's front end for an IAM-protected function answers 403 unless ``Authorization: Bearer
<ID token>`` carries a token it accepts, and passes the request on unchanged otherwise. A small
WSGI front end plays that part in front of the real cloud app (token set, so every offload must
also carry a valid HMAC signature); the edge's offloader talks to it over loopback HTTP.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from edgelesspart.errors import OffloadRejected, OffloadUnavailable

pytestmark = pytest.mark.integration

SECRET = "shared-secret"


class IamFront:
    """403 unless the bearer token is the current ID token, as Google's front end does."""

    def __init__(self, app, accepted: list[str]) -> None:
        self.app, self.accepted, self.seen = app, accepted, []

    def __call__(self, environ, start_response):
        header = environ.get("HTTP_AUTHORIZATION", "")
        self.seen.append(header)
        if header not in [f"Bearer {t}" for t in self.accepted]:
            start_response("403 Forbidden", [("Content-Type", "text/html")])
            return [b"<h1>403 Forbidden</h1> Your client does not have permission"]
        return self.app(environ, start_response)


@pytest.fixture()
def iam_cloud(tiny_bundle):
    from cloud_functions.local_server import create_app
    from service_http.wsgi import BackgroundServer

    front = IamFront(create_app(tiny_bundle, token=SECRET), accepted=["id-token-1"])
    with BackgroundServer(front) as server:
        yield server.url, front


def _boundary(tiny_bundle):
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(tiny_bundle, stages=["edge"], pool_size=1)
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    return ProgressiveExecutor(bundle, "edge").run(x, threshold=2.0).boundary


def test_offload_to_an_iam_function_sends_the_id_token_and_the_signature(
    iam_cloud, tiny_bundle, tmp_path
):
    from edgelesspart.runtime.manifest import load_manifest
    from edgelesspart.runtime.offload import HttpOffloader, OffloadPolicy

    url, front = iam_cloud
    meta = {"bundle_id": load_manifest(tiny_bundle).bundle_id}
    boundary = _boundary(tiny_bundle)
    policy = OffloadPolicy(retries=0, timeout_s=30)
    token_file = tmp_path / "id-token"
    token_file.write_text("id-token-1\n")
    # WHEN the edge offloads with the ID token file and the shared secret
    offloader = HttpOffloader(url, policy, token=SECRET, id_token_file=str(token_file))
    with contextlib.closing(offloader):
        answers = offloader.offload(boundary, threshold=2.0, meta=meta)
        assert [a["exit"] for a in answers] == ["final", "final"]
        assert front.seen[-1] == "Bearer id-token-1"
        # AND a refreshed token file is picked up (the old token is no longer accepted)
        front.accepted[:] = ["id-token-2"]
        token_file.write_text("id-token-2")
        os.utime(token_file, (1, 1))  # a new mtime even within the filesystem's resolution
        assert len(offloader.offload(boundary, threshold=2.0, meta=meta)) == 2
        assert front.seen[-1] == "Bearer id-token-2"
    # THEN without the ID token every call is refused with 403 (the degraded case of the issue)
    with contextlib.closing(HttpOffloader(url, policy, token=SECRET)) as plain:
        with pytest.raises(OffloadRejected, match="403"):
            plain.offload(boundary, threshold=2.0, meta=meta)
    # AND a missing token file is a clear error, not a crash
    missing = str(tmp_path / "nope")
    with contextlib.closing(HttpOffloader(url, policy, token=SECRET, id_token_file=missing)) as bad:
        with pytest.raises(OffloadUnavailable, match="ID token file"):
            bad.offload(boundary, threshold=2.0, meta=meta)
