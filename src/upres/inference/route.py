"""Routed experts: each LR image goes to the model of its fingerprint group (the blind
classifier's choice), or, with ``soft``, to a mix of the models weighted by the classifier's
probabilities. An ``experts.json`` names the fingerprint, the shared model (for groups without an
expert) and one model per group; paths are relative to the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from upres.degradation.fingerprint import Fingerprint
from upres.errors import PredictError, excerpt
from upres.inference.ensemble import THRESHOLDS, Predictor, fuse, rgb_input, to_image
from upres.inference.upscaler import InferenceOptions
from upres.io import images
from upres.io.files import atomic_write_bytes
from upres.scoring import metrics

SOFT_FLOOR = 0.1  # soft routing skips groups below this probability (then renormalizes)


def read_routes(path: str | Path) -> dict:
    path = Path(path)
    try:
        table = json.loads(path.read_text(), object_pairs_hook=_no_repeats)
        fingerprint, shared = path.parent / table["fingerprint"], path.parent / table["shared"]
        groups = [int(g) for g in table["experts"]]
        experts = {int(g): path.parent / m for g, m in table["experts"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise PredictError(f"{path}: not an experts file (fingerprint, shared, experts: "
                           f"{{group: weights}}): {excerpt(str(err), 200)[1:-1]}") from None
    if len(experts) < len(groups):
        raise PredictError(f"{path}: group {sorted(g for g in groups if groups.count(g) > 1)[0]} has "
                           "two experts; keep one")
    return {"fingerprint": fingerprint, "shared": shared, "experts": experts}


def _no_repeats(pairs: list[tuple]) -> dict:
    """A JSON object whose keys are all different (``json`` keeps the last of a repeated key)."""
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} is given twice")
    return dict(pairs)


def write_routes(path: str | Path, fingerprint: Path, shared: Path, experts: dict[int, Path]) -> None:
    base = Path(path).parent.resolve()

    def rel(p: Path) -> str:
        return str(Path(p).resolve().relative_to(base)) if Path(p).resolve().is_relative_to(base) \
            else str(Path(p).resolve())
    table = {"fingerprint": rel(fingerprint), "shared": rel(shared),
             "experts": {str(g): rel(m) for g, m in sorted(experts.items())}}
    atomic_write_bytes(path, json.dumps(table, indent=1).encode())


class RoutedPredictor(Predictor):
    """One output per image, from its group's expert (or the mix of ``soft`` routing); a label
    less confident than ``threshold`` goes to the shared model (``choose_threshold`` picks it on
    validation)."""

    def __init__(self, routes_path: str | Path, mode: str = "fingerprint",
                 options: InferenceOptions | None = None) -> None:
        if mode not in ("fingerprint", "soft"):
            raise PredictError(f"--route {mode}: use fingerprint or soft")
        routes = read_routes(routes_path)
        self.fp = Fingerprint.load(routes["fingerprint"])
        self.groups = sorted(routes["experts"])
        unknown = [g for g in self.groups if not 0 <= g < len(self.fp.groups)]
        if unknown:
            raise PredictError(f"{routes_path}: an expert for group {unknown[0]}, which "
                               f"{routes['fingerprint']} does not have (its groups: 0 to "
                               f"{len(self.fp.groups) - 1}); that expert would never run")
        super().__init__([routes["shared"], *(routes["experts"][g] for g in self.groups)], options)
        self.names = [f"routed ({mode})"]
        self.mode = mode
        self.threshold = 0.0

    def _model_for(self, group: int) -> int:
        return 1 + self.groups.index(group) if group in self.groups else 0

    def predict_float(self, rgb: np.ndarray) -> list[np.ndarray]:
        group, p = self.fp.label(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
        if p[group] < self.threshold:
            return [self.upscalers[0].upscale_float(rgb)]
        if self.mode == "fingerprint":
            return [self.upscalers[self._model_for(group)].upscale_float(rgb)]
        weights: dict[int, float] = {}
        for g in np.flatnonzero(p >= min(SOFT_FLOOR, p.max())):
            weights[self._model_for(int(g))] = weights.get(self._model_for(int(g)), 0.0) + float(p[g])
        total = sum(weights.values())
        return [sum(self.upscalers[m].upscale_float(rgb) * (w / total) for m, w in weights.items())]

    def predict_fused(self, rgb: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        return fuse(self.predict_float(rgb), coefficients)  # one output: the route's

    def choose_threshold(self, files: list[dict]) -> dict:
        """The label confidence from which routing pays on these validation pairs (the one of
        ``THRESHOLDS`` with the highest mean PSNR; 1.0 sends everything to the shared model)."""
        rows = []  # (confidence, PSNR routed, PSNR shared)
        for f in files:
            lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
            rgb = rgb_input(lr, f["lr"])
            group, p = self.fp.label(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
            self.threshold = 0.0
            routed = metrics.psnr(to_image(self.predict_float(rgb)[0], hr), hr, self.scale)
            shared = metrics.psnr(to_image(self.upscalers[0].upscale_float(rgb), hr), hr, self.scale)
            rows.append((float(p[group]), routed, shared))
        means = {t: float(np.mean([r if c >= t else s for c, r, s in rows]))
                 for t in (*THRESHOLDS, 1.01)}
        self.threshold = max(means, key=lambda t: (means[t], t))
        return {"threshold": self.threshold, "psnr_by_threshold": {str(t): v for t, v in means.items()}}
