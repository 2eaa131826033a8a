"""Print a bundle's measured codec table as Markdown (for the README and docs/codecs.md).

The table is what ``edgelesspart build`` measured at the split on validation data and wrote to
the bundle's ``codecs.json`` (see ``edgelesspart.planning.codec_selection``); nothing is re-measured
here. Columns: codec, wire bytes per sample (frame header included), how many times fewer
bytes than the raw float32 tensor, accuracy delta in percentage points (negative = loss),
median encode / decode ms at batch 1 on the build host, and a check mark on the codec the
manifest names (the one the services use by default).

Usage::

    .venv/bin/python experiments/codec_table.py BUNDLE [--no-verify]

Exit status 0 on success, 2 when the bundle is invalid or has no codec table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from edgelesspart.errors import EdgeLessPartError  # noqa: E402


def load_table(bundle: Path, *, verify: bool = True) -> tuple[dict[str, Any], str | None]:
    """The bundle's codec table (``codecs.json``, else the manifest entry) and chosen codec.

    Raises:
        BundleError: the manifest is missing or invalid, a hash does not match, or the bundle
            has no measured codec table.
    """
    from edgelesspart.errors import BundleError
    from edgelesspart.export.bundle import CODECS_PATH
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bundle, verify=verify)
    chosen = manifest.codec.get("name")
    path = bundle / CODECS_PATH
    if path.is_file():
        return json.loads(path.read_text("utf-8")), chosen
    if manifest.codec.get("table"):
        return dict(manifest.codec), chosen
    raise BundleError(
        f"Bundle {bundle} has no measured codec table (no {CODECS_PATH}, no table in "
        "manifest.codec): it was built before codecs were measured or by hand. Rebuild it with "
        "`edgelesspart build ... --codec auto`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the Markdown table of ``BUNDLE``; 2 with a one-line message on error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory")
    parser.add_argument("--no-verify", action="store_true", help="skip the file-hash check")
    args = parser.parse_args(argv)
    from edgelesspart.export.summary import format_codec_markdown

    try:
        table, chosen = load_table(args.bundle, verify=not args.no_verify)
    except (EdgeLessPartError, OSError, ValueError) as exc:
        print(f"codec_table: error: {exc}", file=sys.stderr)
        return 2
    print(format_codec_markdown(table, chosen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
