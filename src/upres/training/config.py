"""Typed training configuration: YAML in, a pydantic schema that rejects unknown keys with a
did-you-mean hint and names the key path of every error, plus ``a.b=value`` overrides. Every
field carries its documentation; ``upres config schema`` writes the JSON Schema. Torch-free."""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from upres.errors import ConfigError, excerpt
from upres.io.yamlfile import parse_yaml, read_yaml
from upres.models import registry

SHIPPED_CONFIGS = Path(__file__).parent.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_DURATION_PART = r"\s*(\d+(?:\.\d+)?)\s*([smh])"
_DURATION_TEXT = rf"(?:{_DURATION_PART})+\s*"
# A wall-clock span such as 90s, 30m, 2h or 1h30m: every time budget (train.time_budget, a
# plan's time_budget, ``upres auto --budget``) is one of these.
Duration = Annotated[str, Field(pattern=f"^{_DURATION_TEXT}$", examples=["90s", "30m", "1h30m"])]


def duration_seconds(text: str) -> float:
    """Seconds in a ``Duration`` (``90s``, ``30m``, ``2h``, ``1h30m``)."""
    if not re.fullmatch(_DURATION_TEXT, str(text)):
        raise ConfigError(f"duration {text!r}: expected e.g. 90s, 30m, 2h or 1h30m")
    return sum(float(n) * {"s": 1, "m": 60, "h": 3600}[unit]
               for n, unit in re.findall(_DURATION_PART, text))


def _doc(text: str, default: Any = ..., **constraints) -> Any:
    """A field with its documentation (shown by editors through ``upres config schema``)."""
    return Field(default, description=text, **constraints)


_PARAM_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list[int]": list[int],
                "list[float]": list[float], "float | None": float | None}


class ModelConfig(_Strict):
    """The network: a registered family (``upres.models.registry``: RRDBNet with the recipe's
    variants, or a curated spandrel architecture), set by ``arch`` or ``preset``, with its
    constructor arguments in ``params``. A family's arguments may also be written directly under
    ``model`` (``model.num_feat: 96``); they are moved into ``params``."""

    arch: str = _doc("Architecture: a registered family (upres config list shows them).",
                     "RRDBNet")
    preset: str | None = _doc("A published size of a family (sets arch; upres config list "
                              "shows them).", None)
    params: dict[str, Any] = _doc(
        "The family's constructor arguments on top of its defaults and the preset, e.g. "
        "{num_feat: 96, num_grow_ch: 48} for RRDBNet or {embed_dim: 60, depths: [4, 4]} for "
        "SwinIR; checked against the family's signature.", {})
    scale: int = _doc("Upscaling factor (RRDBNet: 4, or 2 and 1 with pixel-unshuffled input).", 4,
                      ge=1, le=8)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, raw: Any) -> Any:
        """The preset's family becomes ``arch``; family arguments given as model keys move
        into ``params``."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        found = registry.presets().get(raw.get("preset"))
        if found is not None:
            if raw.get("arch", found[0]) != found[0]:
                raise ValueError(f"model.preset: {raw['preset']} is a {found[0]}, not a {raw['arch']}")
            raw["arch"] = found[0]
        arch = raw.get("arch", cls.model_fields["arch"].default)
        stray = [k for k in raw if k not in cls.model_fields]
        if not stray or arch not in registry.ARCHITECTURES:
            return raw
        table = registry.param_table(arch)
        params = dict(raw.get("params") or {})
        for key in stray:
            if key not in table:
                close = difflib.get_close_matches(key, [*cls.model_fields, *table], n=1)
                hint = f"; did you mean 'model.{close[0]}'?" if close else ""
                raise ValueError(f"model.{key}: unknown key{hint} (valid: "
                                 f"{', '.join(cls.model_fields)} and the {arch} arguments "
                                 f"{', '.join(table)})")
            if key in params:
                raise ValueError(f"model.{key} and model.params.{key} are both set")
            params[key] = raw.pop(key)
        raw["params"] = params
        return raw

    @model_validator(mode="after")
    def _check_family(self) -> ModelConfig:
        entry = registry.ARCHITECTURES.get(self.arch)
        if entry is None:
            close = difflib.get_close_matches(self.arch, list(registry.ARCHITECTURES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"model.arch: unknown architecture {self.arch!r}{hint} (known: "
                             f"{', '.join(registry.ARCHITECTURES)})")
        if self.preset is not None and self.preset not in entry.presets:
            raise ValueError(f"model.preset: {self.preset!r} is not a preset of {self.arch} "
                             f"(its presets: {', '.join(entry.presets) or 'none'})")
        if self.scale not in entry.scales:
            raise ValueError(f"model.scale: {self.arch} scales are "
                             f"{', '.join(map(str, entry.scales))}, not {self.scale}")
        _check_params(self.arch, self.params)
        return self

    def hparams(self) -> dict:
        """The constructor arguments of the network."""
        return registry.hyperparameters(self.arch, self.scale, self.preset, self.params)


def _check_params(arch: str, params: dict) -> None:
    """Unknown names (with a did-you-mean hint) and ill-typed values of a family's arguments."""
    from pydantic import TypeAdapter

    table = registry.param_table(arch)
    scale_key = registry.get(arch).scale_key
    for key, value in params.items():
        if key == scale_key:
            raise ValueError(f"model.params.{key}: the scale is model.scale")
        if key not in table:
            close = difflib.get_close_matches(key, list(table), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"model.params.{key}: unknown {arch} hyperparameter{hint} (valid: "
                             f"{', '.join(k for k in table if k != scale_key)})")
        try:
            TypeAdapter(_PARAM_TYPES[table[key]["type"]]).validate_python(value, strict=False)
        except ValidationError:
            raise ValueError(f"model.params.{key}: expected {table[key]['type']}, got "
                             f"{value!r}") from None


