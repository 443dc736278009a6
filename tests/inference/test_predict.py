import base64
import json
import re
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import photo, tiny_rrdbnet, write_pair
from upres.cli import main
from upres.errors import PredictError, UpresError
from upres.inference.ensemble import (
    GroupWeights,
    Predictor,
    Validation,
    coefficients_from_psnr,
    fit_coefficients,
    fit_group_weights,
    project_to_simplex,
)
from upres.inference.submission import predict_folder as predict
from upres.io import images
from upres.io.loading import save_model
from upres.scoring import metrics


def test_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    true_w = np.array([0.6, 0.3, 0.1, 0.0])
    preds = [rng.random((4, 16, 16, 3)) for _ in range(3)]
    targets = [np.tensordot(true_w, p, axes=1) for p in preds]
    w = fit_coefficients(preds, targets)
    np.testing.assert_allclose(w, true_w, atol=1e-4)
    assert w.min() >= 0 and w.sum() == pytest.approx(1)


def test_fit_stays_on_the_simplex_when_best_is_outside():
    rng = np.random.default_rng(1)
    p = rng.random((2, 8, 8, 3))
    target = 1.5 * p[0] - 0.5 * p[1]  # unconstrained optimum has a negative weight
    w = fit_coefficients([p], [target])
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(project_to_simplex(np.array([2.0, 0.0, -1.0])), [1.0, 0.0, 0.0])


class _KernelRefiner:
    """Refinement whose effect is known: on group 0 (a resampling recipe) its own kernel halves
    the error; every other refinement adds ``harm`` (group 1 is JPEG-like: no kernel fits it).
    Labels are always right in-sample, as on the pairs the classifier was fitted on."""

    def __init__(self, held_out: list, harm: float) -> None:
        self.fp = SimpleNamespace(classifier={"held_out": held_out})
        self.harm, self.hr = harm, {}

    def label(self, lr):
        return int(lr[0, 0, 0]), 0.95

    def refine(self, sr, lr, group):
        truth = self.hr[int(lr[0, 0, 0])]
        return (sr + truth) / 2 if group == int(lr[0, 0, 0]) == 0 else np.clip(sr + self.harm, 0, 1)


def _refine_case(harm: float, held_out: list):
    """Two images of group 0 and two of group 1, one model 0.1 off the truth."""
    rng = np.random.default_rng(3)
    hr = (rng.random((8, 8, 3)) * 0.5 + 0.25)
    refiner = _KernelRefiner(held_out, harm)
    refiner.hr = {0: hr, 1: hr}
    truth8 = np.rint(hr * 255).astype(np.uint8)
    val = Validation([{"lr": None, "hr": None}] * 4, [np.stack([hr + 0.1])] * 4, [hr] * 4, [truth8] * 4,
                     0, [0.0], [np.full((2, 2, 3), float(g)) for g in (0, 0, 1, 1)])
    return refiner, val, [0, 0, 1, 1]


def test_refinement_is_chosen_on_held_out_labels_and_spares_every_true_group():
    """Group 1's images are sent to group 0's kernel a quarter of the time by the held-out
    classifier (never in-sample): group 0 is enabled only while the expected loss of group 1
    stays within ``REFINE_GROUP_LOSS_DB``; the expectation is the held-out odds times the gains.
    Group 1's own refinement only harms: never enabled."""
    from upres.inference.ensemble import REFINE_GROUP_LOSS_DB, choose_refinement

    def db(x, truth):
        return metrics.psnr(np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8),
                            np.rint(truth * 255).astype(np.uint8), 0)

    held = [[0, 0, 0.9]] * 4 + [[1, 1, 0.9]] * 3 + [[1, 0, 0.9]]
    for harm in (0.002, 0.3):
        refiner, val, truth = _refine_case(harm, held)
        hr, pred = val.targets[0], val.preds[0][0]
        right = db((pred + hr) / 2, hr) - db(pred, hr)
        wrong = db(np.clip(pred + harm, 0, 1), hr) - db(pred, hr)
        chosen = choose_refinement(refiner, val, np.ones(1), truth)
        loss = 0.25 * wrong  # group 1's expected change with group 0 enabled
        assert chosen["gain_by_group"] == {"0": pytest.approx(right), "1": pytest.approx(wrong)}
        if loss >= -REFINE_GROUP_LOSS_DB:  # a small harm: group 0 refined where labelled
            assert chosen["enabled_groups"] == [0]
            assert chosen["expected_by_group"] == {"0": pytest.approx(right, abs=1e-4),
                                                   "1": pytest.approx(loss, abs=1e-4)}
        else:  # group 1 would lose too much: nothing is refined
            assert chosen["enabled_groups"] == [] and chosen["gain_db"] == 0.0
    # without held-out labels (an older fingerprint) each image's own label decides, as before
    refiner, val, truth = _refine_case(0.3, [])
    assert choose_refinement(refiner, val, np.ones(1), truth)["enabled_groups"] == [0]


