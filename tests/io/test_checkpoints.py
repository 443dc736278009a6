import os
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers import tiny_rrdbnet
from upres.errors import WeightsError
from upres.io.loading import convert, load_model, load_weights, save_model
from upres.io.weights import load_into
from upres.models import RRDBNet
from upres.models.rrdbnet import infer_hparams


def test_basicsr_checkpoint_loads_strictly_with_prefix(tmp_path, tiny_model):
    sd = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    other = {k: torch.zeros_like(v) for k, v in tiny_model.state_dict().items()}
    path = tmp_path / "net_g.pth"
    torch.save({"params": other, "params_ema": sd}, path)
    model = load_model(path)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k  # params_ema chosen, prefix stripped


def test_params_then_bare_state_dict(tmp_path, tiny_model):
    sd = tiny_model.state_dict()
    torch.save({"params": sd}, tmp_path / "a.pth")
    torch.save(sd, tmp_path / "b.pth")
    for name in ("a.pth", "b.pth"):
        loaded = load_weights(tmp_path / name)
        assert loaded.state_dict.keys() == sd.keys()


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params_ema": Evil()}, f, protocol=2)
    with pytest.raises(WeightsError, match=r"evil\.pth: refused to load"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("kw", [dict(scale=4), dict(scale=2), dict(scale=1),
                                dict(scale=4, num_feat=12, num_grow_ch=6, num_block=3),
                                dict(scale=2, num_in_ch=1, num_out_ch=1)])
def test_hparams_inferred_from_shapes(kw):
    model = tiny_rrdbnet(**kw)
    assert infer_hparams(model.state_dict()) == model.hparams


def test_mismatch_names_missing_unexpected_and_misshaped(tmp_path):
    sd = tiny_rrdbnet().state_dict()
    sd.pop("conv_hr.bias")
    sd["extra.weight"] = torch.zeros(1)
    model = tiny_rrdbnet(num_feat=8)
    sd["conv_last.weight"] = torch.zeros(3, 9, 3, 3)
    with pytest.raises(WeightsError) as err:
        load_into(model, sd, "x.pth")
    msg = str(err.value)
    assert "missing keys: conv_hr.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "conv_last.weight: file (3, 9, 3, 3) vs model (3, 8, 3, 3)" in msg


def test_safetensors_round_trip_keeps_metadata(tmp_path):
    model = tiny_rrdbnet(scale=2, num_feat=12)
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "RRDBNet" and meta["scale"] == "2" and meta["format"] == "upres"
    again = load_model(path)
    assert again.hparams == model.hparams
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_basicsr_pth_export_is_plain_params_ema(tmp_path):
    model = tiny_rrdbnet()
    path = tmp_path / "m.pth"
    save_model(model, path)
    raw = torch.load(path, weights_only=True)  # what Real-ESRGAN / spandrel do
    assert list(raw) == ["params_ema"]
    assert list(raw["params_ema"]) == list(model.state_dict())  # BasicSR's order and names
    for key, value in model.state_dict().items():
        assert torch.equal(raw["params_ema"][key], value), key
    torch.manual_seed(5)
    fresh = RRDBNet(**model.hparams).eval()
    fresh.load_state_dict(raw["params_ema"], strict=True)
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_convert_between_formats(tmp_path):
    model = tiny_rrdbnet()
    save_model(model, tmp_path / "a.pth")
    convert(tmp_path / "a.pth", tmp_path / "b.safetensors")
    convert(tmp_path / "b.safetensors", tmp_path / "c.pth")
    c = load_weights(tmp_path / "c.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(c.state_dict[k], v)
    with pytest.raises(WeightsError, match="cannot save to '.tflite'"):
        convert(tmp_path / "a.pth", tmp_path / "d.tflite")


@pytest.mark.parametrize("scale", [4, 2])
def test_onnx_export_runs_in_onnxruntime_at_other_sizes(tmp_path, scale):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tiny_rrdbnet(scale=scale)
    save_model(model, tmp_path / "m.safetensors")
    convert(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).random((3, 3, 20, 28), dtype=np.float32)
    (y,) = session.run(None, {"input": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape == (3, 3, 20 * scale, 28 * scale)
    assert np.abs(y - ref).max() < 1e-4


def test_missing_and_garbage_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match="nope.pth: no such file"):
        load_weights(tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="bad.safetensors: not a readable safetensors"):
        load_weights(bad)


def test_bad_hparams_metadata_names_the_file_and_key(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in tiny_rrdbnet().state_dict().items()}
    for name, meta, match in [
        ("json", {"arch": "RRDBNet", "hparams": "{not json"}, "hparams' is not valid JSON"),
        ("list", {"arch": "RRDBNet", "hparams": "[1, 2]"}, "hparams' must be a JSON object"),
        ("arch", {"arch": "NoSuchNet", "hparams": "{}"}, "unknown architecture 'NoSuchNet'"),
        ("value", {"arch": "RRDBNet", "hparams": '{"scale": 3}'},
         r"the metadata does not match the tensors \(scale: metadata 3, tensors 4\)"),
    ]:
        path = tmp_path / f"{name}.safetensors"
        save_file(sd, str(path), metadata=meta)
        with pytest.raises(WeightsError, match=rf"{name}\.safetensors: .*{match}"):
            load_model(path)
