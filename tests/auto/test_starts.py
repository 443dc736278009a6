"""Which named starts ``upres auto`` tries: by default every installed pretrained and published
model; a published name not installed is reported with the command that gets it; an installed
one is loaded like a file."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from upres.auto.journal import AutoOptions, installed_starts
from upres.auto.starts import _candidate, _starts
from upres.io import published


def _run(names: tuple[str, ...]) -> SimpleNamespace:
    return SimpleNamespace(options=AutoOptions(60, pretrained=names, candidates=()))


def test_an_installed_published_model_is_a_default_start_and_loads(published_entry, published_file):
    assert "tiny-x4" not in installed_starts()
    starts, missing = _starts(_run(("tiny-x4",)))
    assert starts == [] and missing == ["tiny-x4: not installed (upres models pull tiny-x4)"]
    published.add(published_file)
    assert "tiny-x4" in installed_starts() and "tiny-x4" in AutoOptions(60).pretrained
    starts, missing = _starts(_run(("tiny-x4",)))
    assert starts == ["tiny-x4"] and missing == []
    entry, model = _candidate("tiny-x4", None, 4)
    assert entry["name"] == "tiny-x4" and entry["arch"] == "RRDBNet"
    reference = torch.load(published_file, weights_only=True)["params_ema"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_at_most_four_named_starts_train_the_best_gan_one_among_them():
    """Eleven starts left each halving arm seconds; the best four by step-0 PSNR train, one of
    them the best GAN-trained start; presets from scratch and the order are kept."""
    from upres.auto.probes import fewest_starts

    def cand(name, psnr0, source=None):
        return {"name": name, "psnr0": psnr0, "source": source or name}

    cands = [cand("realesrgan-x4plus", 23.1), cand("realsr-df2k", 23.4), cand("craft-x4", 25.2),
             cand("imdn-x4", 25.0), cand("rlfn-x4", 25.1), cand("mine", 24.9, "/w/mine.pth"),
             cand("span-ch28-x4", 24.8), {"name": "preset-craft", "psnr0": None, "preset": "craft"}]
    dropped = []
    kept = fewest_starts(cands, dropped)
    assert [c["name"] for c in kept] == ["realsr-df2k", "craft-x4", "imdn-x4", "rlfn-x4",
                                         "preset-craft"]
    assert [d["name"] for d in dropped] == ["realesrgan-x4plus", "mine", "span-ch28-x4"]
    assert dropped[1]["why"] == ("step-0 validation PSNR 24.900 dB, under the 4 starts kept (at "
                                 "most 4 train, the best GAN-trained one among them): not trained")
    few = cands[:3]
    assert fewest_starts(few, dropped) == few and len(dropped) == 3
