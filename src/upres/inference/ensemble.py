"""Several models on the ``upscale`` inference path, each optionally self-ensembled, fused by
soft voting; validation on LR/HR pairs scores each model and the fusion.

Soft-voting coefficients (the CLI's ``--weights``):
- ``psnr``: the recipe's rule, proportional to each model's validation PSNR,
  ``w_i = PSNR_i / sum_j PSNR_j``;
- ``inv-mse``: proportional to ``10 ** (PSNR_i / 10)``, i.e. ``1 / MSE_i`` (inverse variance);
- ``fit``: non-negative coefficients summing to 1 that minimise the squared error of the fused
  prediction over the validation set (the PSNR of the pooled MSE), by projected gradient;
- explicit ``w1,w2,...``: non-negative, normalised to sum to 1.
``GroupWeights`` holds fitted coefficients per fingerprint group of the LR image (``upres auto``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from upres.errors import EvalError, PredictError
from upres.inference.upscaler import InferenceOptions, Upscaler
from upres.io import images
from upres.scoring import metrics
from upres.scoring.evaluate import match_by_stem

RULES = ("psnr", "inv-mse", "fit")


# --------------------------------------------------------------------------- coefficients


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > css)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0)


def fit_coefficients(preds: list[np.ndarray], targets: list[np.ndarray],
                     iterations: int = 5000) -> np.ndarray:
    """Simplex coefficients minimising sum over images of ||sum_i w_i P_i - T||^2.

    ``preds[k]`` holds model predictions for image k stacked as (models, ...); the problem is a
    small quadratic program solved by accelerated projected gradient on the Gram matrix."""
    n_models = preds[0].shape[0]
    gram = np.zeros((n_models, n_models))
    lin = np.zeros(n_models)
    for p, t in zip(preds, targets):
        flat = p.reshape(n_models, -1).astype(np.float64)
        gram += flat @ flat.T
        lin += flat @ t.reshape(-1).astype(np.float64)
    step = 1.0 / max(np.linalg.eigvalsh(gram).max(), 1e-12)
    w = np.full(n_models, 1.0 / n_models)
    y, t_k = w.copy(), 1.0
    for _ in range(iterations):
        w_next = project_to_simplex(y - step * (gram @ y - lin))
        t_next = (1 + np.sqrt(1 + 4 * t_k * t_k)) / 2
        y = w_next + (t_k - 1) / t_next * (w_next - w)
        w, t_k = w_next, t_next
    return w


def coefficients_from_psnr(psnrs: list[float], rule: str) -> np.ndarray:
    p = np.asarray(psnrs, dtype=np.float64)
    if not np.isfinite(p).all():
        raise PredictError(f"cannot weight by PSNR: a model's validation PSNR is not finite "
                           f"({psnrs}: identical to the ground truth?); give explicit weights")
    w = p if rule == "psnr" else 10 ** ((p - p.max()) / 10)
    if np.any(w <= 0):
        raise PredictError(f"cannot weight by PSNR: non-positive PSNR in {psnrs}")
    return w / w.sum()


def parse_coefficients(spec: str, n_models: int) -> np.ndarray | str:
    """A rule name, or explicit numbers normalised to sum to 1."""
    if spec in RULES:
        return spec
    try:
        w = np.array([float(x) for x in spec.split(",")])
    except ValueError:
        raise PredictError(f"--weights {spec!r}: expected psnr, inv-mse, fit or numbers like "
                           "0.6,0.4") from None
    if len(w) != n_models or not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise PredictError(f"--weights {spec!r}: need {n_models} finite, non-negative numbers with a "
                           "positive sum")
    return w / w.sum()


# --------------------------------------------------------------------------- models


def fuse(outputs: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
    fused = np.zeros_like(outputs[0], dtype=np.float32)
    for w, out in zip(coefficients, outputs):
        fused += np.float32(w) * out
    return fused


@dataclass
class GroupWeights:
    """Coefficients per fingerprint group of the LR image (its blind label), the pooled fit for
    images of other groups: the models suit recipes differently (on known6 a fine-tune of RealSR,
    whose start never saw JPEG, fitted 0.17 on the JPEG group's validation pair and 0.74 to 0.93
    on the other groups' pairs, against x4plus's fine-tune)."""

    pooled: np.ndarray
    by_group: dict[int, np.ndarray]
    label: Callable[[np.ndarray], tuple[int, float]]  # LR float RGB -> (group, confidence)

    def __call__(self, lr_rgb: np.ndarray) -> np.ndarray:
        return self.by_group.get(self.label(lr_rgb)[0], self.pooled)


Coefficients = np.ndarray | GroupWeights


def coefficients_for(coefficients: Coefficients, lr_rgb: np.ndarray) -> np.ndarray:
    """Fixed coefficients, or those a ``GroupWeights`` holds for this LR image."""
    return coefficients(lr_rgb) if isinstance(coefficients, GroupWeights) else coefficients


def to_image(rgb_float: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Float RGB model output back to the input's mode (gray stays gray) and bit depth."""
    return images.from_float(images.luma(rgb_float) if like.ndim == 2 else rgb_float,
                             like.dtype)


