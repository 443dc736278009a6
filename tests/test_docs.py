"""The docs: every table of figures is rendered from benchmark records and matches them, no table
outside a records block holds a figure, every page is in the site's nav, the generated reference
names every command, option, config key and preset, and the changelog's version is upres's."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import records
import upres

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FIGURE = re.compile(r"\d+\.\d+")  # a measured figure, as tables print them


def reference_pages():
    spec = importlib.util.spec_from_file_location("reference_pages", DOCS / "reference_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outside_records_and_code(text: str) -> str:
    text = records.BLOCK.sub("", text)
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


@pytest.mark.parametrize("doc", records.documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_of_figures_matches_its_records(doc):
    text = doc.read_text()
    assert records.rendered(text) == text, f"{doc.name}: run python benchmarks/records.py render"


@pytest.mark.parametrize("doc", records.documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_table_outside_a_records_block_holds_a_figure(doc):
    rows = [line for line in outside_records_and_code(doc.read_text()).splitlines()
            if line.startswith("|")]
    typed = [row for row in rows if FIGURE.search(row)]
    assert not typed, f"{doc.name}: figures typed into a table (record them instead): {typed}"


def test_a_planted_typed_figure_and_a_stale_table_are_caught():
    typed = "| model | PSNR |\n|---|---|\n| x4plus | 23.461 |\n"
    assert FIGURE.search(outside_records_and_code(typed))
    block = "<!-- records tiling -->\n| stale |\n<!-- /records -->\n"
    assert records.rendered(block) != block


def test_every_page_is_in_the_nav_and_every_nav_page_exists():
    nav = re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    generated = set(reference_pages().pages())
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages <= set(nav), sorted(pages - set(nav))
    assert set(nav) <= pages | generated, sorted(set(nav) - pages - generated)


def _options(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*prefix, name))
        elif not isinstance(action, argparse._HelpAction):
            yield prefix, action.option_strings or [action.metavar or action.dest]


def test_the_command_reference_names_every_command_and_option():
    from upres.cli import build_parser

    page = reference_pages().cli_page()
    for command, names in _options(build_parser()):
        section = page.split(f"`upres {' '.join(command)}`", 1) if command else ["", page]
        assert len(section) == 2, command
        for name in names:
            assert f"`{name}`" in section[1], (command, name)


def _leaves(schema: dict, node: dict, prefix: str = ""):
    for key, spec in node.get("properties", {}).items():
        ref = spec.get("$ref") or next((s["$ref"] for s in spec.get("anyOf", []) if "$ref" in s), None)
        if ref and ref.split("/")[-1] in schema.get("$defs", {}):
            yield from _leaves(schema, schema["$defs"][ref.split("/")[-1]], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_the_config_reference_names_every_key():
    from upres.training.config import config_schema

    page = reference_pages().config_page()
    schema = config_schema()
    keys = list(_leaves(schema, schema))
    assert "train.lr" in keys and "model.arch" in keys
    for key in keys:
        assert f"`{key}`" in page, key


def test_the_models_reference_names_every_preset_and_pretrained_name():
    from upres.io.pretrained import PRETRAINED
    from upres.models import registry

    page = reference_pages().models_page()
    for name in [*PRETRAINED, *registry.presets(), *registry.ARCHITECTURES]:
        assert name in page, name


def test_the_changelog_names_this_version_first_and_upres_prints_it():
    first = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert first and first.group(1) == upres.__version__
    out = subprocess.run([sys.executable, "-m", "upres.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"upres {upres.__version__}"


def test_every_record_is_well_formed():
    files = sorted(records.RESULTS.glob("*.jsonl"))
    assert files
    for path in files:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            assert rec["format"] == records.FORMAT and rec["benchmark"] == path.stem, path
            assert isinstance(rec["config"], dict) and isinstance(rec["figures"], dict), path
            assert rec["command"] and rec["source"] and rec["device"], path
            assert isinstance(rec["cpu"]["model"], str) and isinstance(rec["cpu"]["flags"], list), path
    for name in records.TABLES:
        assert (records.RESULTS / f"{name.split(':')[0]}.jsonl").exists(), name


def test_a_run_appends_a_stamped_record_and_the_table_shows_the_newest_per_configuration(
        tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_tiling.py", "--overlaps", "64"])
    monkeypatch.setitem(records.TABLES, "probe", records.Table(("config.overlap",)))
    for overlap, diff in ((64, 3.5), (64, 0.25), (128, 0.5)):
        records.append("probe", {"overlap": overlap}, {"max_abs_diff_x255": diff}, results=tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "probe.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    rec = lines[0]
    assert rec["command"] == "python benchmarks/bench_tiling.py --overlaps 64"
    assert re.fullmatch(r"[0-9a-f]{7,}(-dirty)?", rec["commit"] or "0000000")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["date"])
    assert set(rec["cpu"]["flags"]) <= set(records.CPU_FLAGS) and rec["source"] == "run"
    table = records.render("probe", {}, tmp_path)
    shown, folded = table.split("<details", 1)
    assert "| 64 | 0.25 |" in shown and "| 128 | 0.5 |" in shown and "3.5" not in shown
    assert "| 64 | 3.5 |" in folded
    assert "| 0.5 |" not in records.render("probe", {"overlap": "64"}, tmp_path)