class InitConfig(_Strict):
    """Where the initial weights come from."""

    source: str | None = _doc("Pretrained name (realesrgan-x4plus, realesrgan-x4plus-anime, "
                              "realsr-df2k) or a weights path; null trains from scratch.", None)
    strict: bool = _doc("Every tensor must fit (hyperparameter differences are explained); "
                        "false loads only the tensors whose names and shapes match.", True)


class DataConfig(_Strict):
    """Training and validation pairs, crops and augmentation."""

    root: str | None = _doc("Competition folder with train/lr, train/hr and optional val/lr, "
                            "val/hr (--data sets it).", None)
    train_lr: str | None = _doc("Explicit LR training folder (files matched by name).", None)
    train_hr: str | None = _doc("Explicit HR training folder.", None)
    val_lr: str | None = _doc("Explicit LR validation folder.", None)
    val_hr: str | None = _doc("Explicit HR validation folder.", None)
    val_split: float = _doc("Without validation folders: a fraction (< 1) or a count (>= 1) of "
                            "the training pairs held out, chosen deterministically.", 0.1, ge=0)
    val_pairs: list[str] | None = _doc(
        "The training pairs held out for validation, by name (file stem), instead of val_split "
        "(upres auto writes the split it chose this way); with validation folders too, held out "
        "from training and validated there instead (auto: their centres).", None)
    val_max_images: int | None = _doc("Score at most this many validation pairs.", None, ge=1)
    crop: int = _doc("HR crop side in pixels (the LR crop is crop / scale).", 128, ge=8)
    hflip: bool = _doc("Random horizontal flips.", True)
    rotate: bool = _doc("Random 90-degree rotations (with hflip: all 8 dihedral transforms).", True)
    workers: int = _doc("DataLoader worker processes.", 2, ge=0)
    cache_dir: str | None = _doc("Decoded-image cache; default $XDG_CACHE_HOME/upres/data.", None)
    extra_hr: str | None = _doc(
        "Folder of extra HR images: each is degraded like the training LR (a fingerprint group "
        "drawn in the observed proportions: its fitted kernel, noise or JPEG level) and added to "
        "the training pairs. The fingerprint and the pairs are written to RUN/synth.", None)
    fingerprint: str | None = _doc(
        "A fingerprint.json (upres fingerprint) for data.groups.", None)
    groups: list[int] | None = _doc(
        "Train (and validate) only on the pairs of these fingerprint groups: a routed expert. "
        "Pairs the fingerprint does not name are fitted and given their nearest group; "
        "validation falls back to every pair when none is in the groups.", None)
    balance: Literal["none", "groups"] = _doc(
        "Pair sampling: none (every pair once per epoch) or groups (each fingerprint group of "
        "data.fingerprint equally often, so rare LR recipes are not drowned by common ones).",
        "none")

    @model_validator(mode="after")
    def _groups_need_fingerprint(self) -> DataConfig:
        for key, used in (("groups", self.groups is not None), ("balance", self.balance != "none")):
            if used and not self.fingerprint:
                raise ValueError(f"data.{key} needs data.fingerprint (a fingerprint.json)")
        return self


