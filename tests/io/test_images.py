import numpy as np
import pytest

from upres.io import images


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_lossy_formats_round_trip_8bit(tmp_path, photo, suffix):
    path = tmp_path / f"p{suffix}"
    images.write_image(path, photo[:32, :32])
    back = images.read_image(path)
    assert back.shape == (32, 32, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - photo[:32, :32]).mean() < 4


def test_unreadable_and_truncated_files_are_named(tmp_path, photo):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(images.ImageError, match="notes.png: not an image upres reads"):
        images.read_image(bad)
    good = tmp_path / "good.png"
    images.write_image(good, photo[:64, :64])
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(images.ImageError, match="cut.png"):
        images.read_image(cut)
    with pytest.raises(images.ImageError, match="x.jpg: 16-bit images"):
        images.write_image(tmp_path / "x.jpg", np.zeros((4, 4, 3), np.uint16))
    assert not (tmp_path / "x.jpg").exists()


def test_write_is_atomic_on_failure(tmp_path, photo):
    path = tmp_path / "keep.png"
    images.write_image(path, photo[:8, :8])
    before = path.read_bytes()
    with pytest.raises(images.ImageError):
        images.write_image(path.with_suffix(".jpg"), np.zeros((4, 4, 4), np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]  # no temp files left


