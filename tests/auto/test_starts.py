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
