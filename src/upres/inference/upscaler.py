"""Images through the tile engine: gray, RGB and RGBA, 8 and 16 bit, ``outscale``, files, and the
rules for upscaling many files into a folder (never overwrite an input, no two inputs on one
output name, keep going past a bad file)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from upres.errors import ImageError, InferenceError
from upres.inference import memory
from upres.inference.backends import BackendName, choose_backend
from upres.inference.engine import Progress, SelfEnsemble, TileEngine
from upres.inference.shard import Shard
from upres.io import images
from upres.io.files import OutputExistsError, check_output_file, check_output_folder
from upres.io.ticker import ticking
from upres.models.descriptor import ModelDescriptor

if TYPE_CHECKING:
    from torch import nn


@dataclass
class InferenceOptions:
    # Input tile side in pixels: "auto" runs the whole image when its measured activation memory
    # fits the budget (max_memory), else the fewest tiles that fit, sized to cover the image
    # exactly; 0 runs whole images; a number fixes the tile. RRDBNet x4plus sees far: two 512
    # tiles sharing 128 pixels (64 px of context at the hand-over) differed from the whole image
    # by up to 3.3/255 on a real photo, sharing 192 (96 px) by 0.06/255; so neighbours share 192
    # pixels and hand over in the middle of that overlap.
    tile: int | Literal["auto"] = "auto"
    tile_overlap: int = 192
    self_ensemble: SelfEnsemble = "off"
    ensemble_transforms: int = 8  # flips/rotations a self-ensemble runs: 2, 4 or 8 (engine.TRANSFORMS)
    device: str = "auto"
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 | int8 (OpenVINO, calibrated on ``calibrate``)
    calibrate: tuple[Path, ...] = ()  # int8: LR images to take calibration crops from
    calibrate_pairs: tuple[tuple[Path, Path], ...] = ()  # int8: (LR, HR) pairs for accuracy control
    channels_last: bool = True
    batch_size: int = 0  # tiles per forward pass; 0: 4 on CUDA, 1 elsewhere
    compile: bool = False  # torch.compile the model (test against eager on new platforms)
    alpha: Literal["bicubic", "model"] = "bicubic"
    outscale: float | None = None  # final scale if not the model's (Lanczos / area resize)
    max_pixels: int = images.DEFAULT_MAX_PIXELS  # larger inputs are refused before decoding
    backend: BackendName = "auto"  # auto: OpenVINO on CPUs if installed (see choose_backend)
    max_memory: int | str | None = None  # process target, bytes or "8G"; None: half of what is free
    cache_converted: bool = True  # keep OpenVINO conversions in the cache (not for training weights)
    convert_cache: Path | None = None  # where they are kept; None: the user's cache (ir_folder)


MAX_OUTSCALE = 16
Existing = Literal["error", "overwrite", "skip"]


def _check_options(opts: InferenceOptions) -> None:
    if opts.outscale is not None and not 0 < opts.outscale <= MAX_OUTSCALE:
        raise InferenceError(f"outscale must be in (0, {MAX_OUTSCALE}], not {opts.outscale}")
    if not 0 < opts.max_pixels <= images.MAX_PIXELS_LIMIT:
        raise InferenceError(f"max_pixels must be in [1, {images.MAX_PIXELS_LIMIT}], not "
                             f"{opts.max_pixels}")
    if opts.batch_size < 0:
        raise InferenceError("batch_size must be >= 0")


class Upscaler:
    """Upscale images with one model (an ``nn.Module``, a pretrained name or a weights path),
    run by the backend ``choose_backend`` picks; ``notes`` starts with that choice and why.

    On a CPU with OpenVINO, a named model whose conversion is cached runs without importing
    PyTorch or building the network (start-up is most of the cost of a small image)."""

    def __init__(self, model: nn.Module | str | Path, options: InferenceOptions | None = None,
                 descriptor: ModelDescriptor | None = None, **overrides) -> None:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(InferenceOptions)})
        if unknown:
            raise TypeError(f"unknown inference option {unknown[0]!r}")
        opts = dataclasses.replace(options or InferenceOptions(), **overrides)  # caller's stays
        _check_options(opts)
        self.options = opts
        self.backend = choose_backend(model, opts.device, opts.dtype, opts.backend, descriptor,
                                      opts.compile, opts.channels_last, opts.cache_converted,
                                      opts.convert_cache, _calibration(opts))
        self.notes: list[str] = [str(self.backend)]
        self.budget = memory.process_budget(opts.max_memory, self.device)
        tile, bpp = opts.tile, None
        if tile != "auto" and opts.batch_size > 1:  # a fixed tile's batch is checked against it
            bpp = self.backend.bytes_per_pixel()
        if tile == "auto":
            bpp = self.backend.bytes_per_pixel()
            if bpp is None:
                tile = 512
                self.notes.append(f"tiles of 512 (no measured footprint for {self.descriptor.arch} "
                                  f"with {self.backend.name} {self.backend.dtype})")
        on_cpu = self.device == "cpu"
        self.engine = TileEngine(self.backend.forward, self.descriptor, tile, opts.tile_overlap,
                                 opts.self_ensemble, opts.batch_size or (1 if on_cpu else 4),
                                 self.budget, bpp,
                                 # measured on the CPU: one batch of 8 flips is slower than 8
                                 # passes (PyTorch 11.3x vs 8.9x one pass at 128x128; OpenVINO
                                 # 8.43x vs 7.97x at 256x256)
                                 1 if on_cpu else None, opts.ensemble_transforms)

    @property
    def descriptor(self) -> ModelDescriptor:
        return self.backend.descriptor

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def model(self) -> nn.Module | None:
        """The PyTorch module, when PyTorch runs it (OpenVINO holds its own copy)."""
        return self.backend.module

    def upscale_array(self, img: np.ndarray, on_progress: Progress | None = None) -> np.ndarray:
        """Upscale an HxW / HxWx3 / HxWx4 uint8 or uint16 array; mode and bit depth are kept.
        Gray runs through the model as RGB and returns to gray; alpha is upscaled separately."""
        check_array(img)
        with _memory_guard(img):
            return self._upscale_checked(img, on_progress)

    def _upscale_checked(self, img: np.ndarray, on_progress: Progress | None) -> np.ndarray:
        float_img = images.to_float(img)
        alpha = None
        if float_img.ndim == 3 and float_img.shape[2] == 4:
            float_img, alpha = float_img[..., :3], float_img[..., 3]
        out = self._upscale_rgb(images.gray_to_rgb(float_img), on_progress)
        if float_img.ndim == 2:
            out = images.luma(out)
        if alpha is not None:
            out = np.concatenate([out, self._upscale_alpha(alpha)[..., None]], axis=2)
        if self.options.outscale and self.options.outscale != self.scale:
            size = (round(img.shape[1] * self.options.outscale),
                    round(img.shape[0] * self.options.outscale))
            if min(size) < 1:
                raise ImageError(f"--outscale {self.options.outscale} makes the {img.shape[1]}x"
                                 f"{img.shape[0]} image {size[0]}x{size[1]} pixels")
            shrink = self.options.outscale < self.scale
            out = cv2.resize(out, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
        return images.from_float(out, img.dtype)

    def upscale_float(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 float RGB in [0, 1] -> (sH)x(sW)x3 float32, unclamped and unrounded."""
        if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3
                and np.issubdtype(rgb.dtype, np.floating) and min(rgb.shape[:2]) >= 1):
            raise ImageError(f"upscale_float takes an HxWx3 float array in [0, 1], not "
                             f"{_describe(rgb)}")
        problem = _float_input_problem(rgb)
        if problem:
            raise ImageError(f"upscale_float's input {problem}; the input is at fault, not the model")
        with _memory_guard(rgb):
            return self._upscale_rgb(rgb.astype(np.float32, copy=False), None)

    def _upscale_rgb(self, rgb: np.ndarray, on_progress: Progress | None) -> np.ndarray:
        x = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)[None]
        if self.descriptor.in_channels == 1:
            x = (x * images.LUMA.reshape(1, 3, 1, 1)).sum(1, keepdims=True, dtype=np.float32)
        # without a progress callback (the API, demo) a heartbeat says the work goes on
        beat = (ticking(f"upscaling a {rgb.shape[1]}x{rgb.shape[0]} image") if on_progress is None
                else contextlib.nullcontext())
        with beat:
            y = self.engine(x, on_progress)[0]
        if not np.isfinite(y).all():
            raise InferenceError(f"the model's output holds NaN or infinite values "
                                 f"({self.descriptor.arch}); its weights are broken")
        if y.shape[0] == 1:
            y = np.broadcast_to(y, (3, *y.shape[1:]))
        return y.transpose(1, 2, 0)

    def _upscale_alpha(self, alpha: np.ndarray) -> np.ndarray:
        if self.options.alpha == "model":
            return self._upscale_rgb(images.gray_to_rgb(alpha), None).mean(axis=2)
        import torch
        from torch.nn import functional as F

        a = torch.from_numpy(np.ascontiguousarray(alpha))[None, None]
        return F.interpolate(a, scale_factor=self.scale, mode="bicubic",
                             align_corners=False)[0, 0].numpy()

    def output_bytes(self, img: np.ndarray) -> int:
        """Host memory the whole result of ``img`` needs: the float32 output and its HWC copy,
        the alpha plane and the rounded output."""
        h, w = img.shape[:2]
        channels = img.shape[2] if img.ndim == 3 else 1
        scale = max(self.scale, self.options.outscale or 0)
        pixels = h * w * scale * scale
        return pixels * (2 * 4 * max(channels, 3) + 4 + img.itemsize * channels)

    def streams(self, img: np.ndarray, dst: str | Path) -> bool:
        """Whether the result can be written band by band: PNG, gray or RGB, the model's scale."""
        plain = img.ndim == 2 or img.shape[2] == 3
        own_scale = self.options.outscale in (None, self.scale)
        return Path(dst).suffix.lower() == ".png" and plain and own_scale

    def check_fits(self, img: np.ndarray, src: str | Path, dst: str | Path | None = None) -> None:
        """Refuse, before any inference, a result that cannot be held within the budget (one
        that streams to PNG needs only its bands, which the tile plan accounts for)."""
        if dst is not None and self.streams(img, dst):
            return
        need, have = self.output_bytes(img), min(self.budget, memory.available_memory())
        if need > have:
            h, w = img.shape[:2]
            scale = self.options.outscale or self.scale
            why = ("" if dst is None else " (JPEG and WebP output, alpha and --outscale need the "
                   "whole result in memory; PNG output of gray or RGB streams)")
            raise ImageError(f"{src}: the {round(w * scale)}x{round(h * scale)} result needs about "
                             f"{need / 2**30:.1f} GiB of memory, over the {have / 2**30:.1f} GiB "
                             f"budget{why}; use a smaller input, --outscale or --max-memory")

    def upscale_file(self, src: str | Path, dst: str | Path, on_progress: Progress | None = None,
                     overwrite: bool = False) -> Path:
        """Read, upscale and atomically write one image; returns the written path. An existing
        ``dst`` is an error unless ``overwrite`` (checked again at the rename, so a concurrent
        writer is never replaced silently); ``dst`` is never the input. Large PNG results are
        written band by band as the tiles finish them."""
        check_output_file(dst, overwrite, inputs=(src,))
        img = images.read_image(src, self.options.max_pixels)
        self.check_fits(img, src, dst)
        if self.streams(img, dst) and self.output_bytes(img) > self.budget // 4:
            with _memory_guard(img):
                self.write_png_streamed(img, dst, on_progress, overwrite)
        else:
            images.write_image(dst, self.upscale_array(img, on_progress), overwrite)
        return Path(dst)

    def write_png_streamed(self, img: np.ndarray, dst: str | Path,
                           on_progress: Progress | None = None, overwrite: bool = False) -> None:
        """Upscale a gray or RGB image straight into a PNG file, rows written as they finish:
        memory grows with the tile and the width, not the area. The input stays in its own
        samples (converted tile by tile) and counts against the budget."""
        h, w = img.shape[:2]
        gray = img.ndim == 2
        if self.descriptor.in_channels == 1:  # single-channel models see the luma
            f = images.to_float(img)
            x = np.ascontiguousarray(f if gray else images.luma(f))[None, None]
        else:
            x = images.gray_to_rgb(img).transpose(2, 0, 1)[None]
        self.engine.reserved = x.nbytes

        def rows():
            for _, band in self.engine.stream(x, on_progress):
                if not np.isfinite(band).all():
                    raise InferenceError(f"the model's output holds NaN or infinite values "
                                         f"({self.descriptor.arch}); its weights are broken")
                for r in range(0, band.shape[1], 64):  # a few rows at a time: small temporaries
                    part = band[:, r:r + 64]
                    rgb = (np.broadcast_to(part, (3, *part.shape[1:])) if part.shape[0] == 1
                           else part).transpose(1, 2, 0)
                    out = images.from_float(images.luma(rgb) if gray else rgb, img.dtype)
                    big_endian = out.astype(">u2") if img.dtype == np.uint16 else out
                    yield from (row.tobytes() for row in big_endian.reshape(out.shape[0], -1))

        try:
            images.write_png_rows(dst, rows(), w * self.scale, h * self.scale, gray,
                                  img.itemsize * 8, overwrite)
        finally:
            self.engine.reserved = 0


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def check_array(img) -> None:
    """An image array upres upscales: HxW, HxWx3 or HxWx4, uint8 or uint16, not empty."""
    ok = (isinstance(img, np.ndarray) and img.dtype in (np.uint8, np.uint16)
          and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4)))
          and min(img.shape[:2]) >= 1)
    if not ok:
        raise ImageError(f"upscale_array takes an HxW, HxWx3 or HxWx4 uint8 or uint16 image, "
                         f"not {_describe(img)} (float RGB in [0, 1]: upscale_float)")


