import math

import numpy as np
import pytest
import torch

from helpers import tiny_rrdbnet
from upres.errors import InferenceError
from upres.inference import memory
from upres.inference.engine import TileEngine, budget_plan, fixed_plan
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.models import RRDBNet, describe


def _memory(bpp: float):
    return lambda th, tw: int(bpp * th * tw)


def test_whole_image_when_it_fits_else_fewest_tiles_covering_exactly():
    whole = budget_plan(600, 800, 192, 1, _memory(1000), budget=10**9)
    assert (whole.tiles, whole.multiplier) == (1, 1.0)
    plan = budget_plan(1080, 1920, 192, 1, _memory(1000), budget=1200 * 1100 * 1000)
    assert plan.tiles == 2 and (len(plan.xs), len(plan.ys)) == (2, 1)
    assert plan.tile_w == math.ceil((1920 + 192) / 2) and plan.tile_h == 1080
    assert plan.xs == (0, 1920 - plan.tile_w) and plan.xs[0] + plan.tile_w - plan.xs[1] >= 192
    assert plan.multiplier == pytest.approx(2 * 1056 * 1080 / (1920 * 1080))
    with pytest.raises(InferenceError, match="does not fit a memory budget"):
        budget_plan(1080, 1920, 192, 1, _memory(1000), budget=1000)


def test_size_multiple_is_kept():
    plan = budget_plan(301, 403, 32, 4, _memory(1), budget=120 * 120)
    assert plan.tile_h % 4 == 0 and plan.tile_w % 4 == 0
    assert plan.ys[-1] + plan.tile_h == 301 or plan.tile_h == 301
    assert fixed_plan(300, 400, 0, 192).tiles == 1


@pytest.mark.parametrize("size", [(256, 256), (512, 512), (600, 800), (1080, 1920)])
def test_default_budget_on_a_24_gib_machine_wastes_at_most_15_percent(size, monkeypatch):
    """x4plus in bf16 with its measured footprint and half of ~22 GiB free as the budget."""
    monkeypatch.setattr(memory, "available_memory", lambda: 22 * 2**30)
    desc = describe(RRDBNet())
    bpp = memory.bytes_per_pixel(desc, "torch", "bf16")
    budget = memory.default_budget("cpu")
    h, w = size
    band = lambda th: 2 * 4 * 3 * th * 4 * w * 4  # noqa: E731  (as TileEngine.band_bytes)
    plan = budget_plan(h, w, 192, 1, lambda th, tw: int(bpp * th * tw) + band(th), budget)
    assert plan.multiplier <= 1.15, plan


def test_auto_tiles_match_the_whole_image_on_a_real_photo(photo, monkeypatch):
    monkeypatch.setattr(memory, "process_rss", lambda: 0)  # the budget below is all for tiles
    model = tiny_rrdbnet(num_block=2)
    img = photo[:200, :360].astype(np.float32) / 255
    whole = Upscaler(model, tile=0, dtype="fp32", backend="torch").upscale_float(img)
    up = Upscaler(model, tile="auto", dtype="fp32", backend="torch", max_memory="100M")
    tiled = up.upscale_float(img)
    assert up.engine.last_plan.tiles > 1  # the budget forced tiles
    assert np.abs(tiled - whole).max() < 1 / 255


@pytest.mark.parametrize("mode", ["rgb8", "gray8", "rgb16"])
def test_streamed_png_equals_the_whole_result(tmp_path, photo, mode):
    img = photo[:96, :120]
    if mode == "gray8":
        img = img[..., 1]
    if mode == "rgb16":
        img = img.astype(np.uint16) * 257
    up = Upscaler(tiny_rrdbnet(), tile=32, tile_overlap=8, dtype="fp32", backend="torch")
    up.write_png_streamed(img, tmp_path / "s.png")
    streamed = images.read_image(tmp_path / "s.png")
    assert streamed.dtype == img.dtype
    np.testing.assert_array_equal(streamed, up.upscale_array(img))
    bands = list(up.engine.stream(images.gray_to_rgb(images.to_float(img)).transpose(2, 0, 1)[None]))
    assert [top for top, _ in bands] == sorted(top for top, _ in bands)
    assert len(bands) == len(up.engine.last_plan.ys) > 2
    assert max(rows.shape[1] for _, rows in bands) <= up.engine.last_plan.tile_h * 4


def test_large_png_results_stream_and_others_are_refused_beyond_the_budget(tmp_path, photo, monkeypatch):
    monkeypatch.setattr(memory, "process_rss", lambda: 0)
    img = photo[:64, :64]
    images.write_image(tmp_path / "a.png", img)
    up = Upscaler(tiny_rrdbnet(), dtype="fp32", backend="torch", max_memory="1M")
    called = []
    monkeypatch.setattr(Upscaler, "write_png_streamed", lambda self, i, d, p=None, o=False: called.append(d))
    up.upscale_file(tmp_path / "a.png", tmp_path / "out.png")  # 256x256x3 float > 1M / 4
    assert called == [tmp_path / "out.png"]
    with pytest.raises(Exception, match="JPEG and WebP output, alpha and --outscale need the whole"):
        up.upscale_file(tmp_path / "a.png", tmp_path / "out.jpg")


@pytest.mark.parametrize("shape, calls, transforms", [((40, 40), [8], 8), ((32, 48), [4, 4], 8),
                                                     ((32, 48), [4], 4)])
def test_self_ensemble_in_one_batch_equals_one_by_one(photo, shape, calls, transforms):
    """A square tile's 8 flips/rotations share one shape: one forward pass of batch 8 (else two
    of 4), with the same result as eight passes."""
    model = tiny_rrdbnet()
    x = photo[:shape[0], :shape[1]].astype(np.float32).transpose(2, 0, 1)[None] / 255
    seen = []

    def counted(batch):
        seen.append(batch.shape[0])
        with torch.no_grad():
            return model(torch.from_numpy(batch.copy())).numpy()

    results = {}
    for batch in (1, 8):
        engine = TileEngine(counted, describe(model), tile=0, self_ensemble="mean",
                            ensemble_batch=batch, transforms=transforms)
        seen.clear()
        results[batch] = engine(x)
        assert seen == ([1] * transforms if batch == 1 else calls)
    np.testing.assert_allclose(results[8], results[1], rtol=0, atol=1e-5)


def test_memory_sizes_parse():
    assert memory.parse_size("8G") == 8 * 2**30 and memory.parse_size("512M") == 512 * 2**20
    assert memory.parse_size("1.5GiB") == int(1.5 * 2**30) and memory.parse_size(1000) == 1000
    with pytest.raises(InferenceError, match="expected e.g. 8G"):
        memory.parse_size("lots")


def test_max_memory_caps_the_whole_process(tiny_model, monkeypatch):
    monkeypatch.setattr(memory, "process_rss", lambda: 2**30)
    up = Upscaler(tiny_model, backend="torch", max_memory="3G")
    assert up.budget == 2 * 2**30  # what the process already holds is taken off
    with pytest.raises(InferenceError, match="below what this process already holds"):
        Upscaler(tiny_model, backend="torch", max_memory="512M")


def test_process_rss_is_read():
    assert memory.process_rss() > 50 * 2**20  # this Python with torch loaded
