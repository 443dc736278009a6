"""torchrun-style sharding of upscale and predict: 2 gloo processes write one complete output
that equals a single process's."""

import os

import numpy as np
import torch
import torch.multiprocessing as mp

from helpers import free_port, photo, tiny_rrdbnet
from upres.cli import main
from upres.io import images
from upres.io.loading import save_model


def _worker(rank: int, world: int, port: int, argv_sets: list[list[str]], codes: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    results = [main(argv) for argv in argv_sets]
    with open(f"{codes}.{rank}", "w") as f:
        f.write(",".join(map(str, results)))
    torch.distributed.destroy_process_group()


def test_two_processes_write_one_complete_output(tmp_path):
    model = tmp_path / "m.safetensors"
    save_model(tiny_rrdbnet(), model)
    src = tmp_path / "in"
    img = photo("coffee")
    for i in range(5):
        images.write_image(src / f"{i}.png", img[:24, 20 * i:20 * i + 28])
    (src / "bad.png").write_bytes(b"not an image")
    common = ["--model", str(model), "--quiet", "--backend", "torch", "--dtype", "fp32"]
    runs = {
        "upscale": ["upscale", str(src), "-o", "{out}/up", *common],
        "predict": ["predict", "--input", "{in2}", "--output", "{out}/sub", *common],
    }
    in2 = tmp_path / "in2"
    for i in range(5):
        images.write_image(in2 / f"{i}.png", img[30:54, 20 * i:20 * i + 28])
    argv = [[a.format(out=tmp_path / "dist", in2=in2) for a in v] for v in runs.values()]
    mp.spawn(_worker, args=(2, free_port(), argv, str(tmp_path / "codes")), nprocs=2, join=True)
    codes = [(tmp_path / f"codes.{r}").read_text() for r in (0, 1)]
    assert codes == ["1,0", "1,0"]  # bad.png failed (on one rank): exit 1 on every rank
    single = [[a.format(out=tmp_path / "one", in2=in2) for a in v] for v in runs.values()]
    assert [main(a) for a in single] == [1, 0]
    for sub, count in (("up", 5), ("sub", 5)):
        names = sorted(p.name for p in (tmp_path / "dist" / sub).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "one" / sub).iterdir())
        assert len(names) == count
        for name in names:
            np.testing.assert_array_equal(images.read_image(tmp_path / "dist" / sub / name),
                                          images.read_image(tmp_path / "one" / sub / name))
    assert not list((tmp_path / "dist").glob(".sub.*"))
    assert (tmp_path / "dist" / "sub.ensemble.json").exists()
