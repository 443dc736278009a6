import numpy as np
import pytest

from helpers import make_competition, photo, write_pair
from upres.errors import DataError
from upres.io import images
from upres.io.pairs import PairCache, find_pairs, split_pairs
from upres.training.config import DataConfig
from upres.training.data import CropDataset, StepSampler, resolve_splits


def test_all_problems_reported_at_once_with_file_names(tmp_path):
    img = photo("astronaut")
    write_pair(tmp_path, "train", "good", img[:64, :64])
    write_pair(tmp_path, "train", "badsize", img[:64, :64])
    images.write_image(tmp_path / "train/hr/badsize.png", img[:60, :64])
    write_pair(tmp_path, "train", "alpha", img[:64, :64])
    images.write_image(tmp_path / "train/lr/alpha.png", np.dstack([img[:16, :16], img[:16, :16, :1]]))
    write_pair(tmp_path, "train", "cut", img[:64, :64])
    data = (tmp_path / "train/hr/cut.png").read_bytes()
    (tmp_path / "train/hr/cut.png").write_bytes(data[: len(data) // 2])
    images.write_image(tmp_path / "train/lr/orphan.png", img[:16, :16])
    pairs, problems = find_pairs(tmp_path / "train/lr", tmp_path / "train/hr")
    assert problems == [f"{tmp_path / 'train/lr/orphan.png'}: no HR partner in {tmp_path / 'train/hr'}"]
    with pytest.raises(DataError) as err:
        PairCache(pairs, 4, tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "badsize.png: size 64x60 is not 4 x the LR size 16x16" in msg
    assert "alpha.png: 4 channels; training expects RGB (or gray)" in msg
    assert "cut.png: cannot decode image" in msg


def test_a_gray_pair_trains_as_rgb_with_three_equal_channels(tmp_path):
    hr = np.ascontiguousarray(photo("camera")[:64, :64, 0])  # scikit-image's gray photo
    images.write_image(tmp_path / "train/hr/g.png", hr)
    images.write_image(tmp_path / "train/lr/g.png", hr[::4, ::4])
    write_pair(tmp_path, "train", "c", photo("astronaut")[:64, :64])
    pairs, problems = find_pairs(tmp_path / "train/lr", tmp_path / "train/hr")
    assert problems == []
    cache = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    lr, hr_cached = cache.load([p.name for p in pairs].index("g"))
    assert lr.shape == (16, 16, 3) and hr_cached.shape == (64, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(hr_cached[..., c], hr)
        np.testing.assert_array_equal(lr[..., c], hr[::4, ::4])


def test_missing_partners_are_reported_with_decode_checks(tmp_path):
    make_competition(tmp_path)
    (tmp_path / "val/hr/0000.png").unlink()
    splits = resolve_splits(DataConfig(root=str(tmp_path)))
    assert splits.problems == [f"{tmp_path / 'val/lr/0000.png'}: no HR partner in {tmp_path / 'val/hr'}"]
    with pytest.raises(DataError, match=r"val/lr/0000.png: no HR partner"):
        PairCache(splits.train + splits.val, 4, tmp_path / "c", False, splits.problems)
    with pytest.raises(DataError, match="no training data"):
        resolve_splits(DataConfig())


def test_deterministic_validation_split(tmp_path):
    for i in range(10):
        write_pair(tmp_path, "train", f"{i:04d}", photo("coffee")[:32, i * 4:i * 4 + 32])
    splits = resolve_splits(DataConfig(root=str(tmp_path), val_split=0.3))
    again = resolve_splits(DataConfig(root=str(tmp_path), val_split=0.3))
    assert len(splits.val) == 3 and len(splits.train) == 7
    assert [p.name for p in splits.val] == [p.name for p in again.val]
    assert not {p.name for p in splits.val} & {p.name for p in splits.train}
    assert len(split_pairs(splits.train + splits.val, 2)[1]) == 2


def test_cache_is_reused_and_rebuilt_when_a_source_changes(tmp_path):
    make_competition(tmp_path / "d")
    pairs, _ = find_pairs(tmp_path / "d/train/lr", tmp_path / "d/train/hr")
    cache = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    first = [e[1].stat().st_mtime_ns for e in cache.entries]
    again = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    assert [e[1].stat().st_mtime_ns for e in again.entries] == first  # nothing decoded again
    new_hr = np.ascontiguousarray(photo("rocket")[:256, :200])
    write_pair(tmp_path / "d", "train", "0000", new_hr)
    rebuilt = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(rebuilt.load(0)[1], new_hr)


def test_crops_are_aligned_under_every_augmentation(tmp_path):
    hr = np.ascontiguousarray(photo("astronaut")[:128, :128])
    images.write_image(tmp_path / "hr/a.png", hr)
    images.write_image(tmp_path / "lr/a.png", hr[::4, ::4])  # LR = every 4th HR pixel
    pairs, _ = find_pairs(tmp_path / "lr", tmp_path / "hr")
    ds = CropDataset(PairCache(pairs, 4, tmp_path / "c", progress=False), [0], 32, 4, seed=3)
    seen = set()
    for n in range(64):
        lr, hr_c = ds[n]
        assert lr.shape == (3, 8, 8) and hr_c.shape == (3, 32, 32)
        # The top-left pixel of each HR 4x4 cell is the LR pixel, whatever the flip/rotation.
        k_ok = [np.allclose(lr.numpy(), t) for t in _cell_corners(hr_c.numpy())]
        assert any(k_ok)
        seen.add(k_ok.index(True))
        lr2, _ = ds[n]
        assert np.array_equal(lr.numpy(), lr2.numpy())  # same sample number, same crop
    assert len(seen) == 4  # all four cell corners occur, so flips and rotations happen


def _cell_corners(hr: np.ndarray) -> list[np.ndarray]:
    return [hr[:, 0::4, 0::4], hr[:, 0::4, 3::4], hr[:, 3::4, 0::4], hr[:, 3::4, 3::4]]


def test_step_sampler_shards_one_global_batch():
    single = list(StepSampler(4, start_step=5, steps=2))
    rank0 = list(StepSampler(2, start_step=5, rank=0, world=2, steps=2))
    rank1 = list(StepSampler(2, start_step=5, rank=1, world=2, steps=2))
    assert single == list(range(20, 28))
    assert sorted(rank0[:2] + rank1[:2]) == single[:4]
    assert sorted(rank0[2:] + rank1[2:]) == single[4:]


def test_an_edited_cut_or_foreign_cache_entry_is_named_and_decoded_again(tmp_path):
    """Each entry records its key and its arrays' sha256: an array with one byte changed, one cut
    short, and pair 1's entry copied over pair 0's are each named in a warning and decoded again;
    the arrays then read are the images' own."""
    make_competition(tmp_path / "d")
    pairs, _ = find_pairs(tmp_path / "d/train/lr", tmp_path / "d/train/hr")
    cache = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    truth = [tuple(np.array(a) for a in cache.load(i)) for i in range(2)]
    lr0, hr0 = cache.entries[0]
    folder0, folder1 = lr0.parent, cache.entries[1][0].parent
    data = bytearray(lr0.read_bytes())
    data[-1] ^= 0x01
    lr0.write_bytes(bytes(data))  # edited
    with pytest.warns(UserWarning, match=f"{folder0}: damaged image cache entry .*do not match"):
        cache = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(cache.load(0), truth[0]))
    hr0.write_bytes(hr0.read_bytes()[:1000])  # cut short
    with pytest.warns(UserWarning, match=f"{folder0}: damaged image cache entry"):
        cache = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(cache.load(0), truth[0]))
    for name in ("lr.npy", "hr.npy", "done"):  # pair 1's entry, whole and consistent, as pair 0's
        (folder0 / name).write_bytes((folder1 / name).read_bytes())
    with pytest.warns(UserWarning, match=f"{folder0}: damaged image cache entry .*made from other files"):
        cache = PairCache(pairs, 4, tmp_path / "cache", progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(cache.load(0), truth[0]))