@contextlib.contextmanager
def _memory_guard(img: np.ndarray):
    """An allocation that fails becomes an error naming the image size (the process lives on)."""
    try:
        yield
    except MemoryError:
        raise InferenceError(f"out of memory upscaling a {img.shape[1]}x{img.shape[0]} image; "
                             "use --max-memory, a smaller --tile or a smaller input") from None


# --------------------------------------------------------------------------- many files


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Image files from files and folders, and the problems found (missing, empty folders)."""
    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = images.list_images(path)
            if not found:
                errors.append(f"{path}: folder holds no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


@dataclass
class BatchResult:
    written: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per failed input, naming it
    skipped: list[Path] = field(default_factory=list)  # outputs that existed (existing="skip")


class _TileBar:
    """A per-image progress bar over its forward passes (tiles, and flips with self-ensemble),
    shown from the start for images of more than one pass."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled, self.bar = name, enabled, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.enabled and total > 1 and self.bar is None:
            self.bar = tqdm(total=total, desc=f"  {self.name}", unit="pass", leave=False,
                            disable=None)
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_suffix(suffix: str) -> None:
    """An output suffix stays a part of a file name: no folders, no way out of ``-o``."""
    if any(c in suffix for c in "/\\\0") or suffix in (".", ".."):
        raise InferenceError(f"--suffix {suffix!r}: a suffix is part of a file name; it may not "
                             "hold /, \\ or name a folder")


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symbolic link loop
        return None


