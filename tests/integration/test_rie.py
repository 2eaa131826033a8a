"""The Lambda handler under AWS's own runtime: the Runtime Interface Emulator + awslambdaric.

The RIE binary comes from the ``aws-sam-cli`` wheel (see tests/lambda_rie.py; skipped with the
reason if it cannot be downloaded). RIE serves only the function name ``function`` and one
invocation at a time, so calls are sequential. tests/packaging/test_lambda_zip.py runs the packaged
zip the same way, from an empty directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from lambda_rie import rie_binary, running_rie

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
INVOKE = "http://127.0.0.1:{}/2015-03-31/functions/function/invocations"


@pytest.fixture(scope="session")
def rie() -> Path:
    return rie_binary()


@pytest.fixture()
def lambda_runtime(rie, tiny_bundle, tmp_path):
    """RIE running ``python -m awslambdaric cloud_functions.handler.handler`` on free ports."""
    log = tmp_path / "rie.log"
    env = {
        **os.environ,
        "EDGELESSPART_BUNDLE": str(tiny_bundle),
        "AWS_LAMBDA_FUNCTION_NAME": "edgelesspart-cloud",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "60",
        "LAMBDA_TASK_ROOT": str(REPO),
        "PYTHONPATH": str(REPO),
    }
    runtime = [sys.executable, "-m", "awslambdaric", "cloud_functions.handler.handler"]
    with running_rie(rie, runtime, cwd=REPO, env=env, log=log) as port:
        yield port, log


def test_handler_under_the_real_lambda_runtime(lambda_runtime, tiny_bundle):
    from edgelesspart.runtime.codecs import encode_tensor, to_base64
    from edgelesspart.runtime.manifest import load_manifest

    port, log = lambda_runtime
    bundle_id = load_manifest(tiny_bundle).bundle_id
    boundary = np.random.default_rng(2).random((2, 16, 16, 16), dtype=np.float32)
    event = {"tensor_b64": to_base64(encode_tensor(boundary, meta={"bundle_id": bundle_id})),
             "threshold": 2.0}
    # WHEN the handler is invoked twice through RIE (which starts the runtime lazily)
    first = requests.post(INVOKE.format(port), json=event, timeout=90)
    second = requests.post(INVOKE.format(port), json=event, timeout=60)
    bad = requests.post(INVOKE.format(port), json={"threshold": 1}, timeout=60)
    # THEN the first is a cold start that reports its init time, the second is warm
    assert first.status_code == 200, first.text
    cold, warm = first.json(), second.json()
    assert cold["cold_start"] is True and cold["init_ms"] > 0
    assert warm["cold_start"] is False
    assert [a["exit"] for a in cold["answers"]] == ["final", "final"]
    assert cold["bundle_id"] == bundle_id
    # AND a bad event is a handled 4xx error body
    assert bad.status_code == 200 and bad.json()["status"] == 400
    # AND the request ids RIE assigned are the ones in the answers and in our log lines
    text = log.read_text()
    assert f"START RequestId: {cold['request_id']}" in text
    assert f"[{cold['request_id']}] cold start" in text
    assert f"[{warm['request_id']}] answered 2 rows" in text
