import numpy as np
import pytest

from conftest import tiny_rrdbnet
from upres import images
from upres.inference import Upscaler

MODES = {
    "gray8": (np.uint8, (20, 24)),
    "gray16": (np.uint16, (20, 24)),
    "rgb8": (np.uint8, (20, 24, 3)),
    "rgb16": (np.uint16, (20, 24, 3)),
    "rgba8": (np.uint8, (20, 24, 4)),
    "rgba16": (np.uint16, (20, 24, 4)),
}


@pytest.mark.parametrize("mode", MODES)
def test_png_round_trip_and_upscale_keeps_mode_and_depth(tmp_path, mode):
    dtype, shape = MODES[mode]
    rng = np.random.default_rng(0)
    img = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    src = tmp_path / f"{mode}.png"
    images.write_image(src, img)
    np.testing.assert_array_equal(images.read_image(src), img)
    dst = tmp_path / "out" / f"{mode}.png"
    Upscaler(tiny_rrdbnet(), tile=16, tile_overlap=4).upscale_file(src, dst)
    out = images.read_image(dst)
    assert out.dtype == dtype
    assert out.shape == (shape[0] * 4, shape[1] * 4) + shape[2:]


def test_alpha_is_upscaled_separately(tmp_path):
    img = np.zeros((16, 16, 4), np.uint8)
    img[..., :3] = 128
    img[:, 8:, 3] = 255  # right half opaque
    out = Upscaler(tiny_rrdbnet(), tile=0).upscale_array(img)
    assert out.shape == (64, 64, 4)
    assert out[:, :28, 3].max() == 0 and out[:, 36:, 3].min() == 255


def test_gray_result_is_gray(photo):
    gray = photo[:16, :16, 0]
    out = Upscaler(tiny_rrdbnet(), tile=0).upscale_array(gray)
    assert out.shape == (64, 64) and out.dtype == np.uint8


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
    with pytest.raises(images.ImageError, match="notes.png: cannot decode image"):
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


@pytest.mark.parametrize("outscale, shape", [(2, (40, 48, 3)), (3.5, (70, 84, 3)), (6, (120, 144, 3))])
def test_outscale_resizes_the_result(outscale, shape):
    img = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    out = Upscaler(tiny_rrdbnet(), tile=0, outscale=outscale).upscale_array(img)
    assert out.shape == shape and out.dtype == np.uint8
    plain = Upscaler(tiny_rrdbnet(), tile=0).upscale_array(img)
    if outscale == 2:  # area resize of the x4 result: 2x2 block means
        expect = plain.reshape(40, 2, 48, 2, 3).mean(axis=(1, 3))
        assert np.abs(out.astype(float) - expect).max() <= 1
