"""Faults and bad inputs, one test per case (issue 9's list). Each case says what a user does,
and the test asserts the message, the exit code and what is (and is not) left on disk.

| case | what goes wrong | expected |
|---|---|---|
| 1 | a PNG header claiming 100000x100000 pixels; a result too big for memory | named, rest done, exit 1 |
| 2 | a JPEG with EXIF Orientation=6 | read turned, as every viewer shows it |
| 3 | an output file exists already | per-file error unless --overwrite; --skip-existing resumes |
| 4 | the pretrained cache corrupted, or another model copied over it | warning, rebuilt |
| 5 | the cache folder cannot be written | warning, converted in memory, job runs |
| 6 | disk full while upscaling or training | "no space left ... writing FILE", exit 2, no temp files |
| 7 | the latest checkpoint truncated, --resume auto | damaged file named, resume from the newest intact one |
| 8 | --device bogus | one line, exit 2 |
| 9 | --outscale 1e6 | refused up front |
| 10 | a dangling symlink inside an input folder | reported like any unreadable file |
| 11 | bad hparams metadata in a safetensors file | the file and the key named |
| 12 | negative numeric options | refused by the argument parser |
| 13 | predict killed with SIGKILL, leaving its staging folder | a later run removes it |
| 14 | training data fails its checks | no run folder written |
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from helpers import make_competition, photo, tiny_rrdbnet
from upres.cli import main
from upres.inference import memory
from upres.inference import upscaler as upscaler_mod
from upres.io import files as files_mod
from upres.io import images
from upres.io import pretrained as P
from upres.io.loading import save_model
from upres.io.weights import tensors_sha256
from upres.training import checkpoints as ckpt_mod


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _upscale(*args: str) -> int:
    return main(["upscale", *map(str, args), "--quiet"])


# --------------------------------------------------------------------------- 1


def test_01_decompression_bomb_is_named_and_the_rest_processed(tmp_path, model_file, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    images.write_image(folder / "good.png", photo("astronaut")[:16, :20])
    code = _upscale(folder, "-o", tmp_path / "out", "--model", model_file)
    err = capsys.readouterr().err
    assert code == 1
    assert "bomb.png: image too large: 100000x100000 = 10,000,000,000 pixels" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]
    # the limit is an option
    code = _upscale(folder / "good.png", "-o", tmp_path / "o2", "--model", model_file,
                    "--max-pixels", "100")
    assert code == 1 and "over the limit of 100 (--max-pixels)" in capsys.readouterr().err


def test_01_a_result_too_big_for_memory_is_refused_before_inference(tmp_path, model_file, capsys,
                                                                     monkeypatch):
    images.write_image(tmp_path / "a.png", photo("astronaut")[:40, :60])
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000_000)
    calls = []
    monkeypatch.setattr(upscaler_mod.Upscaler, "upscale_array", lambda *a: calls.append(a))
    code = _upscale(tmp_path / "a.png", "-o", tmp_path / "out", "--model", model_file, "--outscale", "16")
    err = capsys.readouterr().err
    assert code == 1 and calls == []
    assert "a.png: the 960x640 result needs about" in err
    assert "--outscale need the whole result in memory" in err


# --------------------------------------------------------------------------- 2


def test_02_exif_orientation_is_applied_on_read(tmp_path, model_file):
    src = photo("astronaut")[:24, :40]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (turned 90 degrees clockwise)
    Image.fromarray(src).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "r.jpg")))
    read = images.read_image(tmp_path / "r.jpg")
    assert read.shape == (40, 24, 3)
    assert np.abs(read.astype(int) - shown).max() <= 2  # two JPEG decoders
    assert _upscale(tmp_path / "r.jpg", "-o", tmp_path / "out", "--model", model_file) == 0
    assert images.read_image(tmp_path / "out" / "r.png").shape == (160, 96, 3)


# --------------------------------------------------------------------------- 3


def test_03_existing_outputs_are_never_replaced_unless_asked(tmp_path, model_file, capsys):
    images.write_image(tmp_path / "x.jpg", photo("astronaut")[:16, :16])
    unrelated = np.zeros((5, 5, 3), np.uint8)
    images.write_image(tmp_path / "x.png", unrelated)
    assert _upscale(tmp_path / "x.jpg", "-o", tmp_path, "--model", model_file) == 1
    assert "x.png exists; pass --overwrite to replace it or --skip-existing" in capsys.readouterr().err
    np.testing.assert_array_equal(images.read_image(tmp_path / "x.png"), unrelated)
    assert _upscale(tmp_path / "x.jpg", "-o", tmp_path, "--model", model_file, "--overwrite") == 0
    assert images.read_image(tmp_path / "x.png").shape == (64, 64, 3)


def test_03_an_interrupted_batch_resumes_with_skip_existing(tmp_path, model_file, capsys,
                                                            monkeypatch):
    folder = tmp_path / "in"
    for i in range(3):
        images.write_image(folder / f"{i}.png", photo("coffee")[:16, 16 * i:16 * i + 16])
    real, done = upscaler_mod.Upscaler.upscale_file, []

    def interrupted(self, src, dst, progress=None, overwrite=False):
        if len(done) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third image
        done.append(Path(src).name)
        return real(self, src, dst, progress, overwrite)

    monkeypatch.setattr(upscaler_mod.Upscaler, "upscale_file", interrupted)
    assert _upscale(folder, "-o", tmp_path / "out", "--model", model_file) == 130
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    done.clear()
    monkeypatch.setattr(upscaler_mod.Upscaler, "upscale_file",
                        lambda self, s, d, p=None, overwrite=False: (
                            done.append(Path(s).name), real(self, s, d, p, overwrite))[1])
    capsys.readouterr()
    assert _upscale(folder, "-o", tmp_path / "out", "--model", model_file, "--skip-existing") == 0
    assert done == ["2.png"]  # finished images are not done again
    assert capsys.readouterr().out.strip() == f"wrote 1 image(s); kept 2 existing to {tmp_path / 'out'}"
    assert {n: (tmp_path / "out" / n).stat().st_mtime_ns for n in stamps} == stamps


# --------------------------------------------------------------------------- 4, 5


def _cached(tmp_path) -> Path:
    return tmp_path / "upres" / "realesrgan-x4plus-anime.safetensors"


def test_04_corrupted_pretrained_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    good = P.load_pretrained("realesrgan-x4plus-anime").state_dict
    data = bytearray(_cached(tmp_path).read_bytes())
    for offset in range(len(data) - 4000, len(data) - 3000):  # inside the last tensors' data
        data[offset] ^= 0xFF
    _cached(tmp_path).write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="do not match their recorded hash"):
        again = P.load_pretrained("realesrgan-x4plus-anime").state_dict
    assert all(torch.equal(again[k], good[k]) for k in good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: the next load is clean
        P.load_pretrained("realesrgan-x4plus-anime")


def test_04_another_model_copied_over_the_cache_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    good = P.load_pretrained("realesrgan-x4plus-anime").state_dict
    impostor = {k: v + 1 for k, v in good.items()}
    meta = dict(load_file_metadata(_cached(tmp_path)), sha256=tensors_sha256(impostor),
                source_sha256="0" * 64)
    save_file(impostor, str(_cached(tmp_path)), metadata=meta)
    with pytest.warns(UserWarning, match="not a conversion of the installed"):
        again = P.load_pretrained("realesrgan-x4plus-anime").state_dict
    assert all(torch.equal(again[k], good[k]) for k in good)
    save_model(tiny_rrdbnet(), _cached(tmp_path))  # an upres file without the hashes
    with pytest.warns(UserWarning, match="records no hashes"):
        P.load_pretrained("realesrgan-x4plus-anime")


def load_file_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_05_unwritable_cache_converts_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.warns(UserWarning, match="cannot cache realesrgan-x4plus-anime in .*using the "
                      "conversion in memory"):
        weights = P.load_pretrained("realesrgan-x4plus-anime")
    assert weights.hparams["num_block"] == 6 and weights.source == "realesrgan-x4plus-anime"
    assert blocker.read_text().startswith("a file")  # left as it was


# --------------------------------------------------------------------------- 6


def test_06_disk_full_while_upscaling(tmp_path, model_file, capsys, monkeypatch):
    folder = tmp_path / "in"
    for name in ("a", "b", "c"):
        images.write_image(folder / f"{name}.png", photo("astronaut")[:16, :16])
    real = Path.write_bytes

    def full_on_b(self, data):
        if self.name.startswith(".b.png."):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_on_b)
    code = _upscale(folder, "-o", tmp_path / "out", "--model", model_file)
    assert code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: no space left on device while writing {tmp_path / 'out' / 'b.png'}")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]  # no temp files
    assert images.read_image(tmp_path / "out" / "a.png").shape == (64, 64, 3)


def test_06_disk_full_while_training(tmp_path, capsys, monkeypatch):
    comp = make_competition(tmp_path / "comp")
    real_save = ckpt_mod.torch.save
    calls = []

    def save(obj, path):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: torch's own words for a full disk
            Path(path).write_bytes(b"PK\x03\x04 partial")
            monkeypatch.setattr(files_mod.shutil, "disk_usage",
                                lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")
        real_save(obj, path)

    monkeypatch.setattr(ckpt_mod.torch, "save", save)
    run = tmp_path / "run"
    code = main(["train", "smoke-cpu", "--data", str(comp), "--run-dir", str(run), "--quiet",
                 "model.num_feat=8", "model.num_grow_ch=4", "model.num_block=1", "data.crop=32",
                 "data.workers=0", "train.batch_size=2", "train.iterations=6",
                 "train.checkpoint_every=2", "train.val_every=100",
                 f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"no space left on device while writing {run / 'checkpoints' / 'step_000000004.pt'}" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_000000002.pt"]
    assert ckpt_mod.read_checkpoint(run / "checkpoints" / "step_000000002.pt")["step"] == 2


# --------------------------------------------------------------------------- 7


TRAIN_TINY = ["model.num_feat=8", "model.num_grow_ch=4", "model.num_block=1", "data.crop=32",
              "data.workers=0", "train.batch_size=2", "train.checkpoint_every=2",
              "train.keep_checkpoints=3", "train.val_every=100"]


def test_07_truncated_latest_checkpoint_resumes_from_the_newest_intact(tmp_path, capsys):
    comp = make_competition(tmp_path / "comp")
    run = tmp_path / "run"
    args = ["train", "smoke-cpu", "--data", str(comp), "--run-dir", str(run), "--quiet",
            *TRAIN_TINY, f"data.cache_dir={tmp_path / 'cache'}"]
    assert main([*args, "train.iterations=4"]) == 0
    latest = run / "checkpoints" / "step_000000004.pt"
    latest.write_bytes(latest.read_bytes()[:5000])
    capsys.readouterr()
    assert main([*args, "train.iterations=6", "--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {latest}: not a readable checkpoint" in err
    assert f"resumed from {run / 'checkpoints' / 'step_000000002.pt'} at step 2" in err
    for ckpt in (run / "checkpoints").iterdir():  # the damaged one was rewritten
        assert ckpt_mod.read_checkpoint(ckpt)["step"] in (2, 4, 6)
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.write_bytes(b"garbage")
    assert main([*args, "train.iterations=8", "--resume", "auto"]) == 2
    assert "no intact checkpoint to resume from" in capsys.readouterr().err


# --------------------------------------------------------------------------- 8, 9, 12


@pytest.mark.parametrize("argv, message", [
    (["upscale", "x.png", "-o", "o", "--device", "bogus"], "error: unknown device 'bogus'"),
    (["train", "smoke-cpu", "--data", "{comp}", "train.device=bogus"], "error: unknown device 'bogus'"),
])
def test_08_bad_device_is_one_line_exit_2(argv, message, tmp_path, model_file, capsys):
    images.write_image(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    argv = [a.replace("{comp}", str(tmp_path)) for a in argv]
    if argv[0] == "upscale":
        argv = [argv[0], str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), *argv[4:],
                "--model", str(model_file)]
    else:
        make_competition(tmp_path / "c")
        argv = [*argv[:3], str(tmp_path / "c"), *argv[4:], "--run-dir", str(tmp_path / "run"),
                f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["upscale", "x.png", "-o", "o", "--outscale", "1e6"], "--outscale: 1e6 is out of range (0, 16]"),
    (["upscale", "x.png", "-o", "o", "--outscale", "0"], "--outscale: 0 is out of range (0, 16]"),
    (["upscale", "x.png", "-o", "o", "--tile", "-1"], "--tile: -1 is out of range [0, inf]"),
    (["upscale", "x.png", "-o", "o", "--tile-overlap", "-8"], "--tile-overlap: -8 is out of range"),
    (["upscale", "x.png", "-o", "o", "--batch-size", "-2"], "--batch-size: -2 is out of range"),
    (["upscale", "x.png", "-o", "o", "--max-pixels", "0"], "--max-pixels: 0 is out of range"),
    (["predict", "--model", "m", "--input", "i", "--output", "o", "--tile", "-5"], "--tile: -5"),
    (["eval", "--pred", "p", "--gt", "g", "--crop-border", "-3"], "--crop-border: -3 is out of range"),
    (["report", "--pred", "p", "--gt", "g", "--lr", "l", "-o", "o", "--crop-border", "-1"],
     "--crop-border: -1"),
    (["upscale", "x.png", "-o", "o", "--tile", "many"], "--tile: 'many' is not an integer"),
])
def test_09_12_numeric_options_are_range_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- 10, 11


def test_10_dangling_symlink_in_a_folder_is_reported(tmp_path, model_file, capsys):
    folder = tmp_path / "in"
    images.write_image(folder / "ok.png", np.full((8, 8, 3), 128, np.uint8))
    os.symlink(tmp_path / "gone.png", folder / "gone.png")
    assert _upscale(folder, "-o", tmp_path / "out", "--model", model_file) == 1
    assert f"{folder / 'gone.png'}: cannot read file (No such file or directory)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ok.png"]


def test_11_bad_metadata_names_file_and_key(tmp_path, model_file, capsys):
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(model_file)), str(bad), metadata={"arch": "RRDBNet", "hparams": "{x"})
    images.write_image(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    assert _upscale(tmp_path / "x.png", "-o", tmp_path / "o", "--model", bad) == 2
    assert f"error: {bad}: metadata key 'hparams' is not valid JSON" in capsys.readouterr().err


# --------------------------------------------------------------------------- 13, 14


def test_13_stale_staging_folders_of_killed_predicts_are_removed(tmp_path, model_file):
    test_dir = tmp_path / "test"
    images.write_image(test_dir / "a.png", photo("astronaut")[:16, :16])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".sub.{dead.pid}.k9x1"
    (stale / "a.png").parent.mkdir(parents=True)
    (stale / "a.png").write_bytes(b"half")
    live = tmp_path / f".sub.{os.getpid()}.live"  # a predict still running
    live.mkdir()
    assert main(["predict", "--model", str(model_file), "--input", str(test_dir), "--output",
                 str(tmp_path / "sub"), "--quiet"]) == 0
    assert not stale.exists() and live.exists()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]


def test_13_sigkill_during_predict_leaves_nothing_a_later_run_keeps(tmp_path, model_file):
    test_dir = tmp_path / "test"
    for i in range(40):
        images.write_image(test_dir / f"{i:02d}.png", photo("coffee")[:64, i:i + 64])
    cmd = [sys.executable, "-m", "upres.cli", "predict", "--model", str(model_file), "--input",
           str(test_dir), "--output", str(tmp_path / "sub"), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = []
    while proc.poll() is None and not any(p.glob("*.png") for p in staging):
        staging = list(tmp_path.glob(".sub.*"))
    proc.kill()
    proc.wait()
    assert staging and not (tmp_path / "sub").exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert not list(tmp_path.glob(".sub.*"))
    assert len(list((tmp_path / "sub").iterdir())) == 40


def test_14_failed_data_checks_write_no_run_folder(tmp_path, capsys):
    comp = make_competition(tmp_path / "comp")
    (comp / "train/hr/0001.png").write_bytes(b"not a png")
    assert main(["train", "smoke-cpu", "--data", str(comp), "--run-dir", str(tmp_path / "run"),
                 "--quiet", f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    assert "train/hr/0001.png: not an image upres reads" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