def _ext(src: Path, ext: str) -> str:
    """The output extension: ``ext``, or the input's own with ``auto``."""
    return src.suffix[1:].lower() if ext == "auto" else ext


def plan_outputs(files: list[Path], out_dir: Path, ext: str, suffix: str
                 ) -> list[tuple[Path, Path, str | None]]:
    """(input, output, problem) for every file, the same in every process: an output that would
    overwrite an input, or that an earlier input already claims, is a problem; so is an input
    that cannot be resolved (a symbolic link loop). With the output folder among the inputs,
    files that are outputs of other inputs (``STEM<suffix>.<ext>``) are not inputs again."""
    resolved = {f: _resolved(f) for f in files}
    outputs = ({_resolved(out_dir / f"{f.stem}{suffix}.{_ext(f, ext)}") for f in files} if suffix
               else set())
    if suffix and out_dir.is_dir():  # an earlier run's outputs in the input folder: not inputs
        resolved = {f: r for f, r in resolved.items()
                    if not (r in outputs and f.parent.resolve() == out_dir.resolve())}
        files = list(resolved)
    claimed: set[Path] = set()
    jobs = []
    for src in files:
        dst = out_dir / f"{src.stem}{suffix}.{_ext(src, ext)}"
        target, problem = _resolved(dst), None
        if resolved[src] is None:
            problem = f"{src}: cannot resolve the path (a symbolic link loop?)"
        elif target in set(resolved.values()):
            problem = f"{src}: output {dst} would overwrite an input; choose another -o or --suffix"
        elif target in claimed:
            problem = f"{src}: output {dst} is also the output of an earlier input with the same name"
        claimed.add(target)
        jobs.append((src, dst, problem))
    return jobs


