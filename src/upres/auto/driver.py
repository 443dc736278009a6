"""``upres auto``: from a competition folder and a wall-clock budget to the best submission the
budget buys, every choice made by measurement on held-out validation pairs stratified by
fingerprint group, and written down in ``RUN/auto.json`` with its figures.

``_run_phases`` reads top to bottom, a line per phase naming the module that does it: check the
data, fingerprint it, split off validation, score the candidate starts at step 0, probe each arm
(learning-rate range test, step time), share the training time by successive halving among the
arms, measure what the levers buy, give the rest to the winner, then decide ensemble and
refinement on validation and predict the test set. Each phase is recorded when it ends;
``--resume`` after a kill skips the recorded phases and continues training from the arms'
checkpoints. The time after training (validation, prediction) is estimated from measured
throughput and reserved, so the whole run ends at the budget."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from upres.auto.clock import Clock, minutes
from upres.auto.dataset import (
    check_data,
    fingerprint_train,
    load_pairs,
    split_validation,
)
from upres.auto.ending import decide_end, untrained_end, unused_budget
from upres.auto.final import run_final
from upres.auto.halving import run_halving
from upres.auto.journal import (
    AutoOptions,
    AutoResult,
    AutoRun,
    Journal,
    jsonable,
    reopen_bicubic,
)
from upres.auto.levers import measure_levers
from upres.auto.probes import probe_arms
from upres.auto.report import write_report
from upres.auto.starts import preset_names, score_candidates
from upres.auto.submit import submit
from upres.errors import TrainingInterrupted, UpresError
from upres.inference.shard import current_shard


def run_auto(data: str | Path, out: str | Path, options: AutoOptions, resume: bool = False,
             say: Callable[[str], None] = print) -> AutoResult:
    data, out = Path(data), Path(out)
    shard = current_shard(options.device)
    preset_names(options.presets, shard.device)  # a misspelt name fails now, not minutes in
    opened = Journal.open(out, resume, jsonable(options)).data if shard.main else None
    journal = Journal(out / "auto.json", shard.broadcast(opened), shard.main)
    journal.data["options"]["budget"] = options.budget  # a resumed run may be given more
    reopen_bicubic(journal)
    clock = Clock(options.budget, journal.data["spent"])
    run = AutoRun(data, out, options, clock, journal, shard, say if shard.main else (lambda _: None))
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        _run_phases(run)
    except TrainingInterrupted:
        raise TrainingInterrupted(f"interrupted; run the same command with --resume (and --out "
                                  f"{out}) to continue") from None
    except UpresError:
        if made and shard.main and not journal.data["phases"]:  # refused before any phase ended:
            shutil.rmtree(out, ignore_errors=True)  # the folder it made would block the rerun
        raise
    if shard.main:
        journal.data["total_seconds"] = round(clock.elapsed(), 2)
        journal.data["unused"] = unused_budget(journal.data, clock.elapsed())
        journal.save(clock)
        write_report(journal.data, out)
        say(f"finished in {minutes(clock.elapsed())} of {minutes(options.budget)}"
            + (f"; unused: {journal.data['unused']['why']}" if journal.data["unused"] else ""))
    return AutoResult(out, out / "submission", journal.data)


def _run_phases(run: AutoRun) -> None:
    run.phase("check", check_data)  # dataset.py: every pair and test image, all problems at once
    run.pairs, run.val_pairs, run.scale = load_pairs(run)
    run.phase("fingerprint", fingerprint_train)  # dataset.py: the recipe groups
    run.phase("split", split_validation)  # dataset.py: validation pairs, stratified by group
    run.phase("candidates", score_candidates)  # starts.py: every start timed and scored at step 0
    if run.phase("probes", probe_arms).get("bicubic"):  # probes.py: rates, step times, sizes
        run.phase("end", untrained_end)  # ending.py: bicubic, or the zero-shot ensemble
    else:
        run_halving(run)  # halving.py: the arms share the training time, the better half goes on
        levers = run.phase("levers", measure_levers)  # levers.py: self-ensemble, ensemble, priced
        run.end_speed = levers.get("speed", {}).get("ratio", 1.0)
        run_final(run)  # final.py: the winner (and a specialist) train until the reserve
        run.phase("end", decide_end)  # ending.py: models, weights per group, refinement
    run.phase("submit", submit)  # submit.py: the test set, as decided