class Unfreeze(_Strict):
    """A stage of the freezing schedule: from ``at`` on, these parameters train too."""

    at: float = _doc("When: a fraction of train.iterations (< 1) or a step (>= 1).", ge=0)
    params: list[str] = _doc("Regular expressions matched at the start of parameter names "
                             "(e.g. 'body\\.2[0-2]\\.'); '.' unfreezes everything.", min_length=1)


class TrainConfig(_Strict):
    """The optimisation loop, its schedule, precision, logging and checkpoints."""

    iterations: int = _doc("Optimiser steps in all.", 400_000, ge=1)
    time_budget: Duration | None = _doc(
        "Wall-clock budget of this process's training, e.g. 30m, 2h, 90s: the run ends at the "
        "first step past it (or at iterations) with a final validation, checkpoint and export; "
        "a resumed run gets the budget again.", None)
    batch_size: int = _doc("Crops per step, per process.", 16, ge=1)
    lr: float = _doc("Initial learning rate.", 2e-4, gt=0)
    optimizer: Literal["adam", "adamw"] = _doc("Optimiser.", "adam")
    betas: tuple[float, float] = _doc("Adam betas.", (0.9, 0.99))
    weight_decay: float = _doc("Weight decay (decoupled for adamw).", 0.0, ge=0)
    scheduler: Literal["multistep", "cosine", "constant"] = _doc(
        "Learning-rate schedule: multistep (x gamma at each milestone), cosine (to min_lr at "
        "train.iterations) or constant; after the warmup.", "multistep")
    warmup: float = _doc("Linear warmup from 0 to lr: a fraction of train.iterations (< 1) or a "
                         "number of steps (>= 1); with cosine, the one-cycle shape short "
                         "fine-tunes like.", 0.0, ge=0)
    milestones: list[int] = _doc("Steps at which multistep multiplies the rate by gamma.",
                                 [200_000, 400_000, 600_000, 800_000])
    gamma: float = _doc("Multistep factor (0.5 halves the rate).", 0.5, gt=0)
    min_lr: float = _doc("Cosine floor.", 1e-7, ge=0)
    loss: Literal["mse", "l1", "charbonnier"] = _doc("Pixel loss; mse maximises PSNR.", "mse")
    charbonnier_eps: float = _doc("Charbonnier epsilon.", 1e-3, gt=0)
    ema: float = _doc("EMA decay of the weights that are validated and exported; 0 disables "
                      "the EMA copy.", 0.999, ge=0, lt=1)
    ema_warmup: bool = _doc(
        "Warm the EMA up: the decay at step t is min(ema, (1 + t) / (10 + t)) (TensorFlow's "
        "num_updates rule), so that a short fine-tune's EMA follows its training, not its start "
        "(0.99 alone still holds 0.99^50 = 60% of the start at step 50); at 0.99 the plain "
        "decay from step 890 on.", False)
    grad_clip: float | None = _doc("Clip the gradient norm to this value.", None, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _doc(
        "Autocast precision: bf16 (CPU or CUDA) or fp16 (CUDA only, with a GradScaler); auto: "
        "fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (bf16 is emulated on other "
        "CPUs: a fine-tune step of x4plus measured 9x slower than fp32 here).", "fp32")
    channels_last: bool = _doc("channels_last memory layout (faster convolutions).", False)
    compile: bool = _doc(
        "torch.compile the network for training; used only once its first batch matches eager "
        "(outputs and gradients), else the run trains eager and says why.", False)
    freeze: list[str] = _doc(
        "Parameters that do not train at the start: regular expressions matched at the start of "
        "their names, e.g. ['conv_first', 'body\\.([0-9]|1[0-9])\\.'] (RRDBNet: the head and the "
        "first 20 blocks). Frozen layers before every trainable one cost no backward pass.", [])
    unfreeze: list[Unfreeze] = _doc(
        "When frozen parameters start training (e.g. tail first: [{at: 0.5, params: ['.']}]).",
        [])
    seed: int = _doc("Seed of the initialisation, pair order, crops and augmentation.", 0)
    nonfinite: Literal["stop", "skip"] = _doc(
        "On a non-finite loss: stop (naming the step, keeping the last good checkpoint) or skip "
        "the batch.", "stop")
    log_every: int = _doc("Steps between loss / learning-rate / speed records.", 50, ge=1)
    val_every: int = _doc("Steps between validations.", 5000, ge=1)
    val_at_start: bool = _doc("Score the initial (e.g. pretrained) weights as step 0.", False)
    checkpoint_every: int = _doc("Steps between resumable checkpoints.", 5000, ge=1)
    keep_checkpoints: int = _doc("Checkpoints kept (older ones are deleted).", 2, ge=1)
    device: str = _doc("auto (cuda, mps, cpu), cpu, cuda, ...; torchrun sets one per process.",
                       "auto")

    @model_validator(mode="after")
    def _patterns_compile(self) -> TrainConfig:
        for key, patterns in [("freeze", self.freeze),
                              *((f"unfreeze.{i}", u.params) for i, u in enumerate(self.unfreeze))]:
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"train.{key}: {pattern!r} is not a regular expression "
                                     f"({err})") from None
        return self

    def steps(self, at: float) -> int:
        """A schedule position (a fraction of iterations if < 1, else a step) as a step."""
        return round(at * self.iterations) if at < 1 else int(at)

    def lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` as a fraction of ``lr``: the linear warmup, then the
        schedule (cosine reaches min_lr at the last iteration)."""
        warm = self.steps(self.warmup) if self.warmup else 0
        if step < warm:
            return (step + 1) / warm
        if self.scheduler == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.scheduler == "cosine":
            span = max(self.iterations - warm, 1)
            floor = min(self.min_lr / self.lr, 1.0)
            return floor + (1 - floor) * (1 + math.cos(math.pi * min(step - warm, span) / span)) / 2
        return 1.0

    def trains(self, name: str, step: int) -> bool:
        """Whether the parameter ``name`` trains at ``step`` under the freezing schedule."""
        if not any(re.match(p, name) for p in self.freeze):
            return True
        return any(re.match(p, name) for u in self.unfreeze if step >= self.steps(u.at)
                   for p in u.params)

    def budget_seconds(self) -> float | None:
        return None if self.time_budget is None else duration_seconds(self.time_budget)


class ValConfig(_Strict):
    """Validation through the same inference path as upscale."""

    crop_border: int | None = _doc("Pixels cut from each edge before scoring; default: the scale.",
                                   None, ge=0)
    tile: int = _doc("Input tile side (0: whole images).", 0, ge=0)
    tile_overlap: int = _doc("Input pixels shared by neighbouring tiles.", 192, ge=0)
    self_ensemble: Literal["off", "mean", "median"] = _doc(
        "Average the 8 flips/rotations when validating.", "off")
    backend: Literal["torch", "openvino"] = _doc(
        "Inference backend for validation: torch (exact fp32), or openvino on CPUs (converts "
        "the weights at every validation: worth it only for long validations).", "torch")
    dtype: Literal["fp32", "bf16", "fp16"] = _doc(
        "Precision of validation inference with the torch backend: fp32, or a faster one where "
        "it scores as fp32 (upres auto sets the one it measured so: x4plus validated 4.3x "
        "faster in bf16 on a CPU with AMX).", "fp32")


class Config(_Strict):
    """An upres training configuration (YAML)."""

    model: ModelConfig = _doc("The network.", ModelConfig())
    init: InitConfig = _doc("Initial weights.", InitConfig())
    data: DataConfig = _doc("Training data.", DataConfig())
    train: TrainConfig = _doc("The training loop.", TrainConfig())
    val: ValConfig = _doc("Validation.", ValConfig())

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.data.crop % self.model.scale:
            raise ValueError(f"data.crop ({self.data.crop}) must be a multiple of model.scale "
                             f"({self.model.scale})")
        if self.val.tile and self.val.tile_overlap >= self.val.tile:
            raise ValueError(f"val.tile_overlap ({self.val.tile_overlap}) must be smaller than "
                             f"val.tile ({self.val.tile})")
        return self


# --------------------------------------------------------------------------- experiment plans


class Arm(BaseModel):
    """One training run of a plan."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Arm name (its folder name).")
    overrides: dict[str, object] = Field(
        {}, description='Dotted config keys for this arm, e.g. {"model.num_feat": 96}.')
    reuse: str | None = Field(None, description="Train nothing: take this earlier arm's weights "
                              "(e.g. to score them with refine).")
    experts: bool = Field(False, description="Routed experts: the arm's budget is split between a "
                          "shared model (1 - plan.expert_share) and one fine-tuned copy per "
                          "fingerprint group of the training split; scored with fingerprint routing.")
    refine: bool = Field(False, description="Score with LR-consistency refinement, enabled for the "
                         "groups where it raises the arm's validation PSNR.")


class Plan(BaseModel):
    """An experiment plan: arms trained alike, then tabulated and plotted."""

    model_config = ConfigDict(extra="forbid")
    base: str = Field(description="A config path or shipped config name shared by all arms.")
    data: str | None = Field(None, description="Data folder (--data overrides it).")
    iterations: int = Field(ge=1, description="Training steps of every arm (with time_budget: "
                            "the most steps).")
    time_budget: Duration | None = Field(
        None,
        description="The same wall-clock budget for every arm (e.g. 3m): arms are compared at "
                    "equal time, not equal steps; the table gives each arm's steps, speed and "
                    "parameters.")
    val_every: int = Field(ge=1, description="Steps between validations (and checkpoints).")
    report_at: list[int] = Field([], description="Steps shown in the table (default: every "
                                 "validation).")
    seed: int = Field(0, description="Seed shared by all arms.")
    overrides: dict[str, object] = Field({}, description="Dotted config keys applied to every arm.")
    arms: list[Arm] = Field(min_length=1, description="The arms, the first being the baseline.")
    expert_share: float = Field(0.5, gt=0, lt=1, description="Share of an experts arm's budget "
                                "(time or iterations) spent fine-tuning the per-group experts.")
    expert_lr: float = Field(0.25, gt=0, description="An expert's learning rate as a fraction of "
                             "the arm's (experts fine-tune a trained model on few pairs).")
    score_recipes: bool = Field(False, description="Score every arm per recipe on DATA/test "
                                "(lr/, hr/ and DATA/recipes.json, as `upres make-set` writes): "
                                "recipes.md, recipes.csv, recipes.png.")

    @model_validator(mode="after")
    def _check_reuse(self) -> Plan:
        names = []
        for arm in self.arms:
            if arm.name in names:
                raise ValueError(f"arm {arm.name}: two arms have this name (each arm has its own "
                                 "folder)")
            if arm.reuse is not None and arm.reuse not in names:
                raise ValueError(f"arm {arm.name}: reuse {arm.reuse!r} is not an earlier arm")
            if arm.reuse is not None and (arm.overrides or arm.experts):
                raise ValueError(f"arm {arm.name}: a reused arm trains nothing (no overrides, "
                                 "no experts); set refine only")
            names.append(arm.name)
        late = [s for s in self.report_at if s > self.iterations]
        if late:
            raise ValueError(f"report_at: step {late[0]} is past iterations ({self.iterations}); "
                             "no arm gets there")
        off = [s for s in self.report_at if s % self.val_every and s != self.iterations]
        if off:
            raise ValueError(f"report_at: step {off[0]} is not a validation step (val_every "
                             f"{self.val_every}, and the last step); its column would be empty")
        if len(set(self.report_at)) < len(self.report_at):
            raise ValueError("report_at: a step is given twice")
        return self




# --------------------------------------------------------------------------- loading


def _submodel(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Arm``, ``list[Arm]`` or ``Arm | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _model_fields(model: type[BaseModel], path: list[str | int]) -> list[str]:
    """Names valid at ``path`` (for the did-you-mean hint); list indices are stepped over."""
    for key in path:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(str(key))
        sub = _submodel(field.annotation) if field is not None else None
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


MAX_ERRORS = 20  # validation errors listed, at most (the rest counted)


def format_errors(err: ValidationError, source: str, schema: type[BaseModel] | None = None,
                  what: str = "configuration", overrides: list[str] = ()) -> str:
    """One line per error, naming the key path (and the override that set it, where one did);
    unknown keys get a did-you-mean hint; values are quoted as short excerpts."""
    lines, from_file = [], False
    for e in err.errors()[:MAX_ERRORS]:
        loc = list(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        override = _override_of(loc, overrides)
        from_file |= override is None
        given = f" (from the override {excerpt(override)})" if override else ""
        if e["type"] == "extra_forbidden":
            valid = _model_fields(schema or Config, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + close))}'?" if close else ""
            lines.append(f"  {path}: unknown key{hint} (valid here: {', '.join(valid)}){given}")
        elif e["type"] == "value_error":  # our validators' messages name their keys themselves
            lines.append(f"  {excerpt(e['msg'].removeprefix('Value error, '), 400)[1:-1]}{given}")
        else:
            lines.append(f"  {path}: {e['msg']} (got {excerpt(e.get('input'))}){given}")
    if err.error_count() > MAX_ERRORS:
        lines.append(f"  ... and {err.error_count() - MAX_ERRORS} more")
    head = (f"{source}: invalid {what}" if from_file else "invalid override" if source == "defaults"
            else f"invalid override (applied over {source})")
    return f"{head}:\n" + "\n".join(lines)


def _override_of(loc: list, overrides: list[str]) -> str | None:
    """The ``key=value`` override that set the value at ``loc``, or None (the file or defaults)."""
    keys = [str(p) for p in loc]
    for item in reversed(overrides):
        path = item.partition("=")[0].strip().split(".")
        if keys[:len(path)] == path or (path[:len(keys)] == keys and keys):
            return item
    return None


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-4", "model.num_block=2"]`` -> nested dict, values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {excerpt(item)} is not of the form key.path=value")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {excerpt(item)} conflicts with another override")
        node[leaf] = parse_yaml(value, f"override {excerpt(item)}")
    return nested


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A config path, or the name of a shipped config or experiment plan (``smoke-cpu``,
    ``recipe-x4plus``, ``seed-ablation-cpu``)."""
    path = Path(path)
    if path.exists():
        return path
    name = path.name if path.suffix else f"{path.name}.yaml"
    for folder in (SHIPPED_CONFIGS, SHIPPED_CONFIGS / "experiments"):
        if (folder / name).exists():
            return folder / name
    shipped = sorted(p.stem for p in SHIPPED_CONFIGS.rglob("*.yaml"))
    raise ConfigError(f"{path}: no such config file (shipped: {', '.join(shipped)}; presets: "
                      f"{', '.join(registry.presets())})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Load YAML (or defaults; a preset name such as ``hat-s`` is ``zoo.yaml`` with that
    preset), apply overrides, validate."""
    raw: dict = {}
    source = "defaults"
    if path is not None and not Path(path).exists() and str(path) in registry.presets():
        # a preset name: the shared zoo settings with that preset
        data = _merge(data or {}, {"model": {"preset": str(path)}})
        path = SHIPPED_CONFIGS / "zoo.yaml"
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        raw = read_yaml(path)
        if raw is None:
            raise ConfigError(f"{path}: the file is empty, so it would set nothing; write the "
                              "settings you want in it, or leave it out to use the defaults")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = _merge(raw, data or {})
    raw = _merge(raw, parse_overrides(overrides or []))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source, overrides=overrides or [])) from None


def dump_config(cfg: Config) -> str:
    """The config as YAML that loads back to the same config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_schema(plan: bool = False) -> dict:
    """The JSON Schema of training configs (or experiment plans), for editors (YAML language
    servers) to complete and check."""
    schema = (Plan if plan else Config).model_json_schema()
    schema["title"] = "upres experiment plan" if plan else "upres training configuration"
    if not plan:  # the registry's families and presets, and family arguments as model keys
        model = schema["$defs"]["ModelConfig"]
        model["properties"]["arch"]["enum"] = list(registry.ARCHITECTURES)
        model["properties"]["preset"]["anyOf"][0]["enum"] = list(registry.presets())
        model["additionalProperties"] = True
    return schema


def shipped_configs() -> dict[str, Path]:
    """Shipped configs and experiment plans by name."""
    return {p.stem: p for p in sorted(SHIPPED_CONFIGS.rglob("*.yaml"))}


def shipped_description(path: Path) -> str:
    """The first sentence of a shipped YAML's leading comment: what ``config list`` says of it."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
    text = re.split(r"\.(?:\s|$)", " ".join(words))[0].rstrip(":")
    return text if len(text) <= 120 else text[:119] + "..."


def load_plan(path: str | Path) -> Plan:
    """An experiment plan (a path or shipped name), validated like a config."""
    path = resolve_config_path(path)
    raw = read_yaml(Path(path))
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; a plan needs its arms")
    try:
        return Plan.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(path), Plan, "plan")) from None
