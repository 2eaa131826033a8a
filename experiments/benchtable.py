"""The benchmark figures as a Markdown table (``summary.md`` and the README's table).

Pure functions over the records the benchmarks write (``results/bench/p*.json``, see
:class:`benchlib.BenchResult`): one row per benchmark with the columns
``id | what | ours | baseline | ratio | goal | met? | command``, then one line naming the
machine, its load and the commit. ``bench_all.py`` and ``bench_readme.py`` both use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchlib import significant

#: Short names of the benchmarks for the table's "what" column (issue 6).
TITLES = {
    "P1": "compute per sample with early exits, all stages on one host (ResNet50; MobileNetV2, "
    "InceptionV3 in JSON)",
    "P2": "progressive executor time per sample",
    "P3": "edge endpoint throughput, 16 concurrent loopback clients",
    "P4": "offload payload bytes per sample (and accuracy delta)",
    "P5": "planner: predicted expected latency of the chosen plan, planning time",
    "P6": "end-to-end latency per plan, both services on loopback",
    "P7": "`make demo` wall time",
}
COLUMNS = ("id", "what", "ours", "baseline", "ratio", "goal", "met?", "command")
DASH = "—"


def _cell(value: Any) -> str:
    text = DASH if value in (None, "") else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def is_record(data: Any) -> bool:
    """True for a benchmark's own JSON record (not a placeholder for one that did not run)."""
    return isinstance(data, Mapping) and isinstance(data.get("headline"), Mapping)


def table_row(record: Mapping[str, Any]) -> list[str]:
    """The cells of one row, from a record or from a placeholder ``{bench, status, command}``."""
    bench = str(record.get("bench", "?"))
    what = TITLES.get(bench, record.get("what"))
    command = f"`{record['command']}`" if record.get("command") else None
    if not is_record(record):
        status = record.get("status") or "not run"
        return [bench, what, None, None, None, None, status, command]
    head = record["headline"]
    verdict = head.get("verdict", "?") + (" (quick)" if record.get("quick") else "")
    value = head.get("value")
    shown = "n/a" if value is None else f"{significant(value)}{head.get('unit', '')}"
    ratio = f"{head.get('label', '')} = {shown}".strip(" =")
    reference = head.get("reference") or record.get("baseline")
    return [bench, what, head.get("ours"), reference, ratio, head.get("goal"), verdict, command]


def markdown_table(records: Iterable[Mapping[str, Any]]) -> str:
    """The Markdown table of ``records`` (sorted by benchmark id), ending in a newline."""
    rows = sorted(records, key=lambda r: _order(str(r.get("bench", ""))))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c) for c in table_row(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _order(bench: str) -> tuple[int, str]:
    digits = "".join(ch for ch in bench if ch.isdigit())
    return (int(digits) if digits else 10**6, bench)


def _load_text(load: Sequence[float] | None) -> str:
    return "n/a" if not load else "/".join(f"{v:g}" for v in load)


def machine_line(machine: Mapping[str, Any], load_at_start: Sequence[float] | None = None) -> str:
    """One sentence: CPU model, cores, load averages (with a note), versions, commit, date."""
    cores = machine.get("cores") or 1
    end = machine.get("load_average")
    load = f"load average (1/5/15 min) {_load_text(end)}"
    if load_at_start is not None:
        load = (
            f"load average (1/5/15 min) {_load_text(load_at_start)} at start, "
            f"{_load_text(end)} at end"
        )
    busiest = max([v[0] for v in (load_at_start, end) if v] or [0.0])
    note = (
        f"other work was running (1-min load {busiest:g} on {cores} cores): timings are noisy"
        if busiest > 0.5
        else "the machine was otherwise idle"
    )
    dirty = " (with uncommitted changes)" if machine.get("git_dirty") else ""
    return (
        f"Machine: {machine.get('cpu_model')}, {cores} cores; {load}; {note}. "
        f"Python {machine.get('python')}, TensorFlow {machine.get('tensorflow')}, "
        f"ai-edge-litert {machine.get('ai_edge_litert')}; commit {machine.get('git_commit')}"
        f"{dirty}; {machine.get('date')}."
    )


def load_records(folder: Path) -> list[dict[str, Any]]:
    """Every benchmark record ``p*.json`` in ``folder`` (unreadable files are skipped)."""
    records = []
    for path in sorted(Path(folder).glob("p*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if is_record(data):
            records.append(data)
    return records


def missed_lines(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The headline line of every record whose goal was missed (for the README's misses)."""
    return [
        str(r["headline"].get("line"))
        for r in records
        if is_record(r) and r["headline"].get("verdict") == "MISSED"
    ]