def test_a_fusion_is_scored_after_the_refiner_and_a_model_alone(tmp_path):
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    images.write_image(tmp_path / "lr.png", lr)
    preds = [np.stack([np.full((32, 32, 3), 0.2, np.float32), np.full((32, 32, 3), 0.6, np.float32)])]
    val = Validation([{"lr": tmp_path / "lr.png", "hr": tmp_path / "hr.png"}], preds,
                     [hr / 255.0], [hr], 4, [11.0, 12.0])
    seen = []

    def refiner(sr, lr_rgb):  # sees the fusion (0.25 * 0.2 + 0.75 * 0.6 = 0.5) and the LR
        seen.append((float(sr.mean()), lr_rgb))
        return sr + 0.1

    # 0.6 everywhere is 153 of 255: PSNR by hand inside the 4-pixel border
    mse = ((153.0 - hr[4:-4, 4:-4].astype(np.float64)) ** 2).mean()
    expected = 10 * np.log10(255.0 ** 2 / mse)
    assert val.fused_psnr(np.array([0.25, 0.75]), refiner) == pytest.approx(expected, abs=1e-9)
    assert seen[0][0] == pytest.approx(0.5) and np.allclose(seen[0][1], lr / 255.0)
    alone = val.model(1)  # the second model alone, unrefined, is the same 0.6
    assert alone.psnr == [12.0] and alone.preds[0].shape == (1, 32, 32, 3)
    assert alone.fused_psnr(np.ones(1)) == pytest.approx(expected, abs=1e-9)


def test_weights_per_group_follow_each_group_s_pairs_shrunk_toward_the_pooled_fit(tmp_path):
    """Group 0's pairs are model 0's output exactly, group 1's pair model 1's: each group's fit
    is that model alone, moved toward the pooled fit by one pair's worth; a test image of a
    group without pairs gets the pooled coefficients."""
    rng = np.random.default_rng(1)
    files, preds, targets, hrs, groups = [], [], [], [], {}
    for k, group in enumerate([0, 0, 1]):
        lr = np.full((8, 8, 3), 40 * (group + 1) + k, np.uint8)  # the label reads the LR's level
        images.write_image(tmp_path / f"{k}.png", lr)
        p = rng.uniform(0.1, 0.9, (2, 32, 32, 3)).astype(np.float32)
        target = p[group].astype(np.float64)
        files.append({"lr": tmp_path / f"{k}.png", "hr": tmp_path / f"{k}.png"})
        preds.append(p), targets.append(target)
        hrs.append(np.rint(target * 255).astype(np.uint8))
        groups[round(float(lr.mean()) / 255, 4)] = group

    def label(lr_rgb):
        return groups[round(float(lr_rgb.mean()), 4)], 0.9

    val = Validation(files, preds, targets, hrs, 4, [])
    pooled = fit_coefficients(preds, targets)
    grouped = fit_group_weights(val, label, pooled)
    np.testing.assert_allclose(grouped.by_group[0], (2 * np.array([1.0, 0.0]) + pooled) / 3, atol=1e-3)
    np.testing.assert_allclose(grouped.by_group[1], (np.array([0.0, 1.0]) + pooled) / 2, atol=1e-3)
    assert 0.4 < pooled[0] < 0.9  # two pairs of three favour model 0, not all the way
    lr0 = images.to_float(images.read_image(files[0]["lr"]))
    np.testing.assert_allclose(grouped(lr0), grouped.by_group[0])
    elsewhere = GroupWeights(pooled, {1: grouped.by_group[1]}, label)  # group 0 has no weights
    np.testing.assert_allclose(elsewhere(lr0), pooled)
    assert val.fused_psnr(grouped) > val.fused_psnr(pooled) + 1.0


