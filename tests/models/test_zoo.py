"""The spandrel architectures: every curated family builds from config, trains, saves, reloads
strictly and exports a .pth that spandrel itself loads back as the same network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import assert_learns
from upres.errors import ConfigError, WeightsError
from upres.inference.upscaler import Upscaler
from upres.io.loading import load_model, load_weights, save_model
from upres.models import build_model, describe, registry
from upres.training.config import load_config

spandrel = pytest.importorskip("spandrel")

OWN = {"RRDBNet", "IMDN", "RFDN", "RLFN", "BSRN", "SAFMNPP", "SAFMN23", "SPANFused"}  # upres's own modules
# (tests/models/test_rrdbnet.py, test_imdn.py, test_small_psnr_families.py)

# One tiny configuration per curated family (CPU, well under a second per training step).
TINY = {
    "SwinIR": {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4, "img_size": 16},
    "HAT": {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4, "img_size": 16,
            "compress_ratio": 3, "squeeze_factor": 4, "num_feat": 16},
    "DAT": {"embed_dim": 16, "depth": [1], "num_heads": [2], "split_size": [2, 4],
            "expansion_factor": 2.0, "img_size": 16},
    "ATD": {"embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4, "img_size": 16,
            "category_size": 256, "num_tokens": 8, "reducted_dim": 4, "convffn_kernel_size": 3,
            "mlp_ratio": 1.0},
    "DRCT": {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4, "gc": 8,
             "img_size": 16},
    "SPAN": {"feature_channels": 8},
    "RealPLKSR": {"dim": 16, "n_blocks": 1, "kernel_size": 5},
    "PLKSR": {"dim": 16, "n_blocks": 1, "kernel_size": 5},
    "OmniSR": {"num_feat": 16, "block_num": 1, "res_num": 1, "window_size": 4},
    "SAFMN": {"dim": 8, "n_blocks": 1},
    "RCAN": {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 8, "reduction": 4, "norm": False},
    "Compact": {"num_feat": 8, "num_conv": 2},
    "CRAFT": {"embed_dim": 12, "depths": [1], "num_heads": [2]},  # (window and splits: spandrel's)
}


def tiny(arch: str, seed: int = 0, scale: int = 4) -> torch.nn.Module:
    cfg = load_config(None, [f"model.arch={arch}", f"model.scale={scale}",
                             f"model.params={json.dumps(TINY[arch])}"])
    torch.manual_seed(seed)
    return build_model(cfg.model.arch, cfg.model.hparams())


def test_every_curated_family_has_a_tiny_test_config_and_presets():
    spandrel_families = {name for name, e in registry.ARCHITECTURES.items() if name not in OWN}
    assert set(TINY) == spandrel_families
    assert {arch for arch, _ in registry.presets().values()} == set(registry.ARCHITECTURES)


def test_param_tables_match_the_installed_spandrel():
    """params.json (what configs are validated against) is every registered family's constructor
    signature; after a spandrel upgrade, regenerate it with ``python -m upres.models.registry``."""
    for arch in registry.ARCHITECTURES:
        assert registry.param_table(arch) == registry.live_param_table(arch), arch


@pytest.mark.parametrize("arch", sorted(TINY))
def test_family_trains_saves_reloads_and_exports_for_spandrel(arch, tmp_path):
    model = tiny(arch).train()
    assert_learns(model)
    model.eval()
    probe = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        expect = model(probe)
    assert expect.shape == (1, 3, 80, 96)

    save_model(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")  # strict, from the recorded hyperparameters
    assert type(again) is type(model) and describe(again).arch == arch
    save_model(model, tmp_path / "m.pth")
    theirs = spandrel.ModelLoader().load_from_file(str(tmp_path / "m.pth"))
    assert registry.family_of(theirs.model).name == arch and theirs.scale == 4  # (RealPLKSR: id PLKSR)
    with torch.no_grad():
        torch.testing.assert_close(again(probe), expect, rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs.model.eval()(probe), expect, rtol=0, atol=1e-5)


def test_official_layout_checkpoint_is_detected_with_its_hyperparameters(tmp_path):
    """A randomly initialised spandrel module saved as the papers' repositories do."""
    from spandrel.architectures.HAT import HAT

    torch.manual_seed(1)
    official = HAT(upscale=4, **TINY["HAT"], img_range=1.0, upsampler="pixelshuffle").eval()
    torch.save({"params_ema": official.state_dict()}, tmp_path / "HAT_SRx4.pth")
    weights = load_weights(tmp_path / "HAT_SRx4.pth")
    assert weights.arch == "HAT" and weights.hparams["embed_dim"] == 12
    assert weights.hparams["window_size"] == 4 and weights.hparams["upscale"] == 4
    model = load_model(tmp_path / "HAT_SRx4.pth")
    probe = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(probe), official(probe), rtol=0, atol=1e-6)
    # a config with different hyperparameters refuses it strictly, naming them
    cfg = load_config(None, ["model.arch=HAT", f"model.params={json.dumps(TINY['HAT'] | {'embed_dim': 24})}",
                             f"init.source={tmp_path / 'HAT_SRx4.pth'}"])
    from upres.io.weights import load_matching

    with pytest.raises(WeightsError, match="embed_dim: weights 12 vs model 24"):
        load_matching(build_model("HAT", cfg.model.hparams()), weights, strict=True)


