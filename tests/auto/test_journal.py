"""auto.json's versions: what this upres reads, what it refuses (naming the format), and that a
journal is written whole."""

from __future__ import annotations

import json

import pytest

from upres.auto.clock import Clock
from upres.auto.journal import FORMAT, READS, AutoError, Journal


def test_a_new_run_writes_the_current_format(tmp_path):
    journal = Journal.open(tmp_path / "run", resume=False, options={"budget": 60.0})
    (tmp_path / "run").mkdir()
    journal.record("check", {"train_pairs": 2}, Clock(60.0), 0.0)
    data = json.loads((tmp_path / "run" / "auto.json").read_text())
    assert data["format"] == FORMAT and FORMAT in READS
    assert data["phases"]["check"]["train_pairs"] == 2 and "seconds" in data["phases"]["check"]


def test_a_journal_of_a_format_this_upres_does_not_read_is_refused_by_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "auto.json").write_text(json.dumps({"format": "upres-auto/9", "phases": {}, "spent": 0}))
    with pytest.raises(AutoError, match=r"format 'upres-auto/9'.*reads upres-auto/1"):
        Journal.open(run, resume=True, options={})


@pytest.mark.parametrize("text", ['{"phases": {}}', "[1, 2]"])
def test_json_that_is_no_journal_is_refused(tmp_path, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "auto.json").write_text(text)
    with pytest.raises(AutoError, match="not an upres auto record"):
        Journal.open(run, resume=True, options={})


def test_resume_reads_a_journal_of_the_current_format(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "auto.json").write_text(json.dumps({"format": FORMAT, "options": {}, "spent": 12.5,
                                                "phases": {"check": {"train_pairs": 3}}}))
    journal = Journal.open(run, resume=True, options={})
    assert journal.done("check") and not journal.done("split") and journal.data["spent"] == 12.5