def _counted(jobs: list, bar, step: int):
    for job in jobs:
        yield job
        bar.update(min(step, bar.total - bar.n))
    bar.close()


def upscale_files(upscaler: Upscaler, inputs: Iterable[str | Path], out_dir: str | Path,
                  ext: str = "png", suffix: str = "", progress: bool = True,
                  on_error: Callable[[str], None] | None = None,
                  existing: Existing = "error", shard: Shard | None = None,
                  on_note: Callable[[str], None] | None = None) -> BatchResult:
    """Upscale files and folders into ``out_dir/<stem><suffix>.<ext>`` (``ext`` auto: each
    input's own). An input is never
    overwritten, two inputs never write one output, and a bad file is reported (``on_error``,
    as it happens) while the others go on. An existing output is an error unless ``existing``
    is ``overwrite`` or ``skip`` (resume an interrupted batch). Under torchrun each process
    (``shard``) takes its share of the files; ``on_note`` hears each image's tile plan before
    the image runs."""
    from tqdm import tqdm

    shard = shard or Shard()
    result = BatchResult()
    check_suffix(suffix)
    check_output_folder(out_dir, overwrite=True)  # a file where the folder should be
    files, problems = collect_inputs(inputs)
    report = on_error or (lambda message: None)

    def fail(message: str) -> None:
        result.errors.append(message)
        report(message)

    for message in problems if shard.main else []:
        fail(message)
    everything = plan_outputs(files, Path(out_dir), ext, suffix)
    jobs = shard.take(everything)
    # Under torchrun rank 0's bar stands for all ranks: each of its images counts world images.
    bar = tqdm(total=len(everything), desc="images" + (" (all ranks)" if shard.world > 1 else ""),
               unit="img", disable=None if progress and shard.main else True)
    for src, dst, problem in _counted(jobs, bar, shard.world):
        if problem is None and (dst.exists() or dst.is_symlink()) and existing != "overwrite":
            if existing == "skip":
                result.skipped.append(dst)
                continue
            problem = (f"{src}: output {dst} exists; pass --overwrite to replace it or "
                       "--skip-existing to keep it")
        if problem:
            fail(problem)
            continue
        bar = _TileBar(src.name, progress and shard.main)
        if on_note:
            upscaler.engine.on_plan = lambda plan, name=src.name: on_note(f"{name}: {plan}")
        try:
            upscaler.upscale_file(src, dst, bar, overwrite=existing == "overwrite")
            result.written.append(dst)
        except OutputExistsError as err:  # another process wrote it meanwhile
            if existing == "skip":
                result.skipped.append(dst)
            else:
                fail(f"{src}: {err}")
        except (ImageError, InferenceError) as err:
            fail(str(err))
        finally:
            bar.close()
            upscaler.engine.on_plan = None
    return result


def _float_input_problem(rgb: np.ndarray) -> str | None:
    """What is wrong with a float image's values (NaN, infinity, outside [0, 1]), or None; a model
    given such values returns nonsense that would be blamed on its weights."""
    finite = np.isfinite(rgb)
    if not finite.all():
        return (f"holds {rgb.size - int(finite.sum()):,} NaN or infinite values of {rgb.size:,}")
    low, high = float(rgb.min()), float(rgb.max())
    if low < 0.0 or high > 1.0:
        return f"has values from {low:.4g} to {high:.4g}, outside [0, 1]"
    return None


def _calibration(opts: InferenceOptions):
    """What int8 calibrates on, read only where a quantization must be made (None: nothing)."""
    if opts.dtype != "int8" or not (opts.calibrate or opts.calibrate_pairs):
        return None
    from upres.inference.int8 import calibration_set

    lr_files = [Path(p) for p in opts.calibrate] or [Path(lr) for lr, _ in opts.calibrate_pairs]
    return lambda: calibration_set(lr_files, [(Path(a), Path(b)) for a, b in opts.calibrate_pairs])