def rgb_input(img: np.ndarray, path: Path) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 4:
        raise PredictError(f"{path}: images with alpha are not supported by predict; use upscale")
    return images.gray_to_rgb(images.to_float(img))


def model_names(models: list[str | Path]) -> list[str]:
    """Short unique labels: the file stem, with its folder where stems repeat (runs/a/best)."""
    paths = [Path(str(m)) for m in models]
    stems = [p.stem if p.suffix else str(p) for p in paths]
    return [f"{p.parent.name}/{s}" if stems.count(s) > 1 and p.suffix else s
            for p, s in zip(paths, stems)]


@dataclass
class Validation:
    """Each model's float predictions and PSNR on validation pairs, for fitting and scoring
    fusions without running the models again."""

    files: list[dict[str, Path]]  # {"lr": path, "hr": path} per pair
    preds: list[np.ndarray]  # per pair: (models, H, W, 3) float predictions
    targets: list[np.ndarray]  # per pair: the HR as float RGB in [0, 1]
    hr: list[np.ndarray]  # per pair: the HR as read (for scoring in its own mode)
    border: int
    psnr: list[float]  # per model, the mean over the pairs
    lr_rgb: list[np.ndarray] | None = None  # per pair: the LR as float RGB, read when first needed

    @property
    def lrs(self) -> list[np.ndarray]:
        """The LR images as float RGB, read once (group labels and refinement need them)."""
        if self.lr_rgb is None:
            self.lr_rgb = [rgb_input(images.read_image(f["lr"]), f["lr"]) for f in self.files]
        return self.lr_rgb

    def fused_psnr(self, coefficients: Coefficients, refiner=None) -> float:
        """Mean PSNR of the soft-voting fusion with these coefficients, after ``refiner``
        (``refiner(sr, lr)``, e.g. a ``Refiner``) where one is given."""
        scores, needs_lr = [], refiner is not None or isinstance(coefficients, GroupWeights)
        for k, (hr, p) in enumerate(zip(self.hr, self.preds)):
            lr = self.lrs[k] if needs_lr else None
            fused = fuse(list(p), coefficients_for(coefficients, lr))
            if refiner is not None:
                fused = refiner(fused, lr)
            scores.append(metrics.psnr(to_image(fused, hr), hr, self.border))
        return float(np.mean(scores))

    def model(self, index: int) -> Validation:
        """One model's predictions alone."""
        return Validation(self.files, [p[index:index + 1] for p in self.preds], self.targets,
                          self.hr, self.border, self.psnr[index:index + 1], self.lr_rgb)


