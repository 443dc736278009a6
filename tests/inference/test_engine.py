import numpy as np
import pytest
import torch

from helpers import NearestX4, tiny_rrdbnet
from upres.errors import InferenceError
from upres.inference.engine import (
    TileEngine,
    dihedral,
    dihedral_inverse,
    tile_ramps,
    tile_starts,
)
from upres.inference.torch_backend import cudnn_benchmark
from upres.inference.upscaler import InferenceOptions, Upscaler
from upres.models import ModelDescriptor


def nearest(**kw) -> Upscaler:
    return Upscaler(NearestX4(), descriptor=NearestX4.descriptor, **kw)


def test_dihedral_group_inverts():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8  # eight distinct transforms
    for k in range(8):
        np.testing.assert_array_equal(dihedral_inverse(dihedral(x, k), k), x)
    # the same transforms as torch's flip + rot90 (what training's augmentation mirrors)
    t = torch.from_numpy(x)
    for k in range(8):
        expect = torch.rot90(t.flip(-1) if k >= 4 else t, k % 4, dims=(-2, -1))
        np.testing.assert_array_equal(dihedral(x, k), expect.numpy())


@pytest.mark.parametrize("size, tile, overlap", [(700, 512, 192), (513, 512, 192), (100, 40, 10),
                                                 (300, 64, 48)])