def test_window_transformer_tiles_match_the_whole_image(photo):
    """HAT with windows of 4: tiles sharing the default overlap give the whole-image output."""
    model = tiny("HAT").eval()
    desc = describe(model)
    assert desc.size_multiple == 4 and desc.min_size == 16 and "fp16" not in desc.dtypes
    img = photo[:200, :420].astype(np.float32) / 255
    whole = Upscaler(model, tile=0, dtype="fp32", backend="torch").upscale_float(img)
    tiled_up = Upscaler(model, tile=320, dtype="fp32", backend="torch")
    tiled = tiled_up.upscale_float(img)
    assert tiled_up.engine.last_plan.tiles == 2
    assert whole.shape == tiled.shape == (800, 1680, 3)
    assert np.abs(tiled - whole).max() < 1 / 255
    # odd sizes are padded to whole windows and cropped back
    odd = Upscaler(model, tile=0, dtype="fp32", backend="torch").upscale_float(img[:13, :21])
    assert odd.shape == (52, 84, 3)


def test_any_spandrel_sr_model_runs_and_non_sr_models_are_refused(tmp_path):
    from spandrel.architectures.DnCNN import DnCNN
    from spandrel.architectures.SwiftSRGAN import SwiftSRGAN

    torch.manual_seed(0)
    torch.save(SwiftSRGAN(upscale_factor=2).state_dict(), tmp_path / "swift.pth")
    up = Upscaler(tmp_path / "swift.pth", backend="torch", dtype="fp32", tile=0)
    assert up.descriptor.arch == "SwiftSRGAN" and up.scale == 2
    out = up.upscale_array(np.full((10, 12, 3), 128, np.uint8))
    assert out.shape == (20, 24, 3)
    torch.save(DnCNN().state_dict(), tmp_path / "dncnn.pth")  # restoration, scale 1: runs
    assert Upscaler(tmp_path / "dncnn.pth", backend="torch").scale == 1
    from spandrel.architectures.GFPGAN import GFPGAN

    with torch.device("meta"):
        face = GFPGAN()
    torch.save({k: torch.zeros(v.shape) for k, v in face.state_dict().items()}, tmp_path / "face.pth")
    with pytest.raises(WeightsError, match=r"face.pth: GFPGAN is a FaceSR model, not super-resolution"):
        load_model(tmp_path / "face.pth")


