"""The Python snippets of README.md and docs/serving.md run as written against a live cloud part.

Each boto3 snippet is taken from the Markdown file verbatim; only the bundle path
(``bundles/demo``) and the local endpoint (``http://127.0.0.1:9000``) are pointed at this test's
bundle and server. The snippet reads the boundary shape and the bundle id from the bundle, so it
is right for any bundle, the demo's included; it runs in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/serving.md")


def python_snippets(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def cloud_url(tiny_bundle):
    from cloud_functions.local_server import create_app
    from service_http.wsgi import BackgroundServer

    with BackgroundServer(create_app(tiny_bundle)) as server:
        yield server.url


@pytest.mark.parametrize("doc", DOCS)
def test_boto3_snippet_runs_as_written(doc, cloud_url, tiny_bundle):
    from edgelesspart.runtime.manifest import load_manifest

    snippets = [s for s in python_snippets(REPO / doc) if "boto3.client(" in s]
    assert len(snippets) == 1, f"{doc}: expected one boto3 snippet"
    code = snippets[0]
    ast.parse(code)  # it is Python as printed
    # GIVEN the snippet aimed at this test's bundle and server, nothing else changed
    assert '"bundles/demo"' in code and '"http://127.0.0.1:9000"' in code
    code = code.replace('"bundles/demo"', repr(str(tiny_bundle)))
    code = code.replace('"http://127.0.0.1:9000"', repr(cloud_url))
    # WHEN it runs in a fresh interpreter
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # THEN it printed the cloud part's answer for its one row
    printed = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert printed.get("bundle_id") == load_manifest(tiny_bundle).bundle_id, printed
    assert len(printed["answers"]) == 1 and "label" in printed["answers"][0]
    json.dumps(printed)  # plain data
