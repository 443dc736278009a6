"""``upres fingerprint``: fit every training pair's degradation, group the pairs into recipes, and
describe each group well enough to synthesize more pairs like it.

Grouping: two pairs belong together when their kernel profiles agree within a few standard errors
of the fit (plus a small floor for what a linear kernel cannot model), their residual noise levels
within a factor of two, their JPEG blockiness within 0.2, their residual correlation within
0.15 and their JPEG grid evidence (``kernels.grid_evidence``, capped at ``GRID_CAP`` so that
content does not split one JPEG quality) within 0.1. Average-linkage clustering with that
tolerance as the cut chooses the number of groups; groups smaller than ``min_group`` pairs join
their nearest group."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from upres.degradation import blind, kernels, recipes
from upres.errors import DataError
from upres.io.files import atomic_write_bytes
from upres.io.images import read_image
from upres.io.pairs import PairCache
from upres.scoring.metrics import bicubic_upscale, psnr

FORMAT = "upres-fingerprint/1"
TOLERANCE = {"profile_z": 4.0, "profile_floor": 0.0015, "noise_ratio": 2.0, "blockiness": 0.2,
             "correlation": 0.15, "grid": 0.1}
GRID_CAP = 0.2  # grid evidence above this is JPEG for sure; how much more is the content's doing


def _grid(value: float) -> float:
    """Grid evidence as grouping compares it: clipped to 0..GRID_CAP."""
    return min(max(value, 0.0), GRID_CAP)


@dataclass
class PairStats:
    name: str
    group: int
    noise: float
    blockiness: float
    correlation: float
    offset: tuple[float, float]
    spread: float
    bicubic_psnr: float
    recipe: str | None = None  # the true recipe, when the set records it
    grid: float = 0.0  # JPEG grid evidence of the LR (0.0 in fingerprints written before it)


@dataclass
class Group:
    id: int
    count: int
    kernel: list[list[float]]  # mean fitted kernel, sums to 1
    noise: float  # median residual level
    blockiness: float
    correlation: float
    spread: float
    offset: tuple[float, float]
    bicubic_psnr: float
    post: dict  # estimated after-resampling step: {"kind": "none" | "noise" | "jpeg", "level": ...}
    examples: list[str] = field(default_factory=list)
    recipes: dict[str, int] = field(default_factory=dict)  # true recipe counts, when known
    grid: float = 0.0  # median JPEG grid evidence (0.0 in fingerprints written before it)


@dataclass
class Fingerprint:
    scale: int
    kernel_size: int
    pairs: list[PairStats]
    groups: list[Group]
    classifier: dict | None = None  # blind LR classifier (see upres.degradation.blind)
    seconds: float = 0.0
    source: str = ""

    def proportions(self) -> np.ndarray:
        counts = np.array([g.count for g in self.groups], float)
        return counts / counts.sum()

    def purity(self) -> float | None:
        """Share of pairs whose group's most common true recipe is their own (None: unknown)."""
        if not self.pairs or any(p.recipe is None for p in self.pairs):
            return None
        return sum(max(g.recipes.values()) for g in self.groups) / len(self.pairs)

    def save(self, path: str | Path) -> None:
        data = {"format": FORMAT, **asdict(self)}
        atomic_write_bytes(path, json.dumps(data, indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable fingerprint ({err})") from None
        if not isinstance(data, dict) or data.pop("format", None) != FORMAT:
            raise DataError(f"{path}: not an upres fingerprint (written by `upres fingerprint`)")
        data["pairs"] = [PairStats(**p) for p in data["pairs"]]
        data["groups"] = [Group(**g) for g in data["groups"]]
        return cls(**data)

    def kernel(self, group: int) -> np.ndarray:
        return np.asarray(self.groups[group].kernel, np.float32)

    def assign(self, fit: kernels.PairFit) -> int:
        """The group nearest to a pair fitted later (in units of the grouping tolerance)."""
        tol = TOLERANCE
        spread = tol["profile_z"] * np.sqrt(2 * fit.profile_se ** 2 + tol["profile_floor"] ** 2)
        scores = []
        for g in self.groups:
            k = self.kernel(g.id)
            profile = np.concatenate([k.sum(0), k.sum(1)])
            scores.append(max(
                float(np.sqrt(((fit.profile() - profile) ** 2).mean())) / spread,
                abs(np.log(max(fit.noise, 1e-3) / max(g.noise, 1e-3))) / np.log(tol["noise_ratio"]),
                abs(fit.blockiness - g.blockiness) / tol["blockiness"],
                abs(fit.correlation - g.correlation) / tol["correlation"],
                abs(_grid(fit.grid) - _grid(g.grid)) / tol["grid"]))
        return int(np.argmin(scores))

    def label(self, lr: np.ndarray) -> tuple[int, np.ndarray]:
        """The group an LR-only image (8-bit RGB) most likely came from, and the probability of
        every group, by the blind classifier."""
        if not self.classifier:
            raise DataError("the fingerprint has no classifier (written by an older upres?)")
        p = blind.probabilities(self.classifier, blind.image_vector(lr), len(self.groups))
        return int(p.argmax()), p

    def groups_of(self, pairs) -> list[int]:
        """Each pair's group: from the fingerprint by name, else fitted and assigned."""
        known = {p.name: p.group for p in self.pairs}
        out = []
        for pair in pairs:
            if pair.name in known:
                out.append(known[pair.name])
                continue
            try:
                fit = kernels.fit_pair(read_image(pair.lr), read_image(pair.hr), self.scale)
            except ValueError as err:
                raise DataError(f"{pair.lr}: {err}") from None
            out.append(self.assign(fit))
        return out


def distances(fits: list[kernels.PairFit]) -> np.ndarray:
    """Pairwise distances in units of the grouping tolerance (1.0: at the edge)."""
    from scipy.spatial.distance import cdist

    tol = TOLERANCE
    profiles = np.array([f.profile() for f in fits])
    se = np.array([f.profile_se for f in fits])
    rms = cdist(profiles, profiles) / np.sqrt(profiles.shape[1])
    d = rms / (tol["profile_z"] * np.sqrt(se[:, None] ** 2 + se[None] ** 2 + tol["profile_floor"] ** 2))
    for values, width in ((np.log([max(f.noise, 1e-3) for f in fits]), np.log(tol["noise_ratio"])),
                          ([f.blockiness for f in fits], tol["blockiness"]),
                          ([f.correlation for f in fits], tol["correlation"]),
                          ([_grid(f.grid) for f in fits], tol["grid"])):
        v = np.asarray(values, float)
        np.maximum(d, np.abs(v[:, None] - v[None]) / width, out=d)
    return d


def cluster(fits: list[kernels.PairFit], min_group: int | None = None) -> np.ndarray:
    """Group labels 0..G-1, largest group first."""
    from sklearn.cluster import AgglomerativeClustering

    n = len(fits)
    if n == 1:
        return np.zeros(1, int)
    d = distances(fits)
    labels = AgglomerativeClustering(None, metric="precomputed", linkage="average",
                                     distance_threshold=1.0).fit_predict(d)
    min_group = min_group or max(2, round(0.02 * n))
    while True:  # fold the smallest undersized group into its nearest (average distance) group
        ids, counts = np.unique(labels, return_counts=True)
        small = [i for i, c in zip(ids, counts) if c < min_group]
        if not small or len(ids) == 1:
            break
        g = min(small, key=lambda i: counts[list(ids).index(i)])
        members = labels == g
        others = [i for i in ids if i != g]
        nearest = min(others, key=lambda o: d[np.ix_(members, labels == o)].mean())
        labels[members] = nearest
    order = sorted(np.unique(labels), key=lambda i: -(labels == i).sum())
    return np.array([order.index(v) for v in labels])


def _bicubic_psnr(lr: np.ndarray, hr: np.ndarray, scale: int, block: int = kernels.BLOCK) -> float:
    """Bicubic PSNR (the baseline every upres score stands beside) on a central crop of at most
    ``block`` LR pixels a side, border ``scale`` cut as in validation."""
    h, w = lr.shape[:2]
    bh, bw = min(block, h), min(block, w)
    y, x = (h - bh) // 2, (w - bw) // 2
    up = bicubic_upscale(np.ascontiguousarray(lr[y:y + bh, x:x + bw]), scale)
    return psnr(up, np.asarray(hr[y * scale:(y + bh) * scale, x * scale:(x + bw) * scale]), scale)


def synthesize(hr: np.ndarray, kernel: np.ndarray, post: dict, scale: int, seed: int) -> np.ndarray:
    """An 8-bit LR image made from an 8-bit RGB HR image by a fitted kernel and post step."""
    lr = kernels.apply_kernel(hr.astype(np.float32), kernel, scale)
    lr = np.clip(np.rint(lr), 0, 255).astype(np.uint8)
    if post["kind"] == "noise":
        lr = recipes.add_noise(lr, post["level"], seed)
    elif post["kind"] == "jpeg":
        lr = recipes.jpeg_roundtrip(lr, int(post["level"]))
    return lr


_LUMA_NOISE = float(np.sqrt((np.array([0.299, 0.587, 0.114]) ** 2).sum()))  # luma sigma / RGB sigma


def _stats_vector(fit: kernels.PairFit) -> np.ndarray:
    return np.array([np.log(max(fit.noise, 1e-3)) / np.log(TOLERANCE["noise_ratio"]),
                     fit.blockiness / TOLERANCE["blockiness"],
                     fit.correlation / TOLERANCE["correlation"]])


def estimate_post(samples: list[tuple[np.ndarray, np.ndarray]], kernel: np.ndarray,
                  target: np.ndarray, scale: int) -> dict:
    """The after-resampling step (none, Gaussian noise of a level, JPEG of a quality) whose
    synthesized pairs best reproduce the group's residual statistics ``target``."""
    clean_fits = [kernels.fit_pair(synthesize(hr, kernel, {"kind": "none"}, scale, 0), hr, scale,
                                   errors=False) for _, hr in samples]
    floor = float(np.median([f.noise for f in clean_fits]))
    noise_level = float(np.exp(target[0] * np.log(TOLERANCE["noise_ratio"])))
    clean = np.median([_stats_vector(f) for f in clean_fits], axis=0)
    if float(np.abs(clean - target).max()) <= 0.5:  # the kernel alone explains the group
        return {"kind": "none", "distance": round(float(np.abs(clean - target).max()), 3)}
    sigma = np.sqrt(max(noise_level ** 2 - floor ** 2, 0.0)) / _LUMA_NOISE
    candidates = [{"kind": "none"}] + ([{"kind": "noise", "level": round(float(sigma), 2)}]
                                       if sigma > 0.3 else [])
    candidates += [{"kind": "jpeg", "level": q} for q in (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)]
    best, best_d = candidates[0], np.inf
    for post in candidates:
        stats = np.median([_stats_vector(kernels.fit_pair(synthesize(hr, kernel, post, scale, i), hr,
                                                          scale, errors=False))
                           for i, (_, hr) in enumerate(samples)], axis=0)
        d = float(np.abs(stats - target).max())
        if d < best_d:
            best, best_d = post, d
    return {**best, "distance": round(best_d, 3)}


def central_crop(lr: np.ndarray, hr: np.ndarray, scale: int, side: int = 64):
    """A central LR crop of up to ``side`` pixels a side (8-aligned for the JPEG grid) and its HR."""
    h, w = lr.shape[:2]
    sh, sw = min(side, h), min(side, w)
    y, x = (h - sh) // 2 // 8 * 8, (w - sw) // 2 // 8 * 8
    return (np.ascontiguousarray(lr[y:y + sh, x:x + sw]),
            np.ascontiguousarray(hr[y * scale:(y + sh) * scale, x * scale:(x + sw) * scale]))


def _summarize(gid: int, idx: np.ndarray, fits, stats: list[PairStats], load, scale: int) -> Group:
    members = [fits[i] for i in idx]
    kernel = np.mean([f.kernel for f in members], axis=0)
    kernel /= kernel.sum()
    target = np.median([_stats_vector(f) for f in members], axis=0)
    closest = sorted(idx, key=lambda i: float(np.abs(_stats_vector(fits[i]) - target).max()))[:3]
    post = estimate_post([central_crop(*load(i), scale) for i in closest], kernel, target, scale)
    names = [stats[i].name for i in idx]
    true = [stats[i].recipe for i in idx if stats[i].recipe is not None]
    return Group(
        id=gid, count=len(idx), kernel=np.round(kernel, 6).tolist(),
        noise=float(np.median([f.noise for f in members])),
        blockiness=float(np.median([f.blockiness for f in members])),
        correlation=float(np.median([f.correlation for f in members])),
        grid=float(np.median([f.grid for f in members])),
        spread=float(np.median([f.spread for f in members])),
        offset=tuple(float(v) for v in np.median([f.offset for f in members], axis=0)),
        bicubic_psnr=float(np.mean([stats[i].bicubic_psnr for i in idx])),
        post=post, examples=[stats[i].name for i in closest[:3]] or names[:3],
        recipes={r: true.count(r) for r in sorted(set(true), key=lambda r: (-true.count(r), r))})


SYNTH_FOR_CLASSIFIER = 1200  # at most this many synthesized LR images train the classifier
CLASSIFIER_SIDE = 128  # LR side of the central crops the classifier sees (bounded cost)
MERGE_RMS = 1.0  # groups whose recipes give LR images closer than this (8-bit RMS) are one recipe


def recipe_distance(a: Group, b: Group, samples: list[np.ndarray], scale: int) -> float:
    """How far apart two groups' recipes are, in units of the merge tolerance (<= 1: one recipe):
    the RMS difference of the LR images their kernels make of the same HR crops (over
    ``MERGE_RMS``), and their residual statistics and post steps (over the grouping tolerance)."""
    ka, kb = np.asarray(a.kernel, np.float32), np.asarray(b.kernel, np.float32)
    rms = max(float(np.sqrt(np.mean((kernels.apply_kernel(hr, ka, scale)
                                      - kernels.apply_kernel(hr, kb, scale)) ** 2)))
              for hr in samples)
    tol = TOLERANCE
    parts = [rms / MERGE_RMS,
             abs(np.log(max(a.noise, 1e-3) / max(b.noise, 1e-3))) / np.log(tol["noise_ratio"]),
             abs(a.blockiness - b.blockiness) / tol["blockiness"],
             abs(a.correlation - b.correlation) / tol["correlation"],
             abs(_grid(a.grid) - _grid(b.grid)) / tol["grid"]]
    if _post_kind(a.post) != _post_kind(b.post):
        parts.append(np.inf)
    elif a.post["kind"] == "jpeg":
        parts.append(abs(a.post["level"] - b.post["level"]) / 15)
    elif _post_kind(a.post) == "noise":
        parts.append(abs(np.log(a.post["level"] / b.post["level"])) / np.log(1.5))
    return float(max(parts))


def _post_kind(post: dict) -> str:
    """A step's kind, noise below 1/255 counting as none (what content alone leaves)."""
    return "none" if post["kind"] == "noise" and post.get("level", 0) < 1.0 else post["kind"]


def merge_recipes(groups: list[Group], load, members: list[np.ndarray], scale: int) -> np.ndarray:
    """Group ids -> recipe ids: groups within the merge tolerance of each other (single linkage)
    share a recipe (an image's content can split one recipe's pairs into several groups; the
    classifier and routing work per recipe)."""
    samples = [np.asarray(central_crop(*load(int(i)), scale, side=48)[1], np.float32)
               for idx in members for i in idx[:2]]
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(groups)):
        for j in range(i + 1, len(groups)):
            if root(i) != root(j) and recipe_distance(groups[i], groups[j], samples, scale) <= 1:
                parent[root(j)] = root(i)
    roots = sorted({root(i) for i in range(len(groups))})
    return np.array([roots.index(root(i)) for i in range(len(groups))])


def train_classifier(fp: Fingerprint, load, n_pairs: int, progress: bool = False) -> dict:
    """The blind classifier, trained on the real LR images and on central crops of the HR images
    degraded by every group: the same content under every recipe, so that the classifier learns
    the recipe rather than the scene."""
    from tqdm import tqdm

    vectors, labels, sources, real = [], [], [], []
    step = max(1, -(-n_pairs * len(fp.groups) // SYNTH_FOR_CLASSIFIER))
    for i in tqdm(range(n_pairs), desc="blind classifier: images", unit="pair",
                  disable=not progress):
        lr, hr = central_crop(*load(i), fp.scale, side=CLASSIFIER_SIDE)
        vectors.append(blind.image_vector(lr))
        labels.append(fp.pairs[i].group)
        sources.append(i)
        real.append(True)
        if i % step:
            continue
        for g in fp.groups:
            vectors.append(blind.image_vector(synthesize(hr, fp.kernel(g.id), g.post, fp.scale, i)))
            labels.append(g.id)
            sources.append(i)
            real.append(False)
    if progress:
        tqdm.write(f"fitting the blind classifier on {len(vectors)} images "
                   f"({sum(real)} real), cross-validated ...")
    return blind.train(vectors, labels, sources=sources, real=real)


def _describe_groups(group_of: np.ndarray, fits, stats, load, scale: int,
                     progress: bool = False) -> list[Group]:
    from tqdm import tqdm

    ids = range(int(group_of.max()) + 1)
    return [_summarize(g, np.flatnonzero(group_of == g), fits, stats, load, scale)
            for g in tqdm(ids, desc="describing groups", unit="group", disable=not progress)]


def fingerprint(pairs, scale: int = 4, cache_dir: str | Path | None = None,
                labels: dict[str, str] | None = None, progress: bool = True,
                min_group: int | None = None, classify: bool = True) -> tuple[Fingerprint, list]:
    """Fit, group and describe ``pairs`` (``upres.io.pairs.Pair``) and, with ``classify``,
    train the blind LR classifier on their groups; returns the fingerprint and the decoded-pair
    cache (for the report)."""
    from tqdm import tqdm

    start = time.perf_counter()
    cache = PairCache(pairs, scale, cache_dir, progress=progress)
    fits, stats = [], []
    for i, pair in enumerate(tqdm(pairs, desc="fitting kernels", unit="pair", disable=not progress)):
        lr, hr = cache.load(i)
        try:
            fit = kernels.fit_pair(lr, hr, scale)
        except ValueError as err:
            raise DataError(f"{pair.lr}: {err}") from None
        fits.append(fit)
        stats.append(PairStats(pair.name, 0, fit.noise, fit.blockiness, fit.correlation,
                               fit.offset, fit.spread, _bicubic_psnr(lr, hr, scale),
                               (labels or {}).get(pair.name), fit.grid))
    group_of = cluster(fits, min_group)
    groups = _describe_groups(group_of, fits, stats, cache.load, scale, progress)
    recipe_of = merge_recipes(groups, cache.load, [np.flatnonzero(group_of == g.id) for g in groups],
                              scale)
    if recipe_of.max() + 1 < len(groups):  # merged: describe the recipes, largest first
        merged = recipe_of[group_of]
        order = sorted(np.unique(merged), key=lambda r: -(merged == r).sum())
        group_of = np.array([order.index(r) for r in merged])
        groups = _describe_groups(group_of, fits, stats, cache.load, scale, progress)
    for st, g in zip(stats, group_of):
        st.group = int(g)
    result = Fingerprint(scale, kernels.KERNEL, stats, groups)
    if classify:
        result.classifier = train_classifier(result, cache.load, len(pairs), progress)
    result.seconds = round(time.perf_counter() - start, 3)
    return result, cache