def test_a_group_s_fit_uses_only_the_models_named_for_it_and_shrinks_toward_its_prior(tmp_path):
    """Three models: group 0 may use models 0 and 2 (a specialist), group 1 models 0 and 1.
    Each fit is the simplex fit over its columns alone (the other weighs 0), moved toward its
    prior by one pair's worth; the unused model is not run on the image."""
    rng = np.random.default_rng(2)
    files, preds, targets, hrs, groups = [], [], [], [], {}
    for k, group in enumerate([0, 1]):
        lr = np.full((8, 8, 3), 60 * (group + 1), np.uint8)
        images.write_image(tmp_path / f"{k}.png", lr)
        p = rng.uniform(0.1, 0.9, (3, 32, 32, 3)).astype(np.float32)
        target = (0.3 * p[0] + 0.7 * p[2 if group == 0 else 1]).astype(np.float64)
        files.append({"lr": tmp_path / f"{k}.png", "hr": tmp_path / f"{k}.png"})
        preds.append(p), targets.append(target), hrs.append(np.rint(target * 255).astype(np.uint8))
        groups[round(float(lr.mean()) / 255, 4)] = group

    def label(lr_rgb):
        return groups[round(float(lr_rgb.mean()), 4)], 0.9

    val = Validation(files, preds, targets, hrs, 4, [])
    pooled = np.array([0.6, 0.4, 0.0])
    prior = np.array([0.6, 0.0, 0.4])
    grouped = fit_group_weights(val, label, pooled, {0: [0, 2]}, {0: prior})
    np.testing.assert_allclose(grouped.by_group[0], (np.array([0.3, 0.0, 0.7]) + prior) / 2, atol=2e-3)
    np.testing.assert_allclose(grouped.by_group[1], (np.array([0.3, 0.7, 0.0]) + pooled) / 2, atol=2e-3)
    assert grouped.by_group[0][1] == 0 and grouped.by_group[1][2] == 0  # never run there

    class Counting:
        def __init__(self, value):
            self.value, self.calls = value, 0

        def upscale_float(self, rgb):
            self.calls += 1
            return np.full((4, 4, 3), self.value, np.float32)

    predictor = Predictor.__new__(Predictor)
    predictor.upscalers = [Counting(0.2), Counting(0.5), Counting(0.9)]
    fused = predictor.predict_fused(np.zeros((1, 1, 3), np.float32), np.array([0.25, 0.0, 0.75]))
    np.testing.assert_allclose(fused, 0.25 * 0.2 + 0.75 * 0.9, atol=1e-6)
    assert [u.calls for u in predictor.upscalers] == [1, 0, 1]


def test_psnr_weight_rules():
    np.testing.assert_allclose(coefficients_from_psnr([30, 20], "psnr"), [0.6, 0.4])
    np.testing.assert_allclose(coefficients_from_psnr([30, 20], "inv-mse"), [10 / 11, 1 / 11])


@pytest.fixture
def setup(tmp_path):
    m1, m2 = tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"
    save_model(tiny_rrdbnet(seed=1), m1)
    save_model(tiny_rrdbnet(seed=2, num_feat=12), m2)  # ensembles may mix widths
    img = photo("astronaut")
    for i in range(2):
        write_pair(tmp_path / "val", ".", f"v{i}", img[100 + 40 * i:164 + 40 * i, 200:264])
    test_dir = tmp_path / "test"
    images.write_image(test_dir / "a.png", img[:20, :28])
    images.write_image(test_dir / "b.jpg", img[50:66, 60:80])
    images.write_image(test_dir / "g.png", img[:12, :12, 1])  # gray stays gray
    return tmp_path, [m1, m2]


