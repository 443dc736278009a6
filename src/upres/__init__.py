"""upres: PSNR-first single-image super-resolution with RRDBNet.

The public API: ``RRDBNet`` (architectures), ``load_model`` / ``save_model`` (weights),
``Upscaler`` (inference), ``psnr`` / ``ssim`` (metrics). The ``upres`` command wraps them.
"""

__version__ = "0.1.0"

from upres.arch import RRDBNet, build_model  # noqa: E402
from upres.inference import InferenceOptions, Upscaler  # noqa: E402
from upres.metrics import psnr, ssim  # noqa: E402
from upres.weights import convert, load_model, load_weights, save_model  # noqa: E402

__all__ = ["RRDBNet", "build_model", "InferenceOptions", "Upscaler", "psnr", "ssim", "convert",
           "load_model", "load_weights", "save_model", "__version__"]
