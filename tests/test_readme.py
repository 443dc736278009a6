"""Every shell command in README.md and the docs runs as written, in one scratch folder: the
README first, then the docs' pages in the site's order (``mkdocs.yml``'s nav).

What stands in for what the README names (a fresh clone has no ../shared and no user files):

- ``../shared/data/minicomp`` and ``DATA``: a tiny competition folder (eight 128x128 training
  pairs in two LR recipes, two test images with their HR); ``../shared/data/benchmarks/BSD68``:
  twelve 128x128 photos; ``VAL`` (lr/, hr/) and ``TEST`` (lr/): its test images;
  ``photo.png``, ``big.png``, ``huge.png``, ``photos/``, ``more_photos/``: small photo crops;
  ``4x_SomeModel.pth``: a tiny Real-ESRGAN Compact model. All from scikit-image's photos.
- ``upres`` is upres itself behind a shim that appends the shrinking overrides the README
  announces (``SHRINK``) to ``train``, ``lr-find`` (and ``--steps 6``) and ``experiment`` and
  replaces ``auto``'s ``--budget`` by ``AUTO_BUDGET``: the commands run as printed, only smaller.
- Skipped (``SKIP``): set-up and CI (``make``, ``pip``), benchmarks, ``tensorboard``, headless
  browsers, what is for GPUs (``torchrun``, ``--device cuda``, a comment naming a GPU), and what
  needs the internet or a published weights file (a comment saying it downloads, or naming the
  published file).

Commands run in that order, so later ones use what earlier ones made (run folders, exports), and
shell variables set in a block (``M=...``) carry on within that block."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import PHOTOS, make_recipe_set, photo
from upres.io import images
from upres.models import build_model
from upres.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"^(make|pip|tensorboard|torchrun|chromium)\b|benchmarks/|--device cuda"
                  r"|#.*\bGPUs?\b|#.*\b(downloads|published file)\b")
SHRINK = ["train.iterations=2", "train.batch_size=2", "data.crop=64", "data.workers=0",
          "data.val_split=2", "train.val_every=2", "train.checkpoint_every=2", "train.log_every=1"]
AUTO_BUDGET = "60s"  # the largest command here; auto's decisions have their own tests

SHIM = f"""#!{sys.executable}
import sys
import time
from upres.cli import main
args = sys.argv[1:]
if args[:1] in (["train"], ["lr-find"], ["experiment"]):
    args += {SHRINK!r}
if args[:1] == ["train"] and "--resume" in args:  # on to a later step: 2 more than a run's 2
    args = [a for a in args if not a.startswith("train.iterations=")] + ["train.iterations=4"]
if args[:1] == ["lr-find"]:
    args += ["--steps", "6"]
if args[:1] == ["auto"] and "--budget" in args:
    args[args.index("--budget") + 1] = {AUTO_BUDGET!r}
sys.exit(main(args))
"""


def documents() -> list[Path]:
    """The README, then every page of the site in its nav order (generated pages have no file)."""
    nav = re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    return [README, *(ROOT / "docs" / page for page in nav if (ROOT / "docs" / page).exists())]


def readme_blocks() -> list[list[str]]:
    """The ```bash blocks of the documents, each a list of commands (continuation lines joined)."""
    blocks = [b for doc in documents()
              for b in re.findall(r"^```bash\n(.*?)^```", doc.read_text(), flags=re.S | re.M)]
    out = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        out.append([line.strip() for line in joined.splitlines() if line.strip()])
    return out


def compact_pth(path: Path) -> None:
    """A tiny Real-ESRGAN Compact (SRVGGNetCompact) state dict, as a user's downloaded model."""
    cfg = load_config(None, ["model.arch=Compact", 'model.params={"num_feat": 8, "num_conv": 2}'])
    torch.manual_seed(0)
    net = build_model(cfg.model.arch, cfg.model.hparams())
    torch.save({"params": net.state_dict()}, path)


def stand_ins(root: Path) -> Path:
    """The scratch folder with everything the README's commands name; returns the working folder."""
    minicomp = make_recipe_set(root / "shared" / "data" / "minicomp")
    bsd = root / "shared" / "data" / "benchmarks" / "BSD68"
    for i, name in enumerate(PHOTOS):
        img = photo(name)
        for j in range(3):
            images.write_image(bsd / f"{i}{j}.png", img[-128:, j * 128:(j + 1) * 128])
    work = root / "work"
    shutil.copytree(minicomp, work / "DATA")
    for sub in ("lr", "hr"):
        shutil.copytree(minicomp / "test" / sub, work / "VAL" / sub)
    shutil.copytree(minicomp / "test" / "lr", work / "TEST" / "lr")
    chelsea = photo("chelsea")
    images.write_image(work / "photo.png", chelsea[100:132, 150:190])
    images.write_image(work / "big.png", chelsea[60:108, 100:148])
    images.write_image(work / "huge.png", chelsea[0:48, 0:64])
    images.write_image(work / "photos" / "a.png", photo("coffee")[100:132, 100:132])
    images.write_image(work / "photos" / "b.jpg", photo("rocket")[100:124, 100:140])
    images.write_image(work / "more_photos" / "c.png", photo("astronaut")[50:82, 200:232])
    compact_pth(work / "4x_SomeModel.pth")
    shim = root / "bin" / "upres"
    shim.parent.mkdir()
    shim.write_text(SHIM)
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return work


def test_readme_lists_what_it_skips_and_runs_the_rest():
    commands = [c for block in readme_blocks() for c in block]
    assert any(c.startswith("upres auto") for c in commands)
    assert any(SKIP.search(c) for c in commands)  # the rules match what the README holds
    assert sum(not SKIP.search(c) for c in commands) >= 30


def test_every_readme_command_runs_as_written(tmp_path):
    pytest.importorskip("spandrel")
    work = stand_ins(tmp_path)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
               UPRES_OPENVINO_TELEMETRY="0", XDG_CACHE_HOME=os.environ["XDG_CACHE_HOME"])
    failures, timings = [], []
    for block in readme_blocks():
        assignments: list[str] = []
        for command in block:
            if SKIP.search(command):
                continue
            if re.match(r"^[A-Za-z_]+=\S+$", command):
                assignments.append(command)
                continue
            script = "\n".join(["set -eo pipefail", *assignments, command])
            began = time.monotonic()
            done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600)
            timings.append((time.monotonic() - began, command))
            if done.returncode != 0:
                failures.append(f"$ {command}\n(exit {done.returncode})\n{done.stderr[-2000:]}")
    for seconds, command in sorted(timings, reverse=True)[:8]:  # shown with -s or on failure
        print(f"{seconds:6.1f} s  {command}")
    assert not failures, "\n\n".join(failures)