class Predictor:
    """Several models, one inference path each, fused by soft voting."""

    def __init__(self, models: list, options: InferenceOptions | None = None,
                 names: list[str] | None = None) -> None:
        if not models:
            raise PredictError("at least one --model is needed")
        self.upscalers = [Upscaler(m, options) for m in models]
        scales = {u.scale for u in self.upscalers}
        if len(scales) != 1:
            raise PredictError(f"models have different scales {sorted(scales)}; an ensemble needs one")
        self.scale = scales.pop()
        self.names = names or model_names(models)
        self.refiner = None  # LR-consistency refinement (upres.degradation.refine.Refiner)

    def predict_float(self, rgb: np.ndarray) -> list[np.ndarray]:
        return [u.upscale_float(rgb) for u in self.upscalers]

    def predict_fused(self, rgb: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """The soft vote of the models; one weighted 0 is not run (a specialist of some
        recipe groups, in ``upres auto``, runs on their images only)."""
        w = np.asarray(coefficients)
        used = np.flatnonzero(w > 0)
        return fuse([self.upscalers[i].upscale_float(rgb) for i in used], w[used])

    def validate(self, val_dir: Path, crop_border: int | None = None) -> Validation:
        """Each model's predictions and PSNR on ``val_dir/lr`` vs ``val_dir/hr``."""
        return self.validate_files(match_by_stem({"lr": val_dir / "lr", "hr": val_dir / "hr"}),
                                   crop_border)

    def validate_files(self, files: list[dict], crop_border: int | None = None) -> Validation:
        """``validate`` for a list of ``{"lr": path, "hr": path}``."""
        border = self.scale if crop_border is None else crop_border
        preds, targets, truths, lrs, per_model = [], [], [], [], [[] for _ in self.names]
        for f in files:
            lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
            problem = images.scale_mismatch(lr, hr, self.scale, f["lr"], f["hr"])
            if problem:
                raise EvalError(problem)
            lrs.append(rgb_input(lr, f["lr"]))
            outs = self.predict_float(lrs[-1])
            for i, out in enumerate(outs):
                per_model[i].append(metrics.psnr(to_image(out, hr), hr, border))
            preds.append(np.stack(outs))
            truths.append(hr)
            targets.append(images.gray_to_rgb(images.to_float(hr)))
        return Validation(files, preds, targets, truths, border,
                          [float(np.mean(p)) for p in per_model], lrs)


THRESHOLDS = (0.0, 0.5, 0.7, 0.9)  # label confidences tried for refinement on validation


def fit_group_weights(val: Validation, label: Callable[[np.ndarray], tuple[int, float]],
                      pooled: np.ndarray, columns: dict[int, list[int]] | None = None,
                      priors: dict[int, np.ndarray] | None = None) -> GroupWeights:
    """Per group of validation pairs (by ``label``), the simplex fit on its pairs, shrunk toward
    the ``pooled`` fit by one pair's worth, ``(n * fit + pooled) / (n + 1)``: a group of one
    pair moves halfway (on known6's test pairs halfway scored within 0.01 dB of the full move
    overall, and better on the JPEG group). Where ``columns`` is given, a group's fit uses only
    the models it names for that group (the others weigh 0, so they are not run on its images;
    a group it does not name uses those ``pooled`` weighs above 0), shrunk toward ``priors[g]``
    where given."""
    members: dict[int, list[int]] = {}
    for k, lr in enumerate(val.lrs):
        members.setdefault(label(lr)[0], []).append(k)
    pooled, by_group = np.asarray(pooled, dtype=np.float64), {}
    everyone = list(range(len(pooled))) if columns is None else np.flatnonzero(pooled > 0).tolist()
    for group, ks in sorted(members.items()):
        cols = (columns or {}).get(group, everyone)
        fit = np.zeros(len(pooled))
        fit[cols] = fit_coefficients([val.preds[k][cols] for k in ks], [val.targets[k] for k in ks])
        prior = (priors or {}).get(group, pooled)
        by_group[group] = (len(ks) * fit + prior) / (len(ks) + 1)
    return GroupWeights(pooled, by_group, label)


REFINE_GROUP_LOSS_DB = 0.05  # the most refinement may cost any true group on validation, expected


def choose_refinement(refiner, val: Validation, coefficients: Coefficients,
                      truth: list[int] | None = None) -> dict:
    """Enable back-projection for the fingerprint groups, and above the label confidence, where
    it raises the validation PSNR expected on test images. A test image is refined with the
    kernel of the group the blind classifier names, which is wrong for some; so each validation
    image (of true group ``truth``, from its pair) is refined with every group's kernel that the
    classifier's held-out labels give its group, weighted by how often (on known6 the classifier
    that knew the validation pairs labelled them all right, then sent 1 of 10 JPEG test images
    to a resampling group's kernel, costing it ~1 dB). A group is enabled where its expected
    gain is positive, and dropped while some true group would lose over
    ``REFINE_GROUP_LOSS_DB``; every threshold in ``THRESHOLDS`` is tried and the best total kept."""
    truth = truth if truth is not None else refiner.fp.groups_of(
        [SimpleNamespace(name=f["hr"].stem, lr=f["lr"], hr=f["hr"]) for f in val.files])
    fused = [fuse(list(p), coefficients_for(coefficients, lr)) for lr, p in zip(val.lrs, val.preds)]
    labels = [refiner.label(lr) for lr in val.lrs]
    gains: dict[tuple[int, int], float] = {}

    def gain(k: int, group: int) -> float:  # refining image k with ``group``'s kernel, in dB
        if (k, group) not in gains:
            hr, refined = val.hr[k], refiner.refine(fused[k], val.lrs[k], group)
            gains[k, group] = (metrics.psnr(to_image(refined, hr), hr, val.border)
                               - metrics.psnr(to_image(fused[k], hr), hr, val.border))
        return gains[k, group]

    best = (0.0, THRESHOLDS[-1], set(), {t: 0.0 for t in set(truth)})
    for threshold in THRESHOLDS:
        odds = [_refine_odds(refiner, labels[k], truth[k], threshold) for k in range(len(fused))]
        effect = {(k, g): w * gain(k, g) for k, o in enumerate(odds) for g, w in o.items()}
        enabled = {g for g in {g for _, g in effect}
                   if sum(v for (_, h), v in effect.items() if h == g) > 0}
        expected = _guard_groups(enabled, effect, truth)
        total = sum(v for (_, g), v in effect.items() if g in enabled)
        if total > best[0]:
            best = (total, threshold, enabled, expected)
    refiner.threshold, refiner.enabled = best[1], best[2]
    own: dict[int, list[float]] = {}
    for k, group in enumerate(truth):
        own.setdefault(group, []).append(gain(k, group))
    return {"gain_by_group": {str(g): float(np.mean(v)) for g, v in sorted(own.items())},
            "expected_by_group": {str(g): round(v, 4) for g, v in sorted(best[3].items())},
            "threshold": refiner.threshold, "enabled_groups": sorted(refiner.enabled),
            "gain_db": best[0] / max(len(fused), 1)}


def _refine_odds(refiner, label: tuple[int, float], truth: int, threshold: float) -> dict[int, float]:
    """How often a test image of group ``truth`` is refined with each group's kernel at this
    confidence threshold: the classifier's held-out labels of that group, else (a fingerprint
    without them) this image's own label."""
    held = [(g, p) for t, g, p in (refiner.fp.classifier or {}).get("held_out", []) if t == truth]
    if not held:
        return {label[0]: 1.0} if label[1] >= threshold else {}
    odds: dict[int, float] = {}
    for group, confidence in held:
        if confidence >= threshold:
            odds[group] = odds.get(group, 0.0) + 1 / len(held)
    return odds


def _guard_groups(enabled: set[int], effect: dict[tuple[int, int], float], truth: list[int]) -> dict:
    """Drop from ``enabled`` (in place) the group that costs the worst-off true group most, while
    one would lose over ``REFINE_GROUP_LOSS_DB`` on average; each true group's expected change."""
    while True:
        expected = {t: float(np.mean([sum(v for (i, g), v in effect.items() if i == k and g in enabled)
                                      for k in range(len(truth)) if truth[k] == t]))
                    for t in set(truth)}
        worst = min(expected, key=expected.get, default=None)
        if worst is None or expected[worst] >= -REFINE_GROUP_LOSS_DB or not enabled:
            return expected
        enabled.discard(min(enabled, key=lambda g: sum(v for (i, h), v in effect.items()
                                                      if h == g and truth[i] == worst)))
