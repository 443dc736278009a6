import numpy as np
import pytest
import torch

from helpers import tiny_rrdbnet
from upres.errors import InferenceError
from upres.inference import openvino_backend as ovb
from upres.inference.upscaler import Upscaler
from upres.scoring import metrics


def test_openvino_matches_pytorch_fp32_on_a_real_photo(photo):
    """x4plus-anime through OpenVINO (bf16 where the CPU has it) against eager PyTorch fp32."""
    pytest.importorskip("openvino")
    crop = photo[200:264, 180:244].astype(np.float32) / 255
    reference = Upscaler("realesrgan-x4plus-anime", tile=0, dtype="fp32", backend="torch")
    ov = Upscaler("realesrgan-x4plus-anime", tile=0, backend="openvino")
    assert ov.backend == "openvino" and ov.notes == [f"backend openvino ({ov.dtype_name})"]
    ours, ref = ov.upscale_float(crop), reference.upscale_float(crop)
    assert ours.shape == ref.shape == (256, 256, 3)
    assert metrics.psnr_float(np.clip(ours, 0, 1), np.clip(ref, 0, 1)) > 50
    fp32 = Upscaler("realesrgan-x4plus-anime", tile=0, dtype="fp32", backend="openvino")
    assert np.abs(fp32.upscale_float(crop) - ref).max() < 1e-4


def test_auto_prefers_openvino_on_the_cpu_and_says_so(tiny_model):
    pytest.importorskip("openvino")
    up = Upscaler(tiny_model, device="cpu")
    assert up.backend == "openvino" and up.notes[0].startswith("backend openvino")


def test_a_model_that_does_not_convert_falls_back_with_one_line(tiny_model, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Unsupported operation: aten::weird\nlong trace ...")

    monkeypatch.setattr(ovb, "openvino_available", lambda: True)
    monkeypatch.setattr(ovb, "OpenVinoModel", fail)
    up = Upscaler(tiny_model, device="cpu")
    assert up.backend == "torch"
    assert up.notes == [f"backend torch ({up.dtype_name}; OpenVINO could not convert the model: "
                        "Unsupported operation: aten::weird)"]
    with pytest.raises(InferenceError, match="OpenVINO could not convert the model"):
        Upscaler(tiny_model, device="cpu", backend="openvino")


def test_without_openvino_auto_uses_pytorch_and_says_why(tiny_model, monkeypatch):
    monkeypatch.setattr(ovb, "openvino_available", lambda: False)
    up = Upscaler(tiny_model, device="cpu")
    assert up.backend == "torch" and "OpenVINO is not installed" in up.notes[0]
    assert Upscaler(tiny_model, device="cpu", compile=True).backend == "torch"
    with pytest.raises(InferenceError, match="needs the openvino package"):
        Upscaler(tiny_model, device="cpu", backend="openvino")


def test_converted_model_is_cached_and_reused(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    Upscaler(tiny_model, device="cpu", backend="openvino")
    cached = sorted(p.name for p in (tmp_path / "upres" / "openvino").glob("RRDBNet-*"))
    assert len(cached) == 2 and cached[0].endswith(".bin") and cached[1].endswith(".xml")
    monkeypatch.setattr(ovb, "_convert", lambda *a: pytest.fail("converted again"))
    again = Upscaler(tiny_model, device="cpu", backend="openvino", dtype="fp32")
    x = np.random.default_rng(0).random((12, 16, 3), dtype=np.float32)
    ref = Upscaler(tiny_model, device="cpu", backend="torch", dtype="fp32").upscale_float(x)
    assert np.abs(again.upscale_float(x) - ref).max() < 1e-4


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
