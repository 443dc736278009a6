"""Benchmark figures as records: each run of a benchmark appends one JSON line per configuration
to ``benchmarks/results/BENCHMARK.jsonl`` (what ran, on which commit, CPU and device, and its
figures), and the tables in README.md and docs/ are rendered from those lines, never typed.

    python benchmarks/records.py render          # rewrite every <!-- records ... --> block
    python benchmarks/records.py check           # exit 1 where a block differs from the records

A block in a Markdown file is ``<!-- records NAME [key=value ...] -->`` ... ``<!-- /records -->``:
the table ``TABLES[NAME]`` describes, filtered to the records whose ``config`` has those values,
showing the newest record per configuration and the older ones folded below it."""

from __future__ import annotations

import datetime
import json
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FORMAT = "upres-record/1"
# The CPU features that decide speed here (bf16 and int8 dot products, vector width).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


# --------------------------------------------------------------------------- writing


def cpu() -> dict:
    """The CPU's model name and the flags in CPU_FLAGS it has (Linux; elsewhere the platform)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": []}
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    found = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    flags = set(found.group(1).split()) if found else set()
    return {"model": model.group(1).strip() if model else platform.machine(),
            "flags": [f for f in CPU_FLAGS if f in flags]}


def commit() -> str | None:
    """HEAD's short hash, marked ``-dirty`` where tracked files other than the records differ."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results"],  # (the records a run appends)
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def record(benchmark: str, config: dict, figures: dict, device: str = "cpu", note: str = "") -> dict:
    """One run's record of one configuration, stamped with the command, commit, date and CPU."""
    return {"format": FORMAT, "benchmark": benchmark, "config": config, "figures": figures,
            "command": shlex.join(["python", *sys.argv]), "commit": commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpu": cpu(), "device": device, "source": "run", **({"note": note} if note else {})}


def append(benchmark: str, config: dict, figures: dict, device: str = "cpu", note: str = "",
           results: Path = RESULTS) -> Path:
    """Append a record to ``results/BENCHMARK.jsonl`` (one line, flushed whole)."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{benchmark}.jsonl"
    line = json.dumps(record(benchmark, config, figures, device, note), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
    print(f"recorded in {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def load(benchmark: str, results: Path = RESULTS) -> list[dict]:
    path = results / f"{benchmark}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """How records read as a table: the fields that make a configuration (its newest record is
    the row shown) and the columns, each a field path (``config.KEY``, ``figures.KEY``, ``cpu``,
    ``commit``, ``date``, ``note``); no columns: every config and figure key, then CPU, commit,
    date and note."""

    key: tuple[str, ...]
    columns: tuple[str, ...] = ()


TABLES: dict[str, Table] = {  # NAME or NAME:PART; NAME is the benchmark (results/NAME.jsonl)
    "models-minicomp": Table(("config.model", "cpu"), ("config.model", "figures.test_psnr",
                             "figures.vs_bicubic", "config.use", "cpu", "commit", "note")),
    "competition-cpu": Table(("config.set", "config.budget", "config.method", "cpu"), (
        "config.budget", "config.method", "figures.wall_min", "figures.test_psnr", "figures.vs_bicubic",
        "figures.vs_bicubic_by_recipe", "figures.winner", "cpu", "commit", "date", "note")),
    "inference": Table(("config.input", "config.case")),
    "inference:self-ensemble": Table(("config.case",)),
    "inference:huge": Table(("config.case",)),
    "cuda": Table(("config.part", "config.variant")),
    "train": Table(("config.loop",)),
    "tiling": Table(("config.overlap",)),
    "silence": Table(("config.command", "config.code")),
    "blind": Table(("config.set", "cpu")),
    "fingerprint": Table(("config.pairs",)),
    "self-ensemble": Table(("config.set", "config.model", "config.group")),
    "ema": Table(("config.set", "config.init", "config.step")),
    "steps": Table(("config.set", "config.crop_x_batch")),
    "zoo-psnr": Table(("config.model", "config.set")),
    "decoder-fuzz": Table(("config.format", "config.cases", "config.seed")),
    "int8": Table(("config.model", "config.precision", "config.set")),
    "train-peak": Table(("config.model", "config.crop", "config.batch", "config.variant")),
    "experiment-levers-cpu": Table(("config.arm",)),
    "experiment-seed-ablation-cpu": Table(("config.arm",)),
    "experiment-arch-zoo-cpu": Table(("config.arm",)),
    "experiment-degradation-cpu": Table(("config.arm",)),
}
HEADERS = {"cpu": "CPU", "figures.vs_bicubic": "vs bicubic (dB)", "figures.test_psnr": "test PSNR (dB)",
           "figures.it_s": "it/s", "figures.output_mp_s": "output MP/s", "figures.gflop_s": "GFLOP/s",
           "figures.bf16_peak_gflop_s": "bf16 peak GFLOP/s",
           "figures.pct_bf16_peak": "% bf16 peak", "figures.pct_fp32_peak": "% fp32 peak",
           "figures.peak_rss_gib": "peak RSS (GiB)", "figures.wall_min": "wall (min)",
           "figures.vs_bicubic_by_recipe": "vs bicubic by recipe (dB)", "figures.x8_s": "x8 s",
           "figures.max_abs_diff_x255": "max abs diff x255",
           "figures.mean_abs_diff_x255": "mean abs diff x255", "figures.psnr_y": "PSNR-Y (dB)",
           "figures.bicubic_psnr_y": "bicubic PSNR-Y", "figures.published_psnr_y": "published PSNR-Y",
           "figures.seconds_per_mp": "s/MP", "figures.vs_fp32_db": "vs fp32 (dB)",
           "figures.photo_seconds": "photo (s)", "figures.vs_bf16": "speed vs bf16",
           "figures.step_s": "s/step", "figures.gflop": "GFLOP a step",
           "figures.top_ops": "top ops (bf16 step)", "figures.speedup_vs_bf16": "x bf16 step",
           "figures.compile_s": "compile s", "figures.matches_eager": "matches eager",
           "figures.output_rel_error": "output rel. error", "figures.grad_rel_error": "grad rel. error"}
SIGNED = {"figures.vs_bicubic", "figures.vs_bicubic_by_recipe", "figures.end_vs_first", "figures.difference",
          "figures.val_psnr_vs_fp32_db", "figures.vs_fp32_db"}  # differences: shown with their sign


def _cpu_label(rec: dict) -> str:
    if rec.get("device", "cpu") != "cpu":
        return ""  # the GPU's name says what ran it
    cpu = rec.get("cpu", {})
    flags = cpu.get("flags", [])
    kind = ("AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags
            else "AVX2" if "avx2" in flags else "")
    return cpu.get("label") or kind or cpu.get("model", "")  # transcribed records keep their label


def value(rec: dict, path: str):
    if path == "cpu":
        return _cpu_label(rec)
    if path == "date":
        return (rec.get("date") or "")[:10]
    node = rec
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def cell(v, signed: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, dict):
        return ", ".join(f"{k} {cell(x, signed)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(cell(x, signed) for x in v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        text = f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
        return ("+" + text) if signed and v > 0 else text
    return str(v).replace("|", "\\|")


def _columns(table: Table, recs: list[dict]) -> list[str]:
    if table.columns:
        return list(table.columns)
    cols: list[str] = []
    for part in ("config", "figures"):
        for r in recs:
            cols += [f"{part}.{k}" for k in r.get(part, {}) if f"{part}.{k}" not in cols]
    gpu = ["device"] if any(r.get("device", "cpu") != "cpu" for r in recs) else []
    return cols + gpu + ["cpu", "commit", "date", "note"]


def _header(path: str) -> str:
    return HEADERS.get(path, path.split(".")[-1].replace("_", " "))


HOISTED = ("device", "cpu", "commit", "date", "note")  # said once under the table where every row agrees


def _markdown(rows: list[dict], columns: list[str]) -> str:
    columns = [c for c in columns if any(cell(value(r, c)) for r in rows)]
    same = [c for c in columns if c in HOISTED and len(rows) > 1
            and len({cell(value(r, c)) for r in rows}) == 1]
    columns = [c for c in columns if c not in same]
    lines = ["| " + " | ".join(_header(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value(r, c), c in SIGNED) for c in columns) + " |" for r in rows]
    if same:
        lines += ["", "Every row: " + "; ".join(f"{_header(c)} {cell(value(rows[0], c))}" for c in same)
                  + "."]
    return "\n".join(lines)


def render(name: str, where: dict[str, str], results: Path = RESULTS) -> str:
    """The block's Markdown: the newest record per configuration, in the order configurations
    first appeared, then the older records folded below."""
    table = TABLES[name]
    recs = [r for r in load(name.split(":")[0], results)
            if all(cell(value(r, k if "." in k else f"config.{k}")) == v for k, v in where.items())]
    if not recs:
        raise SystemExit(f"records {name} {where}: no record matches in {results}")
    key = lambda r: tuple(cell(value(r, k)) for k in table.key)  # noqa: E731
    newest = {key(r): r for r in recs}  # the file is append-only: later lines are newer
    shown = list(newest.values())
    shown.sort(key=lambda s: next(i for i, r in enumerate(recs) if key(r) == key(s)))
    older = [r for r in recs if all(r is not s for s in shown)]
    columns = [c for c in _columns(table, recs) if c.removeprefix("config.") not in where]
    text = _markdown(shown, columns)
    if older:
        text += (f'\n\n<details markdown="1"><summary>Earlier runs of these configurations '
                 f"({len(older)})</summary>\n\n{_markdown(older, columns)}\n\n</details>")
    return text


BLOCK = re.compile(r"(<!-- records (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /records -->)", re.S)


def rendered(text: str, results: Path = RESULTS) -> str:
    """TEXT with every records block rendered afresh."""
    def one(m: re.Match) -> str:
        name, *pairs = m.group("spec").split()
        where = dict(p.split("=", 1) for p in pairs)
        return f"{m.group(1)}{render(name, where, results)}\n{m.group(4)}"
    return BLOCK.sub(one, text)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    action = (argv if argv is not None else sys.argv[1:])[:1]
    if action not in (["render"], ["check"]):
        print(__doc__)
        return 2
    stale = []
    for path in documents():
        text = path.read_text()
        new = rendered(text)
        if new != text:
            stale.append(path)
            if action == ["render"]:
                path.write_text(new)
    verb = "rewrote" if action == ["render"] else "out of date"
    for path in stale:
        print(f"{verb}: {path.relative_to(ROOT)}")
    return 1 if stale and action == ["check"] else 0


if __name__ == "__main__":
    sys.exit(main())
