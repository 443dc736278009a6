"""Faults, round two (issue 19): nothing lost, nothing half-written, every check before the work.
One test per case; each failed before the fix.

| case | what a user does | expected |
|---|---|---|
| 1 | train into a finished run folder without --resume | refused, run untouched |
| 2 | make-set with a broken HR file; into a folder of own files | nothing written; refused |
| 3 | another process writes the same output meanwhile | per-file error, its file kept |
| 4 | NaN in weights; --weights nan,1 | refused, named |
| 5 | an HDR, a 3 GB file, an animated GIF/WebP named .png | refused from the header |
| 6 | weights whose metadata says num_block 100000000 | refused at once |
| 7 | a symlink loop; --outscale 0.01; --suffix /../x | per-file errors, nothing outside -o |
| 8 | config/data mismatches (crop, SSIM size, scale vs cache, split, tiles) | refused, no run folder |
| 9 | torn metrics.jsonl; a changed model on --resume; stale temp files | warned; one line; removed |
| 10 | a missing init.source in a later arm; two arms with one name | refused before training |
| 11 | -o an existing file; input folder = output folder with --suffix | one line; no x4_x4 |
| 12 | the Python API with bad arrays, dst = src, no memory | UpresError, input kept |
| 13 | convert onto an existing unrelated file | refused, kept; --overwrite replaces |
| 14 | a failure while a report or fingerprint is written | the old folder kept, no staging |
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers import make_competition, photo, small_competition, train_tiny, write_pair
from upres.cli import main
from upres.errors import ImageError, InferenceError, UpresError
from upres.inference import upscaler as upscaler_mod
from upres.inference.upscaler import Upscaler
from upres.io import images


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return small_competition(tmp_path_factory.mktemp("comp"))


# --------------------------------------------------------------------------- 1


def test_01_a_finished_run_is_not_mixed_with_a_new_one(comp, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_tiny(comp, run, cache, "train.iterations=2") == 0
    best, metrics = (run / "best.safetensors").read_bytes(), (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert train_tiny(comp, run, cache, "train.iterations=4") == 2
    assert "holds a training run; pass --resume auto to continue it, or --overwrite" in \
        capsys.readouterr().err
    assert (run / "best.safetensors").read_bytes() == best
    assert (run / "metrics.jsonl").read_text() == metrics
    assert train_tiny(comp, run, cache, "train.iterations=4", "--overwrite") == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_psnr" in r] == [4]  # one run, not two mixed
    assert [r["step"] for r in records if "params" in r] == [0]


# --------------------------------------------------------------------------- 2


def _hr_folder(root: Path, n: int = 6) -> Path:
    for i in range(n):
        images.write_image(root / f"{i:02d}.png", photo("astronaut")[i * 40:i * 40 + 64, :64])
    return root


def test_02_make_set_checks_every_input_first_and_never_replaces_a_users_folder(tmp_path, capsys):
    hr = _hr_folder(tmp_path / "hr")
    (hr / "03.png").write_bytes(b"")
    assert main(["make-set", str(hr), str(tmp_path / "set"), "--recipes", "bicubic,area"]) == 2
    assert f"{hr / '03.png'}: file is empty" in capsys.readouterr().err
    assert not (tmp_path / "set").exists()  # nothing half-built
    images.write_image(hr / "03.png", photo("coffee")[:64, :64])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert main(["make-set", str(hr), str(mine), "--recipes", "bicubic,area"]) == 2
    assert "holds files already; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(["make-set", str(hr), str(tmp_path / "set"), "--recipes", "bicubic,area"]) == 0
    first = json.loads((tmp_path / "set" / "recipes.json").read_text())
    assert main(["make-set", str(hr), str(tmp_path / "set"), "--recipes", "bicubic",
                 "--test-fraction", "0.5", "--overwrite"]) == 0
    again = json.loads((tmp_path / "set" / "recipes.json").read_text())
    on_disk = {p.stem for p in (tmp_path / "set" / "train" / "lr").iterdir()}
    assert on_disk == set(again["train"]) != set(first["train"])  # no stale files from the first
    assert not list(tmp_path.glob(".set.*"))


# --------------------------------------------------------------------------- 3


def test_03_a_concurrent_writer_is_never_replaced_silently(tmp_path, model_file, capsys, monkeypatch):
    folder = tmp_path / "in"
    images.write_image(folder / "a.png", photo("astronaut")[:16, :16])
    images.write_image(folder / "b.png", photo("astronaut")[16:32, :16])
    out = tmp_path / "out"
    real = Upscaler.upscale_array

    def racing(self, img, on_progress=None):  # another process finishes a.png meanwhile
        if not (out / "a.png").exists():
            images.write_image(out / "a.png", np.zeros((2, 2, 3), np.uint8))
        return real(self, img, on_progress)

    monkeypatch.setattr(upscaler_mod.Upscaler, "upscale_array", racing)
    code = main(["upscale", str(folder), "-o", str(out), "--model", str(model_file), "--quiet"])
    assert code == 1
    assert "a.png exists (another process may have written it)" in capsys.readouterr().err
    assert images.read_image(out / "a.png").shape == (2, 2, 3)  # the other writer's file
    assert images.read_image(out / "b.png").shape == (64, 64, 3)
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- 4


def test_04_non_finite_weights_and_ensemble_weights_are_errors(tmp_path, model_file, capsys):
    tensors = load_file(model_file)
    tensors["conv_last.bias"][0] = float("nan")
    from safetensors import safe_open

    with safe_open(str(model_file), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, tmp_path / "nan.safetensors", metadata=metadata)
    images.write_image(tmp_path / "in" / "a.png", photo("astronaut")[:16, :16])
    code = main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                 str(tmp_path / "nan.safetensors"), "--quiet"])
    assert code == 2 and "tensor conv_last.bias holds NaN or infinite values" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(["predict", "--model", str(model_file), "--model", str(model_file), "--weights",
                 "nan,1", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "sub")])
    assert code == 2 and "finite, non-negative numbers" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()


# --------------------------------------------------------------------------- 5


def test_05_files_are_judged_by_their_header_before_they_are_read(tmp_path, model_file, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "hdr.png").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n"
                                     + b"\0" * 4096)
    huge = folder / "huge.png"
    huge.write_bytes(images.encode_image(np.zeros((8, 8, 3), np.uint8), ".png"))
    os.truncate(huge, 3 * 2**30)  # sparse: 3 GB that must not be read
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(folder / "anim.png", format="GIF", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "movie.webp", format="WEBP", save_all=True, append_images=frames[1:])
    images.write_image(folder / "ok.png", photo("astronaut")[:16, :16])
    start = time.monotonic()
    code = main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model_file),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - start < 60
    assert "hdr.png: not an image upres reads (PNG, JPEG, WebP, BMP or TIFF)" in err
    assert "huge.png: 3072 MB is more than a 8x8 image can hold" in err
    assert "anim.png: a GIF file; upres reads PNG, JPEG, WebP, BMP and TIFF" in err
    assert "movie.webp: 2 frames (animated or multi-page)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.png"]


# --------------------------------------------------------------------------- 6


def test_06_forged_metadata_is_refused_before_anything_is_built(tmp_path, model_file, capsys):
    from safetensors import safe_open

    with safe_open(str(model_file), "pt") as f:
        metadata = dict(f.metadata())
    hparams = json.loads(metadata["hparams"])
    metadata["hparams"] = json.dumps(hparams | {"num_block": 100_000_000})
    save_file(load_file(model_file), tmp_path / "forged.safetensors", metadata=metadata)
    start = time.monotonic()
    code = main(["convert", str(tmp_path / "forged.safetensors"), str(tmp_path / "x.pth")])
    assert code == 2 and time.monotonic() - start < 20
    assert "num_block=100000000 is out of proportion to the tensors" in capsys.readouterr().err
    metadata["hparams"] = json.dumps(hparams | {"num_block": 3})  # plausible, but not the tensors
    save_file(load_file(model_file), tmp_path / "wrong.safetensors", metadata=metadata)
    assert main(["convert", str(tmp_path / "wrong.safetensors"), str(tmp_path / "x.pth")]) == 2
    assert "num_block: metadata 3, tensors 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- 7


def test_07_bad_files_and_options_in_a_batch_are_per_file_errors(tmp_path, model_file, capsys):
    folder = tmp_path / "in"
    images.write_image(folder / "good.png", photo("astronaut")[:16, :16])
    os.symlink(folder / "loop2.png", folder / "loop1.png")
    os.symlink(folder / "loop1.png", folder / "loop2.png")
    code = main(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(model_file),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "loop1.png" in err and "Traceback" not in err
    assert (tmp_path / "out" / "good.png").exists()
    code = main(["upscale", str(folder / "good.png"), "-o", str(tmp_path / "o2"), "--model",
                 str(model_file), "--outscale", "0.01", "--quiet"])
    assert code == 1 and "--outscale 0.01 makes the 16x16 image 0x0 pixels" in capsys.readouterr().err
    code = main(["upscale", str(folder / "good.png"), "-o", str(tmp_path / "o3"), "--model",
                 str(model_file), "--suffix", "/../../x", "--quiet"])
    assert code == 2 and "a suffix is part of a file name" in capsys.readouterr().err
    assert not list(tmp_path.parent.glob("x.png")) and not (tmp_path / "o3").exists()


# --------------------------------------------------------------------------- 8


@pytest.mark.parametrize("extra, message", [
    (["val.tile=64", "val.tile_overlap=96"], "val.tile_overlap (96) must be smaller than val.tile (64)"),
    (["data.crop=512"], "is smaller than the LR crop 128 (data.crop 512)"),
    (["data.val_split=4"], "data.val_split 4 holds out 4 of 4 pairs, leaving none to train on"),
])
def test_08_config_against_data_is_checked_before_a_run_folder(extra, message, tmp_path, capsys):
    comp = make_competition(tmp_path / "comp", train_size=96, val_size=48)
    if "data.val_split=4" in extra:
        import shutil

        shutil.rmtree(comp / "val")
    run = tmp_path / "run"
    assert train_tiny(comp, run, tmp_path / "cache", "train.iterations=2", *extra) == 2
    err = capsys.readouterr().err
    assert message in err
    if "data.crop=512" in extra:  # every offending file is named, not the first only
        assert err.count("is smaller than the LR crop") == 4
    assert not run.exists()


def test_08_small_validation_pairs_and_a_scale_the_cache_contradicts(tmp_path, capsys):
    comp = make_competition(tmp_path / "comp", train_size=96, val_size=48)
    for i in range(2):  # two validation pairs too small for SSIM after the border
        write_pair(comp, "val", f"{i:04d}", photo("astronaut")[:16, :16])
    assert train_tiny(comp, tmp_path / "run", tmp_path / "cache", "train.iterations=2") == 2
    assert capsys.readouterr().err.count("what SSIM needs after val.crop_border 4") == 2
    assert not (tmp_path / "run").exists()
    data = make_competition(tmp_path / "c2", train_size=96, val_size=48)
    assert main(["fingerprint", str(data), "--cache-dir", str(tmp_path / "fc"), "--quiet",
                 "--out", str(tmp_path / "fp4")]) == 0
    code = main(["fingerprint", str(data), "--scale", "2", "--cache-dir", str(tmp_path / "fc"),
                 "--quiet", "--out", str(tmp_path / "fp2")])
    assert code == 2 and "is not 2 x the LR size" in capsys.readouterr().err
    assert not (tmp_path / "fp2").exists()


# --------------------------------------------------------------------------- 9


def test_09_resume_survives_a_torn_log_a_changed_model_and_stale_temporaries(comp, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_tiny(comp, run, cache, "train.iterations=2") == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # killed mid-write
    (run / "checkpoints" / ".step_000000004.pt.1a2b3c4d.tmp").write_bytes(b"partial")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="metrics.jsonl: the last line was cut off"):
        assert train_tiny(comp, run, cache, "train.iterations=4", "--resume", "auto") == 0
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()][-1] == 4
    capsys.readouterr()
    code = train_tiny(comp, run, cache, "train.iterations=6", "model.num_feat=16", "--resume", "auto")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1  # one line, no state-dict traceback
    assert "holds another network than the config describes (model.params.num_feat: 8 -> 16)" in err


# --------------------------------------------------------------------------- 10


def test_10_every_arm_is_checked_before_the_first_trains(comp, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"base: smoke-cpu\ndata: {comp}\niterations: 2\nval_every: 2\n"
                    "overrides: {data.workers: 0, model.num_block: 1}\n"
                    "arms:\n  - name: a\n  - name: b\n"
                    f"    overrides: {{init.source: {tmp_path / 'missing.safetensors'}}}\n")
    assert main(["experiment", str(plan), "--out", str(tmp_path / "exp"), "--quiet"]) == 2
    missing = tmp_path / "missing.safetensors"
    assert f"arm b: init.source {missing}: no such file" in capsys.readouterr().err
    plan.write_text(f"base: smoke-cpu\ndata: {comp}\niterations: 2\nval_every: 2\n"  # (round 3)
                    "arms:\n  - name: a\n  - name: b\n    overrides: {model.num_feat: 0}\n"
                    f"  - name: c\n    overrides: {{data.extra_hr: {tmp_path / 'none'}}}\n")
    assert main(["experiment", str(plan), "--out", str(tmp_path / "exp"), "--quiet"]) == 2
    err = capsys.readouterr().err  # the network (built on the meta device) and every folder
    assert "2 problem(s) in the plan" in err and "arm b: model: " in err
    assert f"arm c: data.extra_hr {tmp_path / 'none'}: no such folder" in err
    assert not (tmp_path / "exp").exists()
    plan.write_text(f"base: smoke-cpu\ndata: {comp}\niterations: 2\nval_every: 2\n"
                    "arms:\n  - name: a\n  - name: a\n")
    assert main(["experiment", str(plan), "--out", str(tmp_path / "exp")]) == 2
    assert "arm a: two arms have this name" in capsys.readouterr().err


# --------------------------------------------------------------------------- 11


def test_11_output_rules_of_upscale(tmp_path, model_file, capsys):
    folder = tmp_path / "photos"
    images.write_image(folder / "a.png", photo("astronaut")[:16, :16])
    (tmp_path / "file").write_text("not a folder")
    code = main(["upscale", str(folder), "-o", str(tmp_path / "file"), "--model", str(model_file)])
    assert code == 2 and "the output folder is a file" in capsys.readouterr().err
    args = ["upscale", str(folder), "-o", str(folder), "--suffix", "_x4", "--model", str(model_file),
            "--quiet"]
    assert main(args) == 0 and main([*args, "--skip-existing"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x4.png"]  # no a_x4_x4.png


# --------------------------------------------------------------------------- 12


def test_12_the_api_raises_upres_errors_and_never_writes_over_its_input(tmp_path, tiny_model,
                                                                         monkeypatch):
    up = Upscaler(tiny_model, backend="torch", tile=0)
    for bad in (np.zeros((8, 8, 5), np.uint8), np.zeros(8, np.uint8), np.zeros((8, 8, 3))):
        with pytest.raises(ImageError, match="upscale_array takes an HxW, HxWx3 or HxWx4"):
            up.upscale_array(bad)
    with pytest.raises(ImageError, match="upscale_float takes an HxWx3 float array"):
        up.upscale_float(np.zeros((8, 8, 3), np.uint8))
    nan = np.full((8, 8, 3), 0.5, np.float32)
    nan[0, 0, 0], nan[1, 1, 1] = np.nan, np.inf
    with pytest.raises(ImageError, match=r"^upscale_float's input holds 2 NaN or infinite values of "
                                         r"192; the input is at fault, not the model$"):
        up.upscale_float(nan)
    with pytest.raises(ImageError, match=r"values from -0\.2 to 1\.5, outside \[0, 1\]; the input"):
        up.upscale_float(np.linspace(-0.2, 1.5, 192, dtype=np.float32).reshape(8, 8, 3))
    assert up.upscale_float(np.full((8, 8, 3), 1.0, np.float32)).shape == (32, 32, 3)  # the ends are in
    path = tmp_path / "photo.png"
    images.write_image(path, photo("astronaut")[:16, :16])
    before = path.read_bytes()
    with pytest.raises(UpresError, match="is an input; upres never writes over an input"):
        up.upscale_file(path, path)
    other = tmp_path / "other.png"
    images.write_image(other, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(UpresError, match="other.png exists; pass --overwrite"):
        up.upscale_file(path, other)
    assert path.read_bytes() == before and images.read_image(other).shape == (2, 2, 3)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(up.engine, "stream", no_memory)
    with pytest.raises(InferenceError, match="out of memory upscaling a 16x16 image"):
        up.upscale_array(photo("astronaut")[:16, :16])


# --------------------------------------------------------------------------- 13


def test_13_convert_never_replaces_an_unrelated_file(tmp_path, model_file, capsys):
    target = tmp_path / "notes.pth"
    target.write_text("my notes")
    assert main(["convert", str(model_file), str(target)]) == 2
    assert "notes.pth exists; pass --overwrite" in capsys.readouterr().err
    assert target.read_text() == "my notes"
    assert main(["convert", str(model_file), str(model_file)]) == 2
    assert "is an input" in capsys.readouterr().err
    assert main(["convert", str(model_file), str(target), "--overwrite"]) == 0
    assert torch.load(target, weights_only=True)["params_ema"]


# --------------------------------------------------------------------------- 14


def test_14_a_failure_mid_report_keeps_the_old_folder(tmp_path, monkeypatch, capsys):
    gt, lr, pred = tmp_path / "gt", tmp_path / "lr", tmp_path / "pred"
    hr = photo("astronaut")[:64, :64]
    write_pair(tmp_path, "x", "a", hr)
    for folder, img in ((gt, hr), (lr, images.read_image(tmp_path / "x" / "lr" / "a.png")), (pred, hr)):
        images.write_image(folder / "a.png", img)
    argv = ["report", "--pred", str(pred), "--gt", str(gt), "--lr", str(lr), "-o", str(tmp_path / "rep")]
    assert main(argv) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    from upres.scoring import report as report_mod

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_mod, "_page", broken)
    assert main([*argv, "--overwrite"]) == 2
    assert (tmp_path / "rep" / "index.html").read_text() == page  # the old report, whole
    assert not list(tmp_path.glob(".rep.*"))


def test_14_a_killed_fingerprint_leaves_no_half_folder(tmp_path):
    data = make_competition(tmp_path / "d", train_size=96, val_size=48)
    code = ("import sys, upres.degradation.folders as f, upres.degradation.fingerprint as fp\n"
            "real = fp.Fingerprint.save\n"
            "def save(self, path):\n"
            "    real(self, path)\n"
            "    import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
            "fp.Fingerprint.save = save\n"
            f"f.fingerprint_data({str(data)!r}, {str(tmp_path / 'fp')!r}, "
            f"cache_dir={str(tmp_path / 'c')!r}, progress=False)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert done.returncode == -9
    assert not (tmp_path / "fp").exists()  # killed after the JSON, before the page: no folder
    assert main(["fingerprint", str(data), "--out", str(tmp_path / "fp"), "--cache-dir",
                 str(tmp_path / "c"), "--quiet"]) == 0  # and a rerun cleans up the staging
    assert sorted(p.name for p in (tmp_path / "fp").iterdir()) == ["fingerprint.html", "fingerprint.json"]
    assert not list(tmp_path.glob(".fp.*"))