def test_config_validates_family_hyperparameters():
    with pytest.raises(ConfigError, match=r"unknown HAT hyperparameter; did you mean 'embed_dim'"):
        load_config(None, ["model.arch=HAT", "model.params={embed_dimm: 60}"])
    with pytest.raises(ConfigError, match=r"model.params.depths: expected list\[int\]"):
        load_config(None, ["model.arch=HAT", "model.params={depths: six}"])
    with pytest.raises(ConfigError, match="model.gated: unknown key .*and the HAT arguments"):
        load_config(None, ["model.arch=HAT", "model.gated=true"])  # an RRDBNet argument
    # a family's arguments may be written as model keys: they move into model.params
    shorthand = load_config(None, ["model.arch=HAT", "model.embed_dim=24"])
    assert shorthand.model.params == {"embed_dim": 24}
    with pytest.raises(ConfigError, match="the scale is model.scale"):
        load_config(None, ["model.arch=HAT", "model.params={upscale: 2}"])
    with pytest.raises(ConfigError, match="model.preset: hat-s is a HAT, not a SwinIR"):
        load_config(None, ["model.arch=SwinIR", "model.preset=hat-s"])
    cfg = load_config(None, ["model.preset=hat-s"])
    assert cfg.model.arch == "HAT" and cfg.model.hparams()["compress_ratio"] == 24


# Published parameter counts (x4, in millions) of the presets that state one.
PUBLISHED = {"swinir-light": 0.897, "swinir-m": 11.9, "hat-s": 9.6, "hat-m": 20.8, "hat-l": 40.8,
             "dat-light": 0.573, "dat": 14.8, "dat-s": 11.2, "rcan": 15.6, "safmn": 0.24,
             "craft": 0.753}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_presets_have_the_published_sizes(preset):
    cfg = load_config(None, [f"model.preset={preset}"])
    try:
        with torch.device("meta"):
            model = build_model(cfg.model.arch, cfg.model.hparams())
    except Exception:  # transformers compute their drop-path schedule at build time
        model = build_model(cfg.model.arch, cfg.model.hparams())
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PUBLISHED[preset], rel=0.05)


def test_two_architecture_ensemble_predicts_a_submission(tmp_path, photo):
    """RRDBNet + SPAN with fitted coefficients, both through the upscale path (OpenVINO where
    they convert), validated and written as one submission."""
    from helpers import tiny_rrdbnet, write_pair
    from upres.inference.submission import predict_folder as predict
    from upres.io import images

    save_model(tiny_rrdbnet(seed=1), tmp_path / "rrdb.safetensors")
    save_model(tiny("SPAN", seed=2), tmp_path / "span.safetensors")
    for i in range(2):
        write_pair(tmp_path / "val", ".", f"v{i}", photo[100 + 40 * i:164 + 40 * i, 200:264])
    images.write_image(tmp_path / "test" / "a.png", photo[:20, :28])
    models = [tmp_path / "rrdb.safetensors", tmp_path / "span.safetensors"]
    notes = []
    result = predict(models, tmp_path / "test", tmp_path / "sub", weights="fit",
                     val_dir=tmp_path / "val", progress=False, on_note=notes.append)
    assert images.read_image(tmp_path / "sub" / "a.png").shape == (80, 112, 3)
    assert sum(result.weights) == pytest.approx(1) and len(result.weights) == 2
    assert set(result.val["models"]) == {"rrdb", "span"}
    assert [n.split(":")[0] for n in notes] == ["rrdb", "span"]


def test_train_a_preset_for_a_time_budget(tmp_path):
    """``upres train PRESET`` resolves a preset name; ``train.time_budget`` ends the run at the
    budget with a final validation and export."""
    from helpers import make_competition
    from upres.cli import main

    data = make_competition(tmp_path / "data", train_size=96, val_size=48)
    run = tmp_path / "run"
    code = main(["train", "span", "--data", str(data), "--run-dir", str(run), "--quiet",
                 "model.params={feature_channels: 8}", "data.crop=32", "train.batch_size=2",
                 "train.iterations=100000", "train.time_budget=4s", "train.val_every=100000",
                 "train.precision=fp32", "data.workers=0", "val.tile=0"])
    assert code == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val_psnr" in r]
    assert len(vals) == 1 and 0 < vals[0]["step"] < 100000  # stopped by the budget, validated
    assert vals[0]["train_seconds"] >= 4
    assert next(r["params"] for r in records if "params" in r) == sum(
        p.numel() for p in load_model(run / "last.safetensors").parameters())
    assert describe(load_model(run / "last.pth")).arch == "SPAN"


