"""Faults, round three (issue 47): a refusal touches nothing; every option means something or
is refused. Each test failed before its fix.

| case | what a user does | expected |
|---|---|---|
| 1 | resume with a config of another network | refused; config.yaml, command.txt as they were |
| 2 | --resume auto with train.iterations under the checkpoint's step | refused by name, nothing rewritten |
| 3 | a missing or broken data.extra_hr in a new run folder | refused; no run folder left to block the rerun |
| 4 | a plan whose later arm's network cannot be built | refused first (test_faults_edges, case 10) |
| 5 | report_at past iterations or off the validation steps; two --pred of one name | refused by name |
| 6 | experts.json with a group twice or a group the fingerprint lacks | refused by name |
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import photo, small_competition, train_tiny
from upres.cli import main
from upres.io import images


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return small_competition(tmp_path_factory.mktemp("comp"))


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its bytes and modification time (folders: None, mtime)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_1_a_refused_resume_leaves_the_run_as_it_was(comp, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_tiny(comp, run, cache, "train.iterations=2") == 0
    before = tree(run)
    capsys.readouterr()
    assert train_tiny(comp, run, cache, "train.iterations=4", "model.num_feat=16", "--resume", "auto") == 2
    assert "holds another network than the config describes" in capsys.readouterr().err
    assert tree(run) == before  # config.yaml and command.txt too: "resume with its config" still works
    assert train_tiny(comp, run, cache, "train.iterations=4", "--resume", "auto") == 0


def test_2_resuming_with_fewer_iterations_than_done_is_refused_by_name(comp, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_tiny(comp, run, cache, "train.iterations=4") == 0
    before = tree(run)
    capsys.readouterr()
    for iterations in (2, 4):
        assert train_tiny(comp, run, cache, f"train.iterations={iterations}", "--resume", "auto") == 2
        err = capsys.readouterr().err
        assert f"the checkpoint is at step 4, and train.iterations is {iterations}: nothing is left " \
               "to train; to train on, raise train.iterations (e.g. train.iterations=8)" in err
        assert tree(run) == before


def test_3_a_bad_extra_hr_leaves_no_run_folder_behind(comp, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_tiny(comp, run, cache, "train.iterations=1", f"data.extra_hr={tmp_path / 'nope'}") == 2
    assert f"data.extra_hr: {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    assert not run.exists()
    extra = tmp_path / "extra"  # found only after the fingerprint was written: 16-bit samples
    images.write_image(extra / "deep.png", (photo("coffee")[:64, :64].astype(np.uint16) * 257))
    assert train_tiny(comp, run, cache, "train.iterations=1", f"data.extra_hr={extra}") == 2
    assert "deep.png: 16-bit samples; training expects 8-bit" in capsys.readouterr().err
    assert not run.exists()  # no fingerprint.json, no synth/
    assert train_tiny(comp, run, cache, "train.iterations=1") == 0  # the corrected rerun is not blocked


@pytest.mark.parametrize("report_at, why", [
    ("[2, 8]", "report_at: step 8 is past iterations (4); no arm gets there"),
    ("[3]", "report_at: step 3 is not a validation step (val_every 2, and the last step)"),
    ("[2, 2]", "report_at: a step is given twice")])
def test_5_a_plan_step_no_arm_reaches_is_refused(tmp_path, capsys, report_at, why):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"base: smoke-cpu\niterations: 4\nval_every: 2\nreport_at: {report_at}\n"
                    "arms:\n  - name: a\n")
    assert main(["experiment", str(plan), "--out", str(tmp_path / "exp"), "--quiet"]) == 2
    assert why in capsys.readouterr().err


def test_5_two_report_columns_of_one_name_are_refused(tmp_path, capsys):
    for folder in ("gt", "lr", "a/x", "b/x"):
        (tmp_path / folder).mkdir(parents=True)
    assert main(["report", "--pred", str(tmp_path / "a/x"), "--pred", str(tmp_path / "b/x"), "--gt",
                 str(tmp_path / "gt"), "--lr", str(tmp_path / "lr"), "-o", str(tmp_path / "rep")]) == 2
    assert "--pred: two columns would be named 'x'" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_6_an_expert_twice_or_for_a_group_the_fingerprint_lacks_is_refused(tmp_path, capsys):
    from upres.errors import PredictError
    from upres.inference.route import RoutedPredictor, read_routes

    routes = tmp_path / "experts.json"
    routes.write_text('{"fingerprint": "fp.json", "shared": "s.safetensors", '
                      '"experts": {"1": "a.safetensors", "1": "b.safetensors"}}')
    with pytest.raises(PredictError, match=r"experts.json: not an experts file .*key '1' is given twice"):
        read_routes(routes)
    routes.write_text('{"fingerprint": "fp.json", "shared": "s.safetensors", '
                      '"experts": {"1": "a.safetensors", "01": "b.safetensors"}}')
    with pytest.raises(PredictError, match=r"experts.json: group 1 has two experts; keep one"):
        read_routes(routes)
    _two_group_fingerprint(tmp_path / "fp.json")
    routes.write_text('{"fingerprint": "fp.json", "shared": "s.safetensors", '
                      '"experts": {"5": "a.safetensors"}}')
    with pytest.raises(PredictError, match=r"an expert for group 5, which .*fp.json does not have "
                                           r"\(its groups: 0 to 1\); that expert would never run"):
        RoutedPredictor(routes)


def _two_group_fingerprint(path: Path) -> None:
    """A fingerprint with two groups and no pairs, as ``Fingerprint.save`` writes one."""
    from upres.degradation.fingerprint import Fingerprint, Group

    group = dict(count=1, kernel=[[1.0]], noise=0.0, blockiness=0.0, correlation=0.0, spread=0.0,
                 offset=(0.0, 0.0), bicubic_psnr=30.0, post={"kind": "none"})
    Fingerprint(4, 1, [], [Group(id=0, **group), Group(id=1, **group)]).save(path)


def test_7_errors_speak_the_users_terms_not_the_librarys(tmp_path, capsys):
    """A pickle is refused naming what it holds, without PyTorch's advice to pass
    ``weights_only=False``; a truncated .pth is "cut short", not the zip reader's internals; an
    operating-system error is the file and what happened, without ``[Errno N]``."""
    import torch

    from upres.errors import os_problem

    pickled = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "where": Path("x")}, pickled)
    assert main(["upscale", str(pickled), "-o", str(tmp_path / "o"), "--model", str(pickled)]) == 2
    err = capsys.readouterr().err
    assert "holds pickled objects other than tensors, which could run code (it names pathlib." in err
    assert "weights_only" not in err and "two options" not in err
    cut = tmp_path / "cut.pth"
    torch.save({"params": {"w": torch.zeros(100)}}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    assert main(["upscale", str(cut), "-o", str(tmp_path / "o"), "--model", str(cut)]) == 2
    err = capsys.readouterr().err
    assert f"{cut}: not a readable PyTorch weights file (not a PyTorch file, or cut short)" in err
    assert "PytorchStreamReader" not in err
    assert os_problem(PermissionError(13, "Permission denied", "/data/out")) == "/data/out: permission denied"
    assert os_problem(OSError(28, "No space left on device")) == "no space left on device"


def test_8_a_flat_image_is_named_without_numpys_words(monkeypatch):
    """A pair whose kernel cannot be fitted says why in a user's terms, not "Singular matrix"."""
    from upres.degradation import kernels

    hr = np.full((96, 96, 3), 255, np.uint8)

    def singular(*args):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(np.linalg, "solve", singular)
    with pytest.raises(ValueError) as err:
        kernels.fit_pair(hr[::4, ::4], hr, 4)
    assert str(err.value) == ("its pixels are too uniform to fit a downscaling kernel (a flat or "
                              "constant image); leave it out")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A user's folder: data, a model, a finished-looking output, a few bad inputs."""
    from helpers import make_recipe_set, tiny_rrdbnet
    from upres.io.loading import save_model

    root = tmp_path_factory.mktemp("ws")
    make_recipe_set(root / "DATA")
    (root / "NOTEST" / "train").mkdir(parents=True)
    for sub in ("lr", "hr"):
        for f in (root / "DATA" / "train" / sub).iterdir():
            (root / "NOTEST" / "train" / sub).mkdir(exist_ok=True)
            (root / "NOTEST" / "train" / sub / f.name).write_bytes(f.read_bytes())
    save_model(tiny_rrdbnet(num_block=1), root / "tiny.safetensors")
    images.write_image(root / "photo.png", photo("coffee")[:24, :24])
    (root / "existing.pth").write_bytes(b"a file of the user's")
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("the user's")
    (root / "dup.yaml").write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    (root / "plan.yaml").write_text("base: smoke-cpu\niterations: 2\nval_every: 2\narms:\n  - name: a\n"
                                    "  - name: b\n    overrides: {init.source: missing.pth}\n")
    (root / "HR").mkdir()
    images.write_image(root / "HR" / "a.png", photo("astronaut")[:64, :64])
    (root / "HR" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


REFUSED = {  # what a user types that upres refuses, in the workspace
    "upscale with a missing model": ["upscale", "photo.png", "-o", "new", "--model", "missing.pth"],
    "upscale fp16 on a CPU": ["upscale", "photo.png", "-o", "new", "--model", "tiny.safetensors",
                              "--device", "cpu", "--dtype", "fp16"],
    "upscale into a folder of own files": ["upscale", "photo.png", "-o", "out", "--model",
                                           "tiny.safetensors", "--suffix", "/../x"],
    "predict with a missing model": ["predict", "--model", "missing.pth", "--input", "DATA/test/lr",
                                     "--output", "pred"],
    "train a config with a key twice": ["train", "dup.yaml", "--data", "DATA", "--run-dir", "run"],
    "train without data": ["train", "smoke-cpu", "--data", "nodata", "--run-dir", "run"],
    "train into a folder of other files": ["train", "smoke-cpu", "--data", "DATA", "--run-dir", "out"],
    "an experiment with a missing start": ["experiment", "plan.yaml", "--data", "DATA", "--out", "exp"],
    "auto on data without tests": ["auto", "NOTEST", "--budget", "1m", "--out", "autorun"],
    "make-set with a broken HR": ["make-set", "HR", "made"],
    "fingerprint of no data": ["fingerprint", "nodata", "--out", "fp"],
    "eval of missing folders": ["eval", "--pred", "nope", "--gt", "nope2"],
    "convert onto a user's file": ["convert", "tiny.safetensors", "existing.pth"],
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_9_a_refusal_leaves_the_folder_as_it_was(workspace, case, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # (the user's cache may fill)
    before = tree(workspace)
    assert main(REFUSED[case]) != 0
    assert "error: " in capsys.readouterr().err
    assert tree(workspace) == before
