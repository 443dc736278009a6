"""int8 through OpenVINO and NNCF: a tiny model quantized on crops of images, checked against
fp32; the quantization cached by model and calibration set; a CPU without int8 dot products
keeps bf16/fp32 and says so; what cannot run int8 is refused by name."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import nearest_rrdbnet, photo
from upres.errors import InferenceError
from upres.inference import int8
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.io.loading import save_model
from upres.scoring import metrics

pytest.importorskip("openvino")
pytest.importorskip("nncf")
TOLERANCE_DB = 25.0  # int8's output against fp32's (float PSNR, peak 1): this perturbed tiny model
# gave 28.7 dB; a real model's loss on test pairs is in benchmarks/bench_int8.py


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(int8, "cpu_int8_flags", lambda: ["avx512_vnni"])  # as on this CPU
    model_path = tmp_path / "m.safetensors"
    model = nearest_rrdbnet()  # a sensible start (nearest-neighbour x4), every weight perturbed
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    save_model(model, model_path)
    lr = [tmp_path / f"lr{k}.png" for k in range(2)]
    for k, path in enumerate(lr):
        images.write_image(path, photo("astronaut")[k * 40:k * 40 + 32, 100:140])
    return model_path, lr, tmp_path / "ir"


def _int8(model_path, files, folder, **kw) -> Upscaler:
    return Upscaler(model_path, backend="openvino", dtype="int8", calibrate=tuple(files),
                    convert_cache=folder, tile=0, **kw)


def test_a_tiny_model_quantized_on_its_images_stays_close_to_fp32(setup):
    model_path, lr, folder = setup
    up = _int8(model_path, lr, folder)
    assert up.backend.dtype == "int8" and "int8 as asked" in up.notes[0]
    x = images.to_float(images.read_image(lr[0]))
    ref = Upscaler(model_path, backend="torch", dtype="fp32", tile=0).upscale_float(x)
    out = up.upscale_float(x)
    assert np.abs(out - ref).max() > 1e-6  # quantized
    assert metrics.psnr_float(np.clip(out, 0, 1), np.clip(ref, 0, 1)) >= TOLERANCE_DB
    (xml,) = folder.glob("int8-*.xml")
    assert "FakeQuantize" in xml.read_text()  # the convolutions run quantized
    assert list(folder.glob("int8-*.json"))


def test_the_quantization_is_cached_by_model_and_calibration_set(setup, monkeypatch):
    model_path, lr, folder = setup
    first = _int8(model_path, lr, folder)
    x = images.to_float(images.read_image(lr[1]))
    real = int8.quantize
    monkeypatch.setattr(int8, "quantize", lambda *a: pytest.fail("quantized again"))
    again = _int8(model_path, lr, folder)
    np.testing.assert_allclose(again.upscale_float(x), first.upscale_float(x), atol=1e-6)
    monkeypatch.setattr(int8, "quantize", lambda *a: calls.append(1) or real(*a))
    calls = []
    _int8(model_path, lr[:1], folder)  # another calibration set: quantized again
    assert calls == [1] and len(list(folder.glob("int8-*.xml"))) == 2


def test_a_cached_quantization_runs_without_importing_nncf(setup):
    """Importing NNCF took 1.8 s of a 10.2 s int8 upscale of x4plus whose quantized model was
    cached: a cached model needs OpenVINO only."""
    model_path, lr, folder = setup
    _int8(model_path, lr, folder)
    script = ("import sys\nfrom upres.inference import int8\n"
              "int8.cpu_int8_flags = lambda: ['avx512_vnni']\n"
              "from upres.inference.upscaler import Upscaler\n"
              f"up = Upscaler({str(model_path)!r}, backend='openvino', dtype='int8', "
              f"calibrate={tuple(map(str, lr))!r}, convert_cache={str(folder)!r}, tile=0)\n"
              "print(up.backend.dtype, 'nncf' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["int8", "False"]


def test_accuracy_control_keeps_int8_within_its_drop_on_the_pairs(setup, tmp_path):
    model_path, lr, folder = setup
    hr = [tmp_path / f"hr{k}.png" for k in range(2)]
    for path, lr_path in zip(hr, lr):
        small = images.read_image(lr_path)
        images.write_image(path, metrics.bicubic_upscale(small, 4))
    pairs = tuple(zip(lr, hr))
    up = _int8(model_path, lr, folder, calibrate_pairs=pairs)
    fp32 = Upscaler(model_path, backend="openvino", dtype="fp32", tile=0, convert_cache=folder)
    scores = [[metrics.psnr(u.upscale_array(images.read_image(a)), images.read_image(b), 4)
               for a, b in pairs] for u in (up, fp32)]
    assert np.mean(scores[0]) >= np.mean(scores[1]) - int8.MAX_DROP_DB - 1e-6


def test_a_cpu_without_int8_dot_products_keeps_bf16_or_fp32_and_says_so(setup, monkeypatch):
    model_path, lr, folder = setup
    monkeypatch.setattr(int8, "cpu_int8_flags", lambda: [])
    with pytest.warns(UserWarning, match="int8: this CPU has no int8 dot products .* using bf16 or fp32"):
        up = _int8(model_path, lr, folder)
    assert up.backend.dtype in ("bf16", "fp32") and not list(folder.glob("int8-*"))


def test_what_cannot_run_int8_is_refused_by_name(setup):
    model_path, lr, folder = setup
    with pytest.raises(InferenceError, match="int8 runs through OpenVINO; drop --backend torch"):
        Upscaler(model_path, backend="torch", dtype="int8", calibrate=tuple(lr))
    with pytest.raises(InferenceError, match="int8 needs images to calibrate on: give --calibrate DIR"):
        Upscaler(model_path, backend="openvino", dtype="int8")


def test_upscale_precision_int8_calibrates_on_the_images_it_upscales(setup, tmp_path, monkeypatch, capsys):
    from upres.cli import main

    model_path, lr, folder = setup
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calibrated = []
    real = int8.calibration_set
    monkeypatch.setattr(int8, "calibration_set", lambda files, *a, **k: calibrated.append(files) or
                        real(files, *a, **k))
    out = tmp_path / "out"
    assert main(["upscale", *map(str, lr), "-o", str(out), "--model", str(model_path),
                 "--precision", "int8"]) == 0
    assert "backend openvino (int8 on cpu)" in capsys.readouterr().err
    assert calibrated == [lr] and sorted(p.name for p in out.iterdir()) == ["lr0.png", "lr1.png"]


def test_a_model_openvino_does_not_convert_runs_as_auto_picks_with_a_warning(setup, monkeypatch):
    from upres.inference import backends

    model_path, lr, folder = setup
    monkeypatch.setattr(backends, "openvino_refusal", lambda *a: "OpenVINO does not convert X: a test")
    with pytest.warns(UserWarning, match="int8: OpenVINO does not convert X: a test; using bf16 or fp32"):
        up = Upscaler(model_path, dtype="int8", calibrate=tuple(lr), convert_cache=folder, tile=0)
    assert up.backend.name == "torch" and up.backend.dtype in ("bf16", "fp32")
