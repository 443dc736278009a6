"""Typed training configuration: YAML in, a pydantic schema that rejects unknown keys with a
did-you-mean hint and names the key path of every error, plus ``a.b=value`` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SHIPPED_CONFIGS = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration cannot be used; the message names the file and key paths."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    arch: Literal["RRDBNet"] = "RRDBNet"
    scale: Literal[1, 2, 4] = 4
    num_in_ch: int = Field(3, ge=1)
    num_out_ch: int = Field(3, ge=1)
    num_feat: int = Field(64, ge=1)
    num_block: int = Field(23, ge=1)
    num_grow_ch: int = Field(32, ge=1)
    # Variants (see upres.arch): RRDB groups after upsampling steps, gated dense convolutions,
    # and the rotation model (4 rotated copies through one network, averaged).
    post_up_blocks: list[int] = Field(default_factory=list, max_length=2)
    gated: bool = False
    rotation: bool = False

    def hparams(self) -> dict:
        return self.model_dump(exclude={"arch"})


class InitConfig(_Strict):
    source: str | None = None  # pretrained name or weights path; None trains from scratch
    strict: bool = True  # False loads only tensors whose names and shapes match


class DataConfig(_Strict):
    root: str | None = None  # competition folder: train/lr, train/hr, optional val/lr, val/hr
    train_lr: str | None = None  # or explicit folders, matched by file name
    train_hr: str | None = None
    val_lr: str | None = None
    val_hr: str | None = None
    val_split: float = Field(0.1, ge=0)  # without val folders: a fraction (<1) or a count (>=1)
    val_max_images: int | None = Field(None, ge=1)
    crop: int = Field(128, ge=8)  # HR crop side
    hflip: bool = True
    rotate: bool = True
    workers: int = Field(2, ge=0)
    cache_dir: str | None = None  # decoded-image cache; default $XDG_CACHE_HOME/upres/data


class TrainConfig(_Strict):
    iterations: int = Field(400_000, ge=1)
    batch_size: int = Field(16, ge=1)  # per process
    lr: float = Field(2e-4, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = [200_000, 400_000, 600_000, 800_000]
    gamma: float = Field(0.5, gt=0)
    min_lr: float = Field(1e-7, ge=0)  # cosine floor
    loss: Literal["mse", "l1", "charbonnier"] = "mse"
    charbonnier_eps: float = Field(1e-3, gt=0)
    ema: float = Field(0.999, ge=0, lt=1)  # 0 disables the EMA copy
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    nonfinite: Literal["stop", "skip"] = "stop"
    log_every: int = Field(50, ge=1)
    val_every: int = Field(5000, ge=1)
    val_at_start: bool = False  # score the initial (e.g. pretrained) weights as step 0
    checkpoint_every: int = Field(5000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    device: str = "auto"


class ValConfig(_Strict):
    crop_border: int | None = Field(None, ge=0)  # default: the scale
    tile: int = Field(0, ge=0)
    tile_overlap: int = Field(192, ge=0)
    self_ensemble: Literal["off", "mean", "median"] = "off"


class Config(_Strict):
    model: ModelConfig = ModelConfig()
    init: InitConfig = InitConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    val: ValConfig = ValConfig()

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.data.crop % self.model.scale:
            raise ValueError(f"data.crop ({self.data.crop}) must be a multiple of model.scale "
                             f"({self.model.scale})")
        lr_multiple = {4: 1, 2: 2, 1: 4}[self.model.scale]
        if (self.data.crop // self.model.scale) % lr_multiple:
            raise ValueError(f"data.crop / scale must be a multiple of {lr_multiple} for scale "
                             f"{self.model.scale} (pixel-unshuffle)")
        return self


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


def format_errors(err: ValidationError, source: str, schema: type[BaseModel] | None = None,
                  what: str = "configuration") -> str:
    """One line per error, naming the key path; unknown keys get a did-you-mean hint."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            valid = _model_fields(schema or Config, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + close))}'?" if close else ""
            lines.append(f"  {path}: unknown key{hint} (valid here: {', '.join(valid)})")
        else:
            lines.append(f"  {path}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: invalid {what}:\n" + "\n".join(lines)


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-4", "model.num_block=2"]`` -> nested dict, values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[leaf] = yaml.safe_load(value)
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
    raise ConfigError(f"{path}: no such config file (shipped: {', '.join(shipped)})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Load YAML (or defaults), apply overrides, validate."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = _merge(raw, data or {})
    raw = _merge(raw, parse_overrides(overrides or []))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
