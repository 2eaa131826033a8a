"""Print the README's benchmark table from the latest records in ``results/bench/``.

Reads every ``p*.json`` a benchmark wrote (and ``summary.json`` for the machine line and total
time of the last ``make bench``) and prints Markdown ready to paste under the README's
``<!-- BENCH_TABLE -->`` marker; ``--misses`` adds the headline of every missed goal, the list
the README's "Goals missed and why" section must discuss. Warnings (quick-mode records, records
from different commits) go to stderr.

Usage::

    .venv/bin/python experiments/bench_readme.py [--out results/bench] [--misses]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import benchtable  # noqa: E402


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR, help="result folder")
    parser.add_argument("--misses", action="store_true", help="list the missed goals too")
    return parser.parse_args(argv)


def _summary(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def warnings(records: list[dict[str, Any]]) -> list[str]:
    """What makes these records unfit for the README as they are."""
    notes = []
    quick = [r["bench"] for r in records if r.get("quick")]
    if quick:
        notes.append(f"--quick records (smoke tests, not figures): {', '.join(quick)}")
    commits = {r.get("machine", {}).get("git_commit") for r in records}
    if len(commits) > 1:
        notes.append(f"records come from different commits: {sorted(map(str, commits))}")
    return notes


def render(folder: Path, misses: bool = False) -> str:
    """The Markdown to paste into the README (table, machine line, optional misses)."""
    records = benchtable.load_records(folder)
    if not records:
        raise SystemExit(f"No benchmark records (p*.json) in {folder}; run `make bench` first.")
    summary = _summary(folder)
    if summary is not None:  # keep the rows of benchmarks the last run could not finish
        have = {r["bench"] for r in records}
        records += [
            r
            for r in summary.get("benchmarks", [])
            if r.get("bench") not in have and not benchtable.is_record(r)
        ]
    if summary is not None:
        machine = summary["machine"]
        start = summary.get("machine_at_start", {}).get("load_average")
        quick = " (--quick: smoke test, not figures)" if summary.get("quick") else ""
        total = f"\n\n`make bench` total: {summary['total_seconds']:.0f} s{quick}"
    else:
        machine = max(records, key=lambda r: r["machine"].get("date", ""))["machine"]
        start, total = None, ""
    text = benchtable.markdown_table(records) + "\n" + benchtable.machine_line(machine, start)
    text += total + "\n"
    if misses:
        lines = benchtable.missed_lines(records)
        text += "\nMissed goals:\n\n" + "".join(f"- {line}\n" for line in lines or ["none"])
    return text


def main(argv: list[str] | None = None) -> int:
    """Print the table (and warnings on stderr)."""
    args = _args(argv)
    for note in warnings(benchtable.load_records(args.out)):
        print(f"warning: {note}", file=sys.stderr)
    print(render(args.out, args.misses), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
