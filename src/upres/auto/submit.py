"""Phase submit: the test set predicted as the end decided, into ``RUN/submission``."""

from __future__ import annotations

import time
from pathlib import Path

from upres.auto.ending import end_coefficients
from upres.auto.journal import AutoRun
from upres.auto.measure import BICUBIC, FP32, end_options
from upres.inference.shard import Shard
from upres.io import images


def submit(run: AutoRun) -> dict:
    """The test set through the chosen models, self-ensemble and refinement (or bicubic, where
    nothing beat it in the time), into ``RUN/submission`` (a folder that appears complete) and
    ``RUN/submission.zip``. A kill after the folder was published leaves one to replace."""
    from upres.inference.submission import write_bicubic, zip_folder

    end, folder = run.journal["end"], run.out / "submission"
    inputs = images.list_images(run.data / "test" / "lr")
    start = time.perf_counter()
    written = (write_bicubic(inputs, folder, run.scale, overwrite=True) if end["models"] == [BICUBIC]
               else _submit_models(run, end, inputs))
    archive = zip_folder(folder, written, overwrite=True)
    return {"images": len(written), "predict_seconds": round(time.perf_counter() - start, 1),
            "folder": str(folder), "zip": str(archive)}


def _submit_models(run: AutoRun, end: dict, inputs: list[Path]) -> list[str]:
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import Predictor
    from upres.inference.submission import write_submission

    dtype = end.get("dtype") or run.journal["candidates"].get("precision", FP32)["dtype"]
    options = end_options(run, dtype, self_ensemble="mean" if end["self_ensemble"] else "off",
                          ensemble_transforms=end["self_ensemble"] or 8)
    predictor = Predictor(end["models"], options)  # files, or a pretrained name left untrained
    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if end["refine"]["keep"]:
        predictor.refiner = Refiner(fp)
        predictor.refiner.enabled = set(end["refine"]["enabled_groups"])
        predictor.refiner.threshold = end["refine"]["threshold"]
    return write_submission(predictor, end_coefficients(end, fp), inputs, run.out / "submission",
                            run.options.progress, Shard(device=run.shard.device), overwrite=True)
