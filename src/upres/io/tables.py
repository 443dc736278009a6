"""Result tables written twice, for people and for programs: ``NAME.md`` (Markdown, with notes
under the table) and ``NAME.csv``, each atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from upres.io.files import atomic_write_bytes


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_tables(folder: Path, name: str, header: list[str], rows: list[list[str]],
                 notes: list[str] = ()) -> dict[str, Path]:
    """Write ``folder/name.md`` and ``folder/name.csv``; returns them by file name."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    md, sheet = folder / f"{name}.md", folder / f"{name}.csv"
    atomic_write_bytes(sheet, buf.getvalue().encode())
    atomic_write_bytes(md, (markdown_table(header, rows) + "".join(f"\n{n}\n" for n in notes)).encode())
    return {md.name: md, sheet.name: sheet}
