"""Fingerprints against truth: kernels recovered from pairs made with known kernels, recipes
regrouped from a set with recorded recipes, the blind classifier beside chance, back-projection
reducing the LR inconsistency, and the commands' files and errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from helpers import hr_folder, photo
from upres.cli import main
from upres.degradation import blind, kernels, recipes
from upres.degradation.fingerprint import (
    GRID_CAP,
    TOLERANCE,
    Fingerprint,
    Group,
    PairStats,
    cluster,
    distances,
    synthesize,
)
from upres.degradation.folders import fingerprint_data, label_lr
from upres.degradation.refine import back_project
from upres.errors import DataError
from upres.inference.ensemble import REFINE_GROUP_LOSS_DB
from upres.io import images


def test_area_recipe_is_the_block_mean():
    hr = photo("coffee")[:64, :96]
    lr = recipes.degrade(hr, recipes.parse_recipe("area"), 4)
    expected = hr.reshape(16, 4, 24, 4, 3).astype(float).mean((1, 3))
    assert np.abs(lr.astype(float) - expected).max() <= 1


def test_recipe_names_are_checked():
    assert recipes.parse_recipe("jpeg75").jpeg == 75
    assert recipes.parse_recipe("blur1.5").blur == 1.5
    with pytest.raises(DataError, match="unknown recipe 'gauss'"):
        recipes.parse_recipe("gauss")
    with pytest.raises(DataError, match="quality must be 1..100"):
        recipes.parse_recipe("jpeg0")


def test_apply_kernel_matches_an_explicit_sum():
    rng = np.random.default_rng(0)
    hr = rng.random((40, 32, 3)).astype(np.float32)
    k = rng.random((16, 16)).astype(np.float32)
    out = kernels.apply_kernel(hr, k, 4)
    start = kernels.window_start(4)
    padded = np.pad(hr, ((16, 16), (16, 16), (0, 0)), mode="reflect")
    for i, j in ((0, 0), (3, 5), (9, 7)):
        y, x = i * 4 + start + 16, j * 4 + start + 16
        expected = (padded[y:y + 16, x:x + 16] * k[:, :, None]).sum((0, 1))
        np.testing.assert_allclose(out[i, j], expected, rtol=1e-5)


def test_fit_recovers_a_known_kernel_and_noise():
    hr = photo("astronaut")[100:420, 100:420]
    g = np.exp(-0.5 * ((np.arange(16) - 7.5 - 0.5) / 1.8) ** 2)  # shifted by half an HR pixel
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    clean = synthesize(hr, kernel, {"kind": "none"}, 4, 0)
    fit = kernels.fit_pair(clean, hr, 4)
    assert np.abs(fit.kernel - kernel).max() < 0.01
    assert fit.offset[0] == pytest.approx(0.5, abs=0.1) and fit.offset[1] == pytest.approx(0.5, abs=0.1)
    assert fit.noise < 0.4  # 8-bit rounding only
    noisy = kernels.fit_pair(synthesize(hr, kernel, {"kind": "noise", "level": 6.0}, 4, 1), hr, 4)
    assert noisy.noise == pytest.approx(6.0 * 0.668, rel=0.1)  # luma of independent RGB noise
    jpeg = kernels.fit_pair(synthesize(hr, kernel, {"kind": "jpeg", "level": 40}, 4, 0), hr, 4)
    assert jpeg.blockiness > 1.1 and abs(noisy.blockiness - 1) < 0.1


def test_jpeg_grid_evidence_keeps_jpeg_apart_from_noise_that_looks_alike():
    hr = photo("astronaut")[100:420, 100:420]
    g = np.exp(-0.5 * ((np.arange(16) - 7.5) / 1.8) ** 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    clean, noisy, jpeg = (kernels.fit_pair(synthesize(hr, kernel, post, 4, 0), hr, 4) for post in (
        {"kind": "none"}, {"kind": "noise", "level": 8.0}, {"kind": "jpeg", "level": 50}))
    assert jpeg.grid > GRID_CAP and abs(noisy.grid) < 0.05 and abs(clean.grid) < 0.05
    # every other statistic the noisy pair's: the grid alone puts them a tolerance apart ...
    noisy_but_gridded = dataclasses.replace(noisy, grid=jpeg.grid)
    assert distances([noisy, noisy_but_gridded])[0, 1] >= 1
    assert len(set(cluster([noisy, noisy, noisy_but_gridded, noisy_but_gridded]))) == 2
    # ... while two JPEG pairs whose content marks the grid unequally stay together
    assert distances([jpeg, dataclasses.replace(jpeg, grid=jpeg.grid + 0.3)])[0, 1] < 1e-6


def test_grid_evidence_of_a_small_image_is_shrunk_toward_no_jpeg():
    raw, shrunk = [], []
    for name in ("astronaut", "coffee", "chelsea"):  # 32x32 LR images: 16 blocks each
        img = photo(name)
        for y in range(0, img.shape[0] - 127, 128):
            for x in range(0, img.shape[1] - 127, 128):
                lr = recipes.degrade(np.ascontiguousarray(img[y:y + 128, x:x + 128]),
                                     recipes.parse_recipe("bicubic"), 4)
                raw.append(kernels.jpeg_grid(images.luma(lr))[6:].mean())
                shrunk.append(kernels.grid_evidence(lr))
    assert max(np.abs(raw)) > 0.08  # the raw share difference scatters on so few blocks
    np.testing.assert_allclose(shrunk, np.array(raw) * 16 / (16 + kernels.GRID_BLOCKS_HALF), atol=1e-6)
    assert max(np.abs(shrunk)) < 0.5 * TOLERANCE["grid"]


def test_a_fingerprint_written_before_grid_evidence_still_loads(tmp_path):
    fp = Fingerprint(4, 16, [PairStats("a", 0, 1.0, 1.0, 0.0, (0.0, 0.0), 2.0, 25.0, None, 0.4)],
                     [Group(0, 1, [[1.0]], 1.0, 1.0, 0.0, 2.0, (0.0, 0.0), 25.0, {"kind": "none"},
                            grid=0.4)])
    fp.save(tmp_path / "new.json")
    old = json.loads((tmp_path / "new.json").read_text())
    for item in old["pairs"] + old["groups"]:
        del item["grid"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert Fingerprint.load(tmp_path / "new.json").groups[0].grid == 0.4
    loaded = Fingerprint.load(tmp_path / "old.json")
    assert loaded.groups[0].grid == 0.0 and loaded.pairs[0].grid == 0.0


@pytest.fixture(scope="module")
def known_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    record = recipes.make_set(hr_folder(root), root / "set", ["area", "bicubic", "jpeg30"],
                              test_fraction=0.25)
    return root / "set", record


def test_make_set_records_every_file(known_set):
    data, record = known_set
    assert len(record["train"]) == 12 and len(record["test"]) == 4 * 3
    assert sorted(record["train"].values()).count("area") == 4  # equal shares
    for split, table in (("train", record["train"]), ("test", record["test"])):
        for name in table:
            lr = images.read_image(data / split / "lr" / f"{name}.png")
            hr = images.read_image(data / split / "hr" / f"{name}.png")
            assert hr.shape == (160, 160, 3) and lr.shape == (40, 40, 3)
    assert json.loads((data / "recipes.json").read_text())["train"] == record["train"]


def test_fingerprint_regroups_the_recipes(known_set, tmp_path):
    data, record = known_set
    fp = fingerprint_data(data, tmp_path / "fp", cache_dir=tmp_path / "cache", progress=False)
    assert len(fp.groups) == 3 and fp.purity() == 1.0
    by_recipe = {max(g.recipes, key=g.recipes.get): g for g in fp.groups}
    area = np.asarray(by_recipe["area"].kernel)
    assert np.abs(area[6:10, 6:10] - 1 / 16).max() < 0.01 and np.abs(area).sum() < 1.3  # a 4x4 box
    assert by_recipe["jpeg30"].post["kind"] == "jpeg" and by_recipe["area"].post["kind"] == "none"
    assert by_recipe["jpeg30"].post["level"] <= 50
    loaded = Fingerprint.load(tmp_path / "fp" / "fingerprint.json")
    assert [p.group for p in loaded.pairs] == [p.group for p in fp.pairs]
    page = (tmp_path / "fp" / "fingerprint.html").read_text()
    assert page.count("<section id='group") == 3 and "<h2>Overview</h2>" in page
    assert page.count("data:image/png") >= 3 + 3 + 2 * 3  # thumbnails, kernels, crops
    c = fp.classifier
    assert c["chance"] == pytest.approx(4 / 12) and c["accuracy"] is not None


def test_blind_labels_beat_chance_on_held_out_images(known_set, tmp_path):
    data, record = known_set
    fp = fingerprint_data(data, tmp_path / "fp", cache_dir=tmp_path / "cache", progress=False)
    recipe_of = {g.id: max(g.recipes, key=g.recipes.get) for g in fp.groups}
    labels = label_lr(tmp_path / "fp" / "fingerprint.json", data / "test" / "lr", tmp_path / "l.json")
    right = [recipe_of[x.group] == record["test"][x.path.stem] for x in labels]
    assert sum(right) / len(right) > 1 / 3  # chance with three recipes
    assert all(0 < x.confidence <= 1 for x in labels)
    assert json.loads((tmp_path / "l.json").read_text()).keys() == {x.path.name for x in labels}


def test_blind_features_are_finite_on_flat_and_step_images():
    flat = np.full((64, 64, 3), 128, np.uint8)
    step = flat.copy()
    step[:, 40:] = 0  # texture only across one column: no steps elsewhere
    for img in (flat, step):
        assert np.isfinite(blind.image_features(img)).all()


def test_classifier_two_groups_round_trip():
    rng = np.random.default_rng(0)
    feats = [rng.normal(i % 2 * 3, 1, 4) for i in range(10)]  # one vector per image
    model = blind.train(feats, [i % 2 for i in range(10)], folds=5)
    assert model["accuracy"] == 1.0 and model["chance"] == 0.5
    assert blind.probabilities(model, feats[1]).argmax() == 1


def test_back_projection_restores_lr_consistency():
    hr = images.to_float(photo("chelsea")[:128, :128])
    g = np.exp(-0.5 * ((np.arange(16) - 7.5) / 1.5) ** 2)
    kernel = (np.outer(g, g) / np.outer(g, g).sum()).astype(np.float32)
    lr = kernels.apply_kernel(hr, kernel, 4)
    import cv2

    sr = cv2.resize(lr, (128, 128), interpolation=cv2.INTER_CUBIC)
    refined = back_project(sr, lr, kernel, 4, iterations=8)
    before = np.abs(kernels.apply_kernel(sr, kernel, 4) - lr).mean()
    after = np.abs(kernels.apply_kernel(refined, kernel, 4) - lr).mean()
    assert after < before / 3
    assert np.abs(refined - hr).mean() < np.abs(sr - hr).mean()  # closer to the truth, too


def test_commands(known_set, tmp_path, capsys):
    data, _ = known_set
    assert main(["fingerprint", str(data), "--out", str(tmp_path / "fp"), "--quiet",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "12 pairs in 3 groups" in out and "purity against recipes.json: 100.0%" in out
    assert "chance" in out
    assert main(["fingerprint", "--lr", str(data / "test" / "lr"), "--fingerprint",
                 str(tmp_path / "fp" / "fingerprint.json"), "--out", str(tmp_path / "lab")]) == 0
    assert (tmp_path / "lab" / "labels.json").exists()
    assert main(["fingerprint", "--lr", str(data / "test" / "lr"), "--fingerprint",
                 str(data / "recipes.json")]) == 2
    assert "not an upres fingerprint" in capsys.readouterr().err
    assert main(["make-set", str(tmp_path / "none"), str(tmp_path / "s")]) == 2
    assert "none: folder does not exist" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_predict_refines_only_where_validation_gains(known_set, tmp_path):
    from helpers import tiny_rrdbnet
    from upres.errors import PredictError
    from upres.inference.submission import predict_folder as predict
    from upres.inference.upscaler import InferenceOptions

    data, _ = known_set
    fp_dir = tmp_path / "fp"
    fingerprint_data(data, fp_dir, cache_dir=tmp_path / "c", progress=False)
    opts = InferenceOptions(backend="torch", device="cpu", dtype="fp32")
    from upres.io.loading import save_model

    model = tmp_path / "m.safetensors"
    save_model(tiny_rrdbnet(), model)
    with pytest.raises(PredictError, match="--refine needs --val"):
        predict([model], data / "test" / "lr", tmp_path / "o", options=opts,
                refine=fp_dir / "fingerprint.json")
    plain = predict([model], data / "test" / "lr", tmp_path / "plain", val_dir=data / "test",
                    options=opts, progress=False)
    result = predict([model], data / "test" / "lr", tmp_path / "out", val_dir=data / "test",
                     options=opts, progress=False, refine=fp_dir / "fingerprint.json")
    refine = result.val["refine"]
    assert max(refine["gain_by_group"].values()) > 1.0  # an untrained network is far from LR-consistent
    assert refine["enabled_groups"] and refine["gain_db"] > 0  # so refining pays where it is enabled
    assert min(refine["expected_by_group"].values()) >= -REFINE_GROUP_LOSS_DB  # and no group pays for it
    changed = [f.name for f in plain.files
               if not np.array_equal(images.read_image(f), images.read_image(tmp_path / "out" / f.name))]
    assert changed  # refinement reached the submission


def test_synthesized_pairs_are_degraded_like_their_group(known_set, tmp_path):
    from upres.degradation.synth import synthesize_pairs

    data, _ = known_set
    fp = fingerprint_data(data, tmp_path / "fp", cache_dir=tmp_path / "c", progress=False)
    extra = hr_folder(tmp_path / "extra", count=6)
    lr_dir, hr_dir = synthesize_pairs(extra, fp, tmp_path / "synth", seed=3, min_side=64)
    groups = json.loads((tmp_path / "synth" / "synth.json").read_text())["groups"]
    assert sorted(groups) == [f"synth-{i:03d}.png" for i in range(6)]
    for name, group in groups.items():
        lr, hr = images.read_image(lr_dir / name), images.read_image(hr_dir / name)
        post = fp.groups[group].post
        expected = synthesize(hr, fp.kernel(group), post, 4, 0)
        if post["kind"] == "none":  # deterministic: exactly the group's kernel
            np.testing.assert_array_equal(lr, expected)
        else:
            assert lr.shape == expected.shape
    again = synthesize_pairs(extra, fp, tmp_path / "synth2", seed=3)
    assert json.loads((tmp_path / "synth2" / "synth.json").read_text())["groups"] == groups
    assert all(np.array_equal(images.read_image(again[0] / n), images.read_image(lr_dir / n)) for n in groups)
    with pytest.raises(DataError, match="smaller than the crop 512"):
        synthesize_pairs(extra, fp, tmp_path / "synth3", min_side=512)


def _routes(tmp_path, fp_path, n_groups):
    from helpers import tiny_rrdbnet
    from upres.inference.route import write_routes
    from upres.io.loading import save_model

    paths = []
    for seed in range(n_groups + 1):
        save_model(tiny_rrdbnet(seed=seed), tmp_path / f"m{seed}.safetensors")
        paths.append(tmp_path / f"m{seed}.safetensors")
    write_routes(tmp_path / "experts.json", fp_path, paths[0], dict(enumerate(paths[1:])))
    return paths


def test_routed_prediction_uses_the_groups_expert(known_set, tmp_path):
    from upres.inference.ensemble import Predictor, rgb_input
    from upres.inference.route import RoutedPredictor
    from upres.inference.upscaler import InferenceOptions

    data, _ = known_set
    fp = fingerprint_data(data, tmp_path / "fp", cache_dir=tmp_path / "c", progress=False)
    paths = _routes(tmp_path, tmp_path / "fp" / "fingerprint.json", len(fp.groups))
    opts = InferenceOptions(backend="torch", device="cpu", dtype="fp32", tile=0)
    routed = RoutedPredictor(tmp_path / "experts.json", "fingerprint", opts)
    soft = RoutedPredictor(tmp_path / "experts.json", "soft", opts)
    singles = Predictor(paths[1:], opts)
    for path in sorted((data / "test" / "lr").iterdir())[:4]:
        lr = images.read_image(path)
        group, p = fp.label(lr)
        outs = singles.predict_float(rgb_input(lr, path))
        np.testing.assert_array_equal(routed.predict_float(rgb_input(lr, path))[0], outs[group])
        keep = p >= min(0.1, p.max())
        mix = sum(outs[g] * p[g] for g in np.flatnonzero(keep)) / p[keep].sum()
        np.testing.assert_allclose(soft.predict_float(rgb_input(lr, path))[0], mix, atol=1e-5)
    assert len(routed.names) == 1


def test_predict_with_experts_and_its_errors(known_set, tmp_path, capsys):
    data, _ = known_set
    fingerprint_data(data, tmp_path / "fp", cache_dir=tmp_path / "c", progress=False)
    _routes(tmp_path, tmp_path / "fp" / "fingerprint.json", 3)
    args = ["predict", "--input", str(data / "test" / "lr"), "--backend", "torch", "--quiet"]
    assert main([*args, "--experts", str(tmp_path / "experts.json"), "--output", str(tmp_path / "o"),
                 "--val", str(data / "test")]) == 0
    assert "val PSNR routed (fingerprint)" in capsys.readouterr().out
    assert len(list((tmp_path / "o").iterdir())) == 12
    assert main([*args, "--output", str(tmp_path / "o2")]) == 2
    assert "give --model" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"shared": "m0.safetensors"}')
    assert main([*args, "--experts", str(tmp_path / "bad.json"), "--output", str(tmp_path / "o3")]) == 2
    assert "bad.json: not an experts file" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_data_groups_select_a_groups_pairs(known_set, tmp_path):
    from upres.training.config import load_config
    from upres.training.data import resolve_splits
    from upres.training.loop import group_pairs

    data, record = known_set
    fp = fingerprint_data(data, tmp_path / "fp", cache_dir=tmp_path / "c", progress=False)
    jpeg = next(g.id for g in fp.groups if "jpeg30" in g.recipes)
    fp_arg = f"data.fingerprint={tmp_path / 'fp' / 'fingerprint.json'}"
    cfg = load_config("smoke-cpu", [f"data.root={data}", fp_arg, f"data.groups=[{jpeg}]",
                                    "data.val_split=3"])
    splits = resolve_splits(cfg.data)
    train, val = group_pairs(cfg, splits.train, splits.val)
    assert train and all(record["train"][p.name] == "jpeg30" for p in train)
    # a pair the fingerprint does not name is fitted and assigned: the test pairs
    from upres.io.pairs import find_pairs

    test_pairs, _ = find_pairs(data / "test" / "lr", data / "test" / "hr")
    assigned = fp.groups_of(test_pairs)
    right = [max(fp.groups[g].recipes, key=fp.groups[g].recipes.get) == record["test"][p.name]
             for p, g in zip(test_pairs, assigned)]
    assert all(right)
    with pytest.raises(Exception, match="data.groups needs data.fingerprint"):
        load_config("smoke-cpu", ["data.groups=[0]"])
    bad = load_config("smoke-cpu", [f"data.root={data}", fp_arg, "data.groups=[7]"])
    with pytest.raises(DataError, match=r"data.groups: \[7\] not in"):
        group_pairs(bad, splits.train, splits.val)


def test_plan_arms_reuse_only_earlier_arms():
    from pydantic import ValidationError

    from upres.training.config import Plan

    base = {"base": "smoke-cpu", "iterations": 4, "val_every": 2}
    Plan(**base, arms=[{"name": "a"}, {"name": "b", "reuse": "a", "refine": True}])
    with pytest.raises(ValidationError, match="reuse 'b' is not an earlier arm"):
        Plan(**base, arms=[{"name": "a", "reuse": "b"}, {"name": "b"}])
    with pytest.raises(ValidationError, match="a reused arm trains nothing"):
        Plan(**base, arms=[{"name": "a"}, {"name": "b", "reuse": "a", "experts": True}])


def test_degradation_plan_scores_every_arm_per_recipe(known_set, tmp_path):
    import csv

    import yaml

    from upres.training.config import load_plan
    from upres.training.experiment import run_plan

    data, record = known_set
    plan = {"base": "smoke-cpu", "data": str(data), "iterations": 4, "val_every": 2,
            "score_recipes": True,
            "overrides": {"model.num_feat": 8, "model.num_grow_ch": 4, "model.num_block": 1,
                          "data.crop": 32, "data.workers": 0, "train.batch_size": 2,
                          "data.val_split": 3, "data.cache_dir": str(tmp_path / "cache")},
            "arms": [{"name": "base"}, {"name": "experts", "experts": True},
                     {"name": "refine", "reuse": "base", "refine": True}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    written = run_plan(load_plan(tmp_path / "plan.yaml"), tmp_path / "out", progress=False)
    rows = list(csv.reader(written["recipes.csv"].open()))
    assert rows[0] == ["arm", "area", "bicubic", "jpeg30", "all"]
    assert [r[0] for r in rows[1:]] == ["bicubic", "base", "experts", "refine"]
    arm = tmp_path / "out" / "arms" / "experts"
    routes = json.loads((arm / "experts.json").read_text())
    assert max(json.loads(x)["step"] for x in (arm / "metrics.jsonl").read_text().splitlines()) == 2
    trained = sorted(arm.glob("experts/group*/metrics.jsonl"))
    assert len(trained) == 3  # one per recipe group
    for metrics in trained:
        scores = {r["step"]: r["val_psnr"] for r in map(json.loads, metrics.read_text().splitlines())
                  if "val_psnr" in r}
        assert sorted(scores) == [0, 1]  # the shared weights first, then the other half of 4 steps, split
        kept = f"experts/{metrics.parent.name}/best.safetensors" in routes["experts"].values()
        assert kept == (scores[1] > scores[0])  # an expert is routed to only when it helps
    # bicubic row: an independent computation over the recorded test recipes
    from upres.scoring import metrics as m

    area = [m.psnr(m.bicubic_upscale(images.read_image(data / "test" / "lr" / f"{n}.png"), 4),
                   images.read_image(data / "test" / "hr" / f"{n}.png"), 4)
            for n, r in record["test"].items() if r == "area"]
    assert float(rows[1][1]) == pytest.approx(np.mean(area), abs=0.006)
    note = written["recipes.md"].read_text()
    assert "refine: refinement gain on validation by group" in note
    assert written["recipes.png"].read_bytes()[:4] == b"\x89PNG"
