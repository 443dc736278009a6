import os
import stat

import numpy as np
import pytest

from helpers import tiny_rrdbnet
from upres.io import images
from upres.io.files import atomic_path, atomic_write_bytes, staged_folder
from upres.io.loading import save_model


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_written_file_follows_the_umask(tmp_path, umask, mode):
    """Images, safetensors, .pth and plain files alike get 0666 & ~umask."""
    old = os.umask(umask)
    try:
        images.write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
        save_model(tiny_rrdbnet(), tmp_path / "m.safetensors")
        save_model(tiny_rrdbnet(), tmp_path / "m.pth")
        atomic_write_bytes(tmp_path / "t.txt", b"x")
    finally:
        os.umask(old)
    for name in ("a.png", "m.safetensors", "m.pth", "t.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_a_published_folder_follows_the_umask(tmp_path, umask, mode):
    """Output folders (predict, report, fingerprint, make-set, experiments) are filled in a
    staging folder that ``mkdtemp`` makes 0700; published, they have the mode a folder the user
    made would have."""
    old = os.umask(umask)
    try:
        with staged_folder(tmp_path / "out", overwrite=False) as staging:
            (staging / "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode


def test_atomic_path_leaves_the_old_file_and_no_temp_on_failure(tmp_path):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk trouble")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def test_ticking_says_what_runs_while_it_runs(caplog):
    import logging
    import time

    from upres.io.ticker import ticking

    with caplog.at_level(logging.INFO, logger="upres"):
        with ticking("converting X", every=0.05, first=0.05):
            time.sleep(0.4)
        with ticking("quick", every=5):
            pass
    lines = [r.getMessage() for r in caplog.records]
    beats = [m for m in lines if m.startswith("converting X: still running")]
    assert lines[0] == "converting X ..."  # said once the work has run `first` seconds
    assert len(beats) >= 3 and lines[-1].startswith("converting X: done in")
    assert not any(m.startswith("quick") for m in lines)  # short work says nothing extra