def test_backends_a_family_does_not_support_are_refused_before_trying(tmp_path):
    """OpenVINO's converter and torch.export crash (segfault) on some families, which no
    handler can catch: upres knows them and does not try."""
    dat = tiny("DAT").eval()
    up = Upscaler(dat, device="cpu")  # auto: PyTorch, and says why
    assert up.backend.name == "torch"
    assert "OpenVINO does not convert DAT: OpenVINO's converter crashes" in up.notes[0]
    with pytest.raises(Exception, match="backend openvino: OpenVINO does not convert DAT"):
        Upscaler(dat, device="cpu", backend="openvino")
    with pytest.raises(WeightsError, match=r"m.onnx: SPAN does not export to ONNX: torch.export crashes"):
        save_model(tiny("SPAN"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_converted_window_transformer_matches_pytorch():
    pytest.importorskip("openvino")
    model = tiny("HAT").eval()
    ov = Upscaler(model, backend="openvino", dtype="fp32", tile=0, cache_converted=False)
    for shape in ((24, 40), (100, 132), (13, 21)):  # smaller and larger than the traced example
        x = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
        ref = Upscaler(model, backend="torch", dtype="fp32", tile=0).upscale_float(x)
        assert np.abs(ov.upscale_float(x) - ref).max() < 1e-4


def test_a_family_config_dumps_and_loads_back(tmp_path):
    from upres.training.config import dump_config

    cfg = load_config(None, ["model.preset=hat-s", "model.params={depths: [2, 2]}"])
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    again = load_config(tmp_path / "c.yaml")
    assert again.model.hparams() == cfg.model.hparams() and "num_feat" not in dump_config(cfg)


def test_an_official_checkpoint_fine_tunes(tmp_path):
    """``init.source`` with a paper-layout HAT checkpoint: detected, loaded strictly, trained."""
    from spandrel.architectures.HAT import HAT

    from helpers import make_competition
    from upres.training.loop import train

    torch.manual_seed(1)
    official = HAT(**registry.hyperparameters("HAT", 4, None, TINY["HAT"]))
    torch.save({"params_ema": official.state_dict()}, tmp_path / "HAT_SRx4.pth")
    data = make_competition(tmp_path / "data", train_size=96, val_size=48)
    cfg = load_config(None, ["model.arch=HAT", f"model.params={json.dumps(TINY['HAT'])}",
                             f"init.source={tmp_path / 'HAT_SRx4.pth'}", f"data.root={data}",
                             "data.crop=32", "data.workers=0", "train.batch_size=2",
                             "train.iterations=3", "train.val_every=3", "val.tile=0"])
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.init_report["skipped"] == [] and len(result.init_report["loaded"]) > 10
    tuned = load_model(tmp_path / "run" / "last.safetensors")
    changed = [k for k, v in tuned.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, official.state_dict()[k])]
    assert changed  # the weights moved from the checkpoint's


def test_onnx_export_of_a_family_that_exports_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny("Compact").eval()
    save_model(model, tmp_path / "c.onnx")
    x = np.random.default_rng(0).random((1, 3, 12, 20), dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "c.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_auto_dtype_falls_back_where_a_family_is_not_safe():
    from upres.inference.devices import pick_dtype

    assert pick_dtype("auto", "cuda", ("fp32", "bf16", "fp16"), lambda: True) == "fp16"
    assert pick_dtype("auto", "cuda", ("fp32", "bf16"), lambda: True) == "bf16"  # HAT, SwinIR
    assert pick_dtype("auto", "cuda:1", ("fp32",), lambda: True) == "fp32"
    assert pick_dtype("auto", "cpu", ("fp32", "bf16"), lambda: False) == "fp32"
    assert "fp16" not in describe(tiny("SwinIR")).dtypes
