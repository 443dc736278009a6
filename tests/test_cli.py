import subprocess
import sys

import pytest

from conftest import tiny_rrdbnet
from upres import images
from upres.cli import main
from upres.weights import save_model


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(tiny_rrdbnet(), path)
    return path


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
    assert "broken.png: cannot decode image" in err
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


def test_convert_command(tmp_path, model_file):
    dst = tmp_path / "m.pth"
    assert main(["convert", str(model_file), str(dst)]) == 0
    assert dst.exists()
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "x.safetensors")]) == 2


@pytest.mark.parametrize("command", [[], ["upscale"], ["convert"], ["demo"]])
def test_help_is_complete(command):
    result = subprocess.run([sys.executable, "-m", "upres.cli", *command, "--help"],
                            capture_output=True, text=True, check=True)
    assert "usage: upres" in result.stdout
    if command == ["upscale"]:
        for flag in ("--model", "--tile", "--tile-overlap", "--self-ensemble", "--device",
                     "--dtype"):
            assert flag in result.stdout


def test_console_script_exit_code(tmp_path, model_file):
    result = subprocess.run([sys.executable, "-m", "upres.cli", "upscale", str(tmp_path / "none"),
                             "-o", str(tmp_path / "o"), "--model", str(model_file)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "none: no such file or folder" in result.stderr