def test_submission_folder_and_ensemble_json(setup):
    root, models = setup
    out = root / "sub"
    result = predict(models, root / "test", out, weights="fit", val_dir=root / "val", make_zip=True,
                     progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "g.png"]
    assert images.read_image(out / "a.png").shape == (80, 112, 3)
    assert images.read_image(out / "b.png").shape == (64, 80, 3)
    assert images.read_image(out / "g.png").shape == (48, 48)
    info = json.loads((root / "sub.ensemble.json").read_text())
    assert info["weights"] == pytest.approx(result.weights)
    assert sum(result.weights) == pytest.approx(1)
    assert set(info["validation_psnr"]["models"]) == {"m1", "m2"}
    # the fitted ensemble is at least as good as its best member on the validation set
    assert info["validation_psnr"]["ensemble"] >= max(info["validation_psnr"]["models"].values()) - 0.05
    with zipfile.ZipFile(root / "sub.zip") as zf:
        assert sorted(zf.namelist()) == ["a.png", "b.png", "g.png"]
    with pytest.raises(UpresError, match="holds files already; pass --overwrite"):
        predict(models, root / "test", out, weights="0.5,0.5", progress=False)


def test_fused_output_is_the_weighted_mean(setup):
    root, models = setup
    predict(models, root / "test", root / "w", weights="0.25,0.75", progress=False)
    from upres.inference.upscaler import Upscaler
    a = images.to_float(images.read_image(root / "test/a.png"))
    f1 = Upscaler(models[0]).upscale_float(a)
    f2 = Upscaler(models[1]).upscale_float(a)
    expect = images.from_float(0.25 * f1 + 0.75 * f2, np.uint8)
    assert np.abs(images.read_image(root / "w/a.png").astype(int) - expect).max() <= 1


def test_psnr_weights_need_val(setup):
    root, models = setup
    with pytest.raises(PredictError, match="needs --val"):
        predict(models, root / "test", root / "x", weights="psnr", progress=False)
    assert not (root / "x").exists()


def test_report_images_exist_and_numbers_match_csv(setup):
    root, models = setup
    report = root / "report"
    predict(models, root / "test", root / "sub", weights="psnr", val_dir=root / "val",
            report_dir=report, progress=False)
    page = (report / "index.html").read_text()
    assert "http" not in page  # opens offline, nothing fetched
    inline = re.findall(r"<img src='data:image/png;base64,([^']+)'", page)
    assert len(inline) == 2 * 3  # per image: the strip and the two slider panels, inline
    for data in inline:
        assert images.cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), 1).ndim == 3
    for rel in re.findall(r"<a href='([^']+)'", page):  # the full-size images, linked
        assert (report / rel).is_file()
    # table cells equal the per-model CSVs digit for digit
    rows = re.findall(r"<tr(?: class=mean)?><td>([^<]+)</td>((?:<td[^>]*>[^<]*</td>)+)</tr>", page)
    table = {name: re.findall(r"<td[^>]*>([^<]*)</td>", cells) for name, cells in rows}
    for k, name in enumerate(["m1", "m2", "ensemble"]):
        for line in (report / f"scores_{name}.csv").read_text().splitlines()[1:]:
            cols = line.split(",")
            assert table[cols[0]][2 + 2 * k:4 + 2 * k] == cols[1:3]
            assert table[cols[0]][:2] == cols[3:5]
    ens = [line.split(",") for line in (report / "scores_ensemble.csv").read_text().splitlines()]
    gt = images.read_image(root / "val/hr/v0.png")
    pr = images.read_image(report / "predictions/ensemble/v0.png")
    assert float(ens[1][1]) == pytest.approx(metrics.psnr(pr, gt, 4), abs=1e-4)


def test_unreadable_input_leaves_no_half_written_submission(setup, capsys):
    root, models = setup
    (root / "test/zz.png").write_bytes(b"\x89PNG broken")
    code = main(["predict", "--model", str(models[0]), "--input", str(root / "test"),
                 "--output", str(root / "sub")])
    assert code == 2
    assert "zz.png: not an image upres reads" in capsys.readouterr().err
    assert not (root / "sub").exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".sub")] == []


def test_predict_says_which_backend_each_model_runs_on(setup):
    root, models = setup
    notes = []
    predict(models, root / "test", root / "n", weights="0.5,0.5", progress=False,
            on_note=notes.append)
    assert [n.split(":")[0] for n in notes] == ["m1", "m2"]
    assert all("backend " in n for n in notes)
