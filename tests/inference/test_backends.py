import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import tiny_rrdbnet
from upres.errors import InferenceError
from upres.inference import openvino_backend as ovb
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.io.loading import save_model
from upres.scoring import metrics


def test_openvino_matches_pytorch_fp32_on_a_real_photo(photo):
    """x4plus-anime through OpenVINO (bf16 where the CPU has it) against eager PyTorch fp32."""
    pytest.importorskip("openvino")
    crop = photo[200:264, 180:244].astype(np.float32) / 255
    reference = Upscaler("realesrgan-x4plus-anime", tile=0, dtype="fp32", backend="torch")
    ov = Upscaler("realesrgan-x4plus-anime", tile=0, backend="openvino")
    assert ov.backend.name == "openvino"
    assert ov.notes[0].startswith(f"backend openvino ({ov.backend.dtype} on cpu): as asked")
    ours, ref = ov.upscale_float(crop), reference.upscale_float(crop)
    assert ours.shape == ref.shape == (256, 256, 3)
    assert metrics.psnr_float(np.clip(ours, 0, 1), np.clip(ref, 0, 1)) > 50
    fp32 = Upscaler("realesrgan-x4plus-anime", tile=0, dtype="fp32", backend="openvino")
    assert np.abs(fp32.upscale_float(crop) - ref).max() < 1e-4


def test_auto_prefers_openvino_on_the_cpu_and_says_so(tiny_model):
    pytest.importorskip("openvino")
    up = Upscaler(tiny_model, device="cpu")
    assert up.backend.name == "openvino" and up.notes[0].startswith("backend openvino")


