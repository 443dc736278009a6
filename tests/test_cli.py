import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch

from upres.cli import build_parser, main
from upres.errors import UpresError
from upres.io import images
from upres.io.loading import load_weights, model_from_weights, save_model
from upres.scoring import metrics


@pytest.fixture
def inputs(tmp_path, photo):
    folder = tmp_path / "in"
    folder.mkdir()
    images.write_image(folder / "a.png", photo[:24, :20])
    images.write_image(folder / "b.jpg", photo[30:46, 40:60])
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def test_upscale_folder_reports_bad_file_and_processes_the_rest(tmp_path, inputs, model_file,
                                                                capsys):
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--model", str(model_file)])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png: not an image upres reads" in err
    assert images.read_image(out / "a.png").shape == (96, 80, 3)
    assert images.read_image(out / "b.png").shape == (64, 80, 3)
    assert not (out / "broken.png").exists()


def test_all_good_inputs_exit_zero(tmp_path, inputs, model_file):
    out = tmp_path / "out"
    code = main(["upscale", str(inputs / "a.png"), "-o", str(out), "--model", str(model_file),
                 "--self-ensemble", "median", "--tile", "16", "--tile-overlap", "4"])
    assert code == 0 and (out / "a.png").exists()


def test_never_overwrites_an_input(inputs, model_file, capsys):
    before = (inputs / "a.png").read_bytes()
    code = main(["upscale", str(inputs / "a.png"), "-o", str(inputs), "--model", str(model_file)])
    assert code == 1
    assert "would overwrite an input" in capsys.readouterr().err
    assert (inputs / "a.png").read_bytes() == before


def test_missing_input_and_bad_model_are_named(tmp_path, inputs, model_file, capsys):
    code = main(["upscale", str(tmp_path / "ghost.png"), str(inputs / "a.png"), "-o",
                 str(tmp_path / "o"), "--model", str(model_file)])
    assert code == 1 and "ghost.png: no such file or folder" in capsys.readouterr().err
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o2"), "--model",
                 str(tmp_path / "missing.pth")])
    assert code == 2 and "missing.pth: no such file" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_fp16_on_cpu_exits_with_message(tmp_path, inputs, model_file, capsys):
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--model", str(model_file),
                 "--device", "cpu", "--dtype", "fp16"])
    assert code == 2 and "fp16 is supported on CUDA only" in capsys.readouterr().err


def test_convert_command(tmp_path, model_file, capsys):
    dst = tmp_path / "m.pth"
    assert main(["convert", str(model_file), str(dst)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote {dst}")
    raw = torch.load(dst, weights_only=True)["params_ema"]
    original = load_weights(model_file).state_dict
    assert raw.keys() == original.keys()
    assert all(torch.equal(raw[k], original[k]) for k in raw)
    trained = tmp_path / "best.safetensors"  # a training's best: its step and score stay
    save_model(model_from_weights(load_weights(model_file)),
               trained, extra={"step": 1200, "val_psnr": 25.5})
    assert main(["convert", str(trained), str(tmp_path / "copy.safetensors")]) == 0
    meta = load_weights(tmp_path / "copy.safetensors").metadata
    assert (meta["step"], meta["val_psnr"], meta["source"]) == ("1200", "25.5", str(trained))
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert "nope.pth: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def _commands(parser: argparse.ArgumentParser, prefix=()):
    """Every (sub)command path with its parser, e.g. ('config', 'schema')."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_help_is_complete():
    """Every command has a description, and every option and argument its own help text, shown
    by --help."""
    commands = list(_commands(build_parser()))
    assert {c[0] for c, _ in commands} == {"upscale", "convert", "train", "lr-find", "auto", "eval",
                                           "predict", "report", "experiment", "fingerprint",
                                           "make-set", "demo", "models", "config"}
    for path, parser in commands:
        assert parser.description, path
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and len(action.help) > 5, (path, action.dest)
            assert (action.option_strings[0] if action.option_strings else action.metavar) in text
    top = subprocess.run([sys.executable, "-m", "upres.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for (name, *rest), _ in commands:
        if not rest:
            assert name in top


def test_long_running_commands_take_quiet():
    for path, parser in _commands(build_parser()):
        if path[0] in ("upscale", "train", "predict", "experiment", "demo"):
            assert "--quiet" in parser.format_help(), path


def test_internal_errors_keep_their_traceback(monkeypatch, capsys):
    """UpresError: one line, exit 2. Anything else is a bug: it propagates with its traceback."""
    from upres import cli
    from upres.cli import training

    def user_error(args):
        raise UpresError("x.png: bad input")

    def bug(args):
        raise KeyError("internal")

    monkeypatch.setattr(training, "cmd_config_list", user_error)
    assert cli.main(["config", "list"]) == 2
    assert capsys.readouterr().err == "error: x.png: bad input\n"
    monkeypatch.setattr(training, "cmd_config_list", bug)
    with pytest.raises(KeyError, match="internal"):
        cli.main(["config", "list"])


def test_console_script_exit_code(tmp_path, model_file):
    result = subprocess.run([sys.executable, "-m", "upres.cli", "upscale", str(tmp_path / "none"),
                             "-o", str(tmp_path / "o"), "--model", str(model_file)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "none: no such file or folder" in result.stderr


def test_upscale_prints_its_output_folder_last(tmp_path, inputs, model_file, capsys):
    out = tmp_path / "o"
    assert main(["upscale", str(inputs / "a.png"), "-o", str(out), "--model", str(model_file),
                 "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 1 image(s) to {out}"


def test_demo_upscales_the_sample_photo_with_x4plus(tmp_path):
    """The README's first command, for real: x4plus on scikit-image's chelsea (300x451)."""
    skimage = pytest.importorskip("skimage.data")
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "upres.cli", "demo", "-o", str(out), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    dst = out / "upscaled_x4.png"
    assert result.stdout.strip().splitlines()[-1] == f"wrote {dst.resolve()}"
    src = skimage.chelsea()
    np.testing.assert_array_equal(images.read_image(out / "input.png"), src)
    sr = images.read_image(dst)
    assert sr.shape == (1200, 1804, 3) and sr.dtype == np.uint8
    # A faithful 4x: shrunk back by area averaging it matches the input closely.
    back = sr.reshape(300, 4, 451, 4, 3).mean(axis=(1, 3))
    assert metrics.psnr(np.rint(back).astype(np.uint8), src) > 30
    page = (out / "index.html").read_text()  # its own before/after, both crops inline
    assert page.count("data:image/png;base64,") >= 2 and "type=range" in page
    assert "href='upscaled_x4.png'" in page and "href='input.png'" in page
