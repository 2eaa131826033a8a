"""``edgelesspart inspect BUNDLE``: print a bundle's summary (no TensorFlow needed)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    """Add the ``inspect`` subcommand."""
    parser = sub.add_parser("inspect", help="summarise a bundle and verify its file hashes")
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--json", action="store_true", help="print manifest.json instead")
    parser.add_argument("--no-verify", action="store_true", help="skip the file-hash check")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the manifest (verifying hashes) and print it."""
    from edgelesspart.export.summary import format_bundle
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(args.bundle, verify=not args.no_verify)
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_bundle(manifest))
    return 0