def test_a_model_that_does_not_convert_falls_back_with_one_line(tiny_model, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported operation: aten::weird\nlong trace ...")

    monkeypatch.setattr(ovb, "openvino_available", lambda: True)
    monkeypatch.setattr(ovb, "OpenVinoModel", fail)
    up = Upscaler(tiny_model, device="cpu")
    assert up.backend.name == "torch"
    assert up.notes[0].startswith(f"backend torch ({up.backend.dtype} on cpu): OpenVINO could not "
                                  "convert the model: Unsupported operation: aten::weird; ")
    with pytest.raises(InferenceError, match="OpenVINO could not convert the model"):
        Upscaler(tiny_model, device="cpu", backend="openvino")


def test_bf16_asked_on_a_cpu_without_native_bf16_runs_in_pytorch(tiny_model, monkeypatch):
    """OpenVINO computes fp32 where the CPU has no bf16 (the hint is ignored), so an explicit
    bf16 goes to PyTorch, which honours it; auto stays fp32 on OpenVINO."""
    pytest.importorskip("openvino")
    from upres.inference import backends

    monkeypatch.setattr(backends, "cpu_has_fast_bf16", lambda: False)
    up = Upscaler(tiny_model, device="cpu", dtype="bf16")
    assert up.backend.name == "torch" and up.backend.dtype == "bf16"
    assert "bf16 on a CPU without native bf16" in up.notes[0]
    monkeypatch.setattr("upres.inference.devices.cpu_has_fast_bf16", lambda: False)
    auto = Upscaler(tiny_model, device="cpu")
    assert auto.backend.name == "openvino" and auto.backend.dtype == "fp32"
    assert auto.notes[0].endswith("fp32: this CPU has no native bf16")


def test_without_openvino_auto_uses_pytorch_and_says_why(tiny_model, monkeypatch):
    monkeypatch.setattr(ovb, "openvino_available", lambda: False)
    up = Upscaler(tiny_model, device="cpu")
    assert up.backend.name == "torch" and "OpenVINO is not installed" in up.notes[0]
    assert Upscaler(tiny_model, device="cpu", compile=True).backend.name == "torch"
    with pytest.raises(InferenceError, match="needs the openvino package"):
        Upscaler(tiny_model, device="cpu", backend="openvino")


def test_converted_module_is_cached_and_reused(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    Upscaler(tiny_model, device="cpu", backend="openvino")
    cached = sorted(p.suffix for p in (tmp_path / "upres" / "openvino").glob("mod-*"))
    assert cached == [".bin", ".json", ".xml"]
    monkeypatch.setattr(ovb, "convert", lambda *a: pytest.fail("converted again"))
    again = Upscaler(tiny_model, device="cpu", backend="openvino", dtype="fp32")
    x = np.random.default_rng(0).random((12, 16, 3), dtype=np.float32)
    ref = Upscaler(tiny_model, device="cpu", backend="torch", dtype="fp32").upscale_float(x)
    assert np.abs(again.upscale_float(x) - ref).max() < 1e-4


def _saved_tiny(path, seed=0):
    """A tiny RRDBNet of its own weights (the seed's) saved to ``path``. (Saving the same weights
    twice does not give the same bytes: safetensors orders its metadata at random, so a test
    whose two models differed only by that failed one run in 24.)"""
    model = tiny_rrdbnet(seed=seed)
    save_model(model, path)
    return model


def test_a_weights_file_converted_once_runs_from_the_cache_without_loading_it(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = _saved_tiny(tmp_path / "m.safetensors")
    x = np.random.default_rng(0).random((12, 16, 3), dtype=np.float32)
    ref = Upscaler(model, backend="torch", dtype="fp32").upscale_float(x)
    first = Upscaler(tmp_path / "m.safetensors", backend="openvino", dtype="fp32")
    import upres.io.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a: pytest.fail("loaded the weights again"))
    monkeypatch.setattr(ovb, "convert", lambda *a: pytest.fail("converted again"))
    second = Upscaler(tmp_path / "m.safetensors", backend="openvino", dtype="fp32")
    assert second.descriptor == first.descriptor and second.scale == 4
    for up in (first, second):
        assert np.abs(up.upscale_float(x) - ref).max() < 1e-4
    monkeypatch.undo()
    # new weights under the same name are a new source: converted, never the stale model
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    other = _saved_tiny(tmp_path / "m.safetensors", seed=1)
    ref_other = Upscaler(other, backend="torch", dtype="fp32").upscale_float(x)
    up = Upscaler(tmp_path / "m.safetensors", backend="openvino", dtype="fp32")
    assert np.abs(up.upscale_float(x) - ref_other).max() < 1e-4


def test_a_damaged_cache_entry_is_converted_again(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = _saved_tiny(tmp_path / "m.safetensors")
    Upscaler(tmp_path / "m.safetensors", backend="openvino", dtype="fp32")
    (weights,) = (tmp_path / "cache" / "upres" / "openvino").glob("src-*.bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a convolution
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged OpenVINO cache entry .*do not match"):
        up = Upscaler(tmp_path / "m.safetensors", backend="openvino", dtype="fp32")
    x = np.random.default_rng(0).random((12, 16, 3), dtype=np.float32)
    ref = Upscaler(model, backend="torch", dtype="fp32").upscale_float(x)
    assert np.abs(up.upscale_float(x) - ref).max() < 1e-4


def test_an_entry_of_another_model_copied_under_a_models_key_is_not_used(tmp_path, monkeypatch):
    """The three files of model B's entry copied over model A's (hashes intact): A's sidecar
    names B's key, so A is converted again, with a warning, and runs as A."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "upres" / "openvino"
    a = _saved_tiny(tmp_path / "a.safetensors")
    Upscaler(tmp_path / "a.safetensors", backend="openvino", dtype="fp32")
    (key_a,) = {p.stem for p in folder.glob("src-*.json")}
    _saved_tiny(tmp_path / "b.safetensors", seed=1)
    Upscaler(tmp_path / "b.safetensors", backend="openvino", dtype="fp32")
    (key_b,) = {p.stem for p in folder.glob("src-*.json")} - {key_a}
    for suffix in (".xml", ".bin", ".json"):
        (folder / f"{key_a}{suffix}").write_bytes((folder / f"{key_b}{suffix}").read_bytes())
    with pytest.warns(UserWarning, match=f"{key_a}.json: damaged OpenVINO cache entry .*another model "
                                         f".*'{key_b}'"):
        up = Upscaler(tmp_path / "a.safetensors", backend="openvino", dtype="fp32")
    x = np.random.default_rng(0).random((12, 16, 3), dtype=np.float32)
    ref = Upscaler(a, backend="torch", dtype="fp32").upscale_float(x)
    assert np.abs(up.upscale_float(x) - ref).max() < 1e-4
    assert json.loads((folder / f"{key_a}.json").read_text())["key"] == key_a  # replaced


def test_upscale_from_the_cache_imports_no_pytorch(tmp_path):
    """The start-up a small image pays: with the conversion cached, ``upres upscale`` on a CPU
    reads the IR and never imports PyTorch (nor builds the network)."""
    pytest.importorskip("openvino")
    _saved_tiny(tmp_path / "m.safetensors")
    images.write_image(tmp_path / "in.png", np.zeros((8, 8, 3), np.uint8))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    probe = ("import sys, runpy; sys.argv = ['upres', 'upscale', '--model', sys.argv[1], sys.argv[2],"
             " '-o', sys.argv[3], '--overwrite', '--quiet']\n"
             "try:\n    runpy.run_module('upres.cli', run_name='__main__')\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "print('torch' in sys.modules)")
    args = [sys.executable, "-c", probe, str(tmp_path / "m.safetensors"), str(tmp_path / "in.png"),
            str(tmp_path / "out")]
    runs = [subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert runs[0].stdout.split()[-1] == "True"  # the first run converts with PyTorch
    assert runs[1].stdout.split()[-1] == "False"
    assert images.read_image(tmp_path / "out" / "in.png").shape == (32, 32, 3)


def test_openvino_serves_self_ensemble_and_tiles(photo):
    pytest.importorskip("openvino")
    model = tiny_rrdbnet()
    img = photo[:48, :64].astype(np.float32) / 255
    kw = dict(dtype="fp32", self_ensemble="median", tile=32, tile_overlap=8)
    ov = Upscaler(model, backend="openvino", **kw).upscale_float(img)
    ref = Upscaler(model, backend="torch", **kw).upscale_float(img)
    np.testing.assert_allclose(ov, ref, atol=1e-4)
    with torch.no_grad():
        assert model.conv_first.weight.requires_grad  # the wrapped module is left as it was


def test_conversion_sends_no_telemetry():
    """openvino.convert_model reports usage to Google Analytics unless the user opted out; even
    where the user imported openvino (and its telemetry) first, upres's conversions send nothing."""
    pytest.importorskip("openvino")
    probe = (
        "import openvino_telemetry, openvino\n"
        "calls = []\n"
        "for n in ('send_event', 'start_session', 'end_session', 'force_shutdown', 'send_error'):\n"
        "    setattr(openvino_telemetry.Telemetry, n, lambda *a, n=n, **k: calls.append(n))\n"
        "from upres.models import RRDBNet\n"
        "from upres.inference.upscaler import Upscaler\n"
        "model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)\n"
        "up = Upscaler(model, device='cpu', backend='openvino', cache_converted=False)\n"
        "assert up.backend.name == 'openvino'\n"
        "print(len(calls))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "0"


def test_importing_openvino_through_upres_blocks_its_telemetry():
    pytest.importorskip("openvino")
    probe = ("import sys\nfrom upres.inference import openvino_backend as ovb\nov = ovb._ov()\n"
             "ov.Core()\nprint(sys.modules.get('openvino_telemetry', 'absent'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "None"  # blocked: OpenVINO uses its own stub


def test_conversions_kept_in_the_folder_asked_for_not_the_user_cache(tmp_path, monkeypatch):
    """``upres auto`` keeps its trained models' conversions in its run folder."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _saved_tiny(tmp_path / "m.safetensors")
    Upscaler(tmp_path / "m.safetensors", backend="openvino", dtype="fp32", convert_cache=tmp_path / "run")
    assert sorted(p.suffix for p in (tmp_path / "run").glob("src-*")) == [".bin", ".json", ".xml"]
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(ovb, "convert", lambda *a: pytest.fail("converted again"))
    Upscaler(tmp_path / "m.safetensors", backend="openvino", dtype="fp32", convert_cache=tmp_path / "run")