def test_tiles_cover_and_weights_partition_unity(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    total = np.zeros(size)
    for s, w in zip(starts, tile_ramps(starts, tile)):
        total[s:s + tile] += w
    assert np.all(total > 0.99) and np.all(total < 1.01)


def test_tiled_equals_whole_image_on_a_real_photo_at_default_overlap(photo):
    model = tiny_rrdbnet(num_block=2)
    img = photo[:256, :448].astype(np.float32) / 255
    whole = Upscaler(model, tile=0, dtype="fp32").upscale_float(img)
    # tile 320 with the default overlap (192) puts two tiles across, sharing exactly 192 pixels
    tiled_up = Upscaler(model, tile=320, dtype="fp32")
    assert tile_starts(448, 320, tiled_up.options.tile_overlap) == [0, 128]
    tiled = tiled_up.upscale_float(img)
    assert tiled.shape == whole.shape == (1024, 1792, 3)
    assert np.abs(tiled - whole).max() < 1 / 255
    # the same cut without overlap leaves a seam, so the check above can fail
    seamed = Upscaler(model, tile=224, tile_overlap=0, dtype="fp32").upscale_float(img)
    assert np.abs(seamed - whole).max() > 2 / 255


def test_small_tiles_batched_equal_unbatched(photo):
    model = tiny_rrdbnet()
    img = photo[:100, :130].astype(np.float32) / 255
    one = Upscaler(model, tile=48, tile_overlap=16, dtype="fp32", batch_size=1).upscale_float(img)
    four = Upscaler(model, tile=48, tile_overlap=16, dtype="fp32", batch_size=4).upscale_float(img)
    np.testing.assert_allclose(one, four, atol=1e-5)


def test_tiling_is_exact_for_a_local_model():
    img = np.random.default_rng(0).random((90, 70, 3), dtype=np.float32)
    out = nearest(tile=32, tile_overlap=8, dtype="fp32").upscale_float(img)
    np.testing.assert_allclose(out, img.repeat(4, 0).repeat(4, 1), atol=1e-6)


def test_self_ensemble_mean_and_median_match_manual_computation(photo):
    model = tiny_rrdbnet()
    img = photo[:24, :32].astype(np.float32) / 255
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():  # torch's own flips and rotations, independent of the engine's
        outs = torch.stack([torch.rot90(model(torch.rot90(x, k, dims=(2, 3))), -k, dims=(2, 3))
                            for k in range(4)]
                           + [torch.rot90(model(torch.rot90(x.flip(3), k, dims=(2, 3))), -k,
                                          dims=(2, 3)).flip(3) for k in range(4)])
    expect_mean = outs.mean(0)[0].permute(1, 2, 0).numpy()
    expect_median = outs.sort(0).values[3:5].mean(0)[0].permute(1, 2, 0).numpy()
    mean = Upscaler(model, tile=0, dtype="fp32", self_ensemble="mean").upscale_float(img)
    median = Upscaler(model, tile=0, dtype="fp32", self_ensemble="median").upscale_float(img)
    np.testing.assert_allclose(mean, expect_mean, atol=1e-5)
    np.testing.assert_allclose(median, expect_median, atol=1e-5)
    single = Upscaler(model, tile=0, dtype="fp32").upscale_float(img)
    assert np.abs(mean - single).max() > 1e-4  # the ensemble really changes the output


def test_a_self_ensemble_of_2_or_4_averages_those_flips_only(photo):
    """2: the image and its mirror; 4: those turned half a turn too (the shape is kept)."""
    model = tiny_rrdbnet()
    img = photo[:24, :32].astype(np.float32) / 255
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        plain, mirror = model(x), model(x.flip(3)).flip(3)
        turned = torch.rot90(model(torch.rot90(x, 2, dims=(2, 3))), 2, dims=(2, 3))
        both = torch.rot90(model(torch.rot90(x.flip(3), 2, dims=(2, 3))), 2, dims=(2, 3)).flip(3)
    expect = {2: (plain + mirror) / 2, 4: (plain + mirror + turned + both) / 4}
    for n, want in expect.items():
        got = Upscaler(model, tile=0, dtype="fp32", self_ensemble="mean",
                       ensemble_transforms=n).upscale_float(img)
        np.testing.assert_allclose(got, want[0].permute(1, 2, 0).numpy(), atol=1e-5)
    four = torch.stack([plain, mirror, turned, both]).sort(0).values[1:3].mean(0)
    median = Upscaler(model, tile=0, dtype="fp32", self_ensemble="median",
                      ensemble_transforms=4).upscale_float(img)
    np.testing.assert_allclose(median, four[0].permute(1, 2, 0).numpy(), atol=1e-5)
    with pytest.raises(InferenceError, match="2, 4 or 8 flips/rotations, not 3"):
        Upscaler(model, self_ensemble="mean", ensemble_transforms=3)


def test_self_ensemble_is_identity_for_an_equivariant_model():
    img = np.random.default_rng(1).random((20, 28, 3), dtype=np.float32)
    plain = nearest(tile=0).upscale_float(img)
    for mode in ("mean", "median"):
        ens = nearest(tile=0, self_ensemble=mode).upscale_float(img)
        np.testing.assert_allclose(ens, plain, atol=1e-6)


def test_self_ensemble_works_with_tiling(photo):
    model = tiny_rrdbnet()
    img = photo[:96, :96].astype(np.float32) / 255
    whole = Upscaler(model, tile=0, dtype="fp32", self_ensemble="mean").upscale_float(img)
    tiled = Upscaler(model, tile=64, tile_overlap=32, dtype="fp32",
                     self_ensemble="mean").upscale_float(img)
    assert np.abs(whole - tiled).max() < 1 / 255


@pytest.mark.parametrize("scale", [1, 2])
def test_unshuffle_models_take_odd_sizes(scale):
    model = tiny_rrdbnet(scale=scale)
    img = np.random.default_rng(2).random((13, 17, 3), dtype=np.float32)
    assert Upscaler(model, tile=8, tile_overlap=2).upscale_float(img).shape == (
        13 * scale, 17 * scale, 3)


def test_fp16_on_cpu_is_refused_clearly(tiny_model):
    with pytest.raises(InferenceError, match="fp16 is supported on CUDA only"):
        Upscaler(tiny_model, device="cpu", dtype="fp16")


def test_bf16_close_to_fp32(tiny_model, photo):
    img = photo[:32, :32].astype(np.float32) / 255
    fp32 = Upscaler(tiny_model, dtype="fp32", channels_last=False).upscale_float(img)
    bf16 = Upscaler(tiny_model, dtype="bf16").upscale_float(img)
    assert 0 < np.abs(bf16 - fp32).max() < 0.05


def test_bad_options_are_refused(tiny_model):
    with pytest.raises(InferenceError, match="tile_overlap"):
        Upscaler(tiny_model, tile=64, tile_overlap=64)
    with pytest.raises(InferenceError, match="unknown device 'bogus'"):
        Upscaler(tiny_model, device="bogus")
    with pytest.raises(InferenceError, match="self_ensemble"):
        Upscaler(tiny_model, self_ensemble="max")
    with pytest.raises(TypeError, match="unknown inference option 'tiles'"):
        Upscaler(tiny_model, tiles=3)


def test_compiled_path_matches_eager(photo):
    """torch.compile (inductor, no freezing) must give the eager output; freezing=True is known
    to give wrong RRDBNet output on some CPUs, so the compiled path is always checked."""
    img = photo[:24, :24].astype(np.float32) / 255
    eager = Upscaler(tiny_rrdbnet(), tile=0, dtype="fp32").upscale_float(img)
    compiled = Upscaler(tiny_rrdbnet(), tile=0, dtype="fp32", compile=True).upscale_float(img)
    np.testing.assert_allclose(compiled, eager, atol=1e-4)


def test_layout_follows_each_upscaler_even_for_a_shared_model(photo):
    model = tiny_rrdbnet()
    Upscaler(model, channels_last=True, backend="torch")
    assert model.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    Upscaler(model, channels_last=False, backend="torch")
    assert model.conv_first.weight.is_contiguous()


def test_overrides_leave_the_callers_options_alone(tiny_model):
    opts = InferenceOptions(tile=64, tile_overlap=16)
    up = Upscaler(tiny_model, opts, tile=32, self_ensemble="mean")
    assert (up.options.tile, up.options.self_ensemble) == (32, "mean")
    assert (opts.tile, opts.self_ensemble) == (64, "off")


def test_cudnn_benchmark_is_set_only_around_the_run(tiny_model):
    torch.backends.cudnn.benchmark = False
    Upscaler(tiny_model, tile=0).upscale_float(np.zeros((8, 8, 3), np.float32))
    assert torch.backends.cudnn.benchmark is False
    with cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is False


def test_engine_takes_any_callable_with_its_descriptor():
    """A model that needs sides divisible by 8 (as window transformers do): the engine pads the
    input, and crops the output back to scale x the input size, in tiles and whole."""
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0
        return x.repeat(2, -2).repeat(2, -1)

    desc = ModelDescriptor(arch="x2-needs-8", scale=2, size_multiple=8)
    x = np.random.default_rng(3).random((1, 3, 21, 30), dtype=np.float32)
    for tile in (0, 16):
        engine = TileEngine(model, desc, tile=tile, tile_overlap=4 if tile else 0)
        out = engine(x)
        np.testing.assert_allclose(out, x.repeat(2, -2).repeat(2, -1), atol=1e-6)
    assert (24, 32) in seen and (16, 16) in seen  # whole image padded; tiles of 16


def test_a_batch_of_tiles_that_cannot_fit_names_batch_size():
    """64 tiles of 32x32 in a row at 1000 bytes a pixel need 65 MB, over a 1 MB budget: refused
    naming --batch-size before any pass (a fixed tile); with tile auto, the smallest tile fits
    alone but not 64 at a time, and the error says so instead of blaming --max-memory."""
    calls = []

    def model(x):
        calls.append(x.shape)
        return np.repeat(np.repeat(x, 4, 2), 4, 3)

    x = np.zeros((1, 3, 32, 32 * 64), np.float32)
    fixed = TileEngine(model, NearestX4.descriptor, tile=32, tile_overlap=0, batch_size=64,
                       budget=1_000_000, bytes_per_pixel=1000.0)
    with pytest.raises(InferenceError, match=r"^--batch-size 64: 64 tiles of 32x32 per pass need about "
                                             r"0\.1 GiB, over the memory budget of 0\.0 GiB; lower "
                                             r"--batch-size \(or --tile\)$"):
        fixed(x)
    assert calls == []
    auto = TileEngine(model, NearestX4.descriptor, tile="auto", tile_overlap=8, batch_size=64,
                      budget=1_200_000, bytes_per_pixel=100.0)
    with pytest.raises(InferenceError, match=r"^--batch-size 64: that many tiles per pass do not fit"):
        auto(np.zeros((1, 3, 256, 256), np.float32))
    one = TileEngine(model, NearestX4.descriptor, tile=32, tile_overlap=0, batch_size=1,
                     budget=1_000_000, bytes_per_pixel=1000.0)
    assert one(x).shape == (1, 3, 128, 32 * 64 * 4)
