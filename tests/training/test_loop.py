import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import free_port, make_competition
from upres.cli import main
from upres.errors import InferenceError, TrainingError, WeightsError
from upres.inference.shard import Shard
from upres.io.loading import load_model, load_weights
from upres.io.weights import load_matching
from upres.models import build_model
from upres.training import loop as train_mod
from upres.training.config import dump_config, load_config
from upres.training.loop import (
    build_state,
    prepare_data,
    train,
    train_step,
)
from upres.training.runlog import RunLog, StopFlag

TINY = ["model.num_feat=8", "model.num_grow_ch=4", "model.num_block=1", "data.crop=32",
        "data.workers=0", "train.batch_size=2", "train.log_every=5"]


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    return make_competition(tmp_path_factory.mktemp("comp"))


def tiny_cfg(comp, tmp_path, *overrides):
    return load_config(None, [*TINY, *overrides],
                       data={"data": {"root": str(comp), "cache_dir": str(tmp_path / "cache")}})


def test_tiny_model_beats_bicubic_on_real_photos(comp, tmp_path):
    cfg = load_config(None, ["model.num_feat=32", "model.num_grow_ch=16", "model.num_block=1",
                             "data.crop=64", "data.workers=0", "train.batch_size=8",
                             "train.iterations=800", "train.lr=2e-3", "train.scheduler=cosine",
                             "train.ema=0.9", "train.val_every=400", "train.checkpoint_every=400"],
                      data={"data": {"root": str(comp), "cache_dir": str(tmp_path / "cache")}})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 800
    assert result.last_val["val_psnr"] > result.last_val["bicubic_psnr"] + 0.1
    run = tmp_path / "run"
    for name in ("config.yaml", "command.txt", "metrics.jsonl", "best.safetensors", "best.pth",
                 "last.safetensors", "last.pth"):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_psnr" in r] == [400, 800]
    assert load_model(run / "best.safetensors").hparams["num_feat"] == 32
    assert len(list((run / "checkpoints").glob("step_*.pt"))) == 2


def _final_weights(run: Path) -> dict:
    return load_weights(run / "last.safetensors").state_dict


def test_sigkill_then_resume_gives_identical_weights(comp, tmp_path):
    overrides = ["train.iterations=300", "train.checkpoint_every=20", "train.val_every=1000",
                 "train.keep_checkpoints=3"]
    cfg = tiny_cfg(comp, tmp_path, *overrides)
    train(cfg, tmp_path / "straight", progress=False)

    run = tmp_path / "killed"
    config = tmp_path / "same.yaml"
    config.write_text(dump_config(cfg))  # the very same resolved config, through the CLI
    cmd = [sys.executable, "-m", "upres.cli", "train", str(config), "--quiet", "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(int(p.stem.split("_")[1]) >= 60 for p in (run / "checkpoints").glob("step_*.pt")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "last.safetensors").exists()  # it really died mid-way

    resumed = subprocess.run([*cmd, "--resume", "auto"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a, b = _final_weights(tmp_path / "straight"), _final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the log holds each step once, as the uninterrupted run's does
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(x)["step"] for x in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    assert steps == straight


def test_sigterm_writes_a_checkpoint_and_exits_130(comp, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "upres.cli", "train", "smoke-cpu", "--quiet", "--run-dir", str(run),
           "--data", str(comp), *TINY, "train.iterations=100000", "train.checkpoint_every=100000",
           f"data.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "resume with --resume auto" in err
    assert len(list((run / "checkpoints").glob("step_*.pt"))) == 1


def test_nonfinite_loss_stops_with_step_and_term(comp, tmp_path, monkeypatch):
    real = train_mod.loss_fn
    calls = {"n": 0}

    def flaky(name, sr, hr, eps):
        calls["n"] += 1
        loss = real(name, sr, hr, eps)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train_mod, "loss_fn", flaky)
    cfg = tiny_cfg(comp, tmp_path, "train.iterations=10", "train.checkpoint_every=2")
    with pytest.raises(TrainingError, match=r"step 5: the mse loss is nan.*step_000000004\.pt"):
        train(cfg, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == [
        "step_000000002.pt", "step_000000004.pt"]

    calls["n"] = 0
    cfg = tiny_cfg(comp, tmp_path, "train.iterations=10", "train.nonfinite=skip")
    result = train(cfg, tmp_path / "run2", progress=False)
    assert result.step == 10
    records = [json.loads(x) for x in (tmp_path / "run2/metrics.jsonl").read_text().splitlines()]
    assert {"step": 5, "skipped_nonfinite": 1} in records
    assert all(torch.isfinite(v).all() for v in _final_weights(tmp_path / "run2").values())


def test_finetune_mismatch_is_explained(comp, tmp_path):
    cfg = tiny_cfg(comp, tmp_path, "init.source=realesrgan-x4plus-anime", "train.iterations=1")
    with pytest.raises(WeightsError, match="num_feat: weights 64 vs model 8.*init.strict: false"):
        train(cfg, tmp_path / "a", progress=False)
    cfg = load_config(None, ["model.scale=2", "model.num_block=6", "init.source=realesrgan-x4plus-anime",
                             "data.crop=32"])
    model = build_model("RRDBNet", cfg.model.hparams())
    with pytest.raises(WeightsError, match="x4 weights do not fit an x2 model"):
        load_matching(model, load_weights("realesrgan-x4plus-anime"), strict=True)
    report = load_matching(model, load_weights("realesrgan-x4plus-anime"), strict=False)
    assert report["skipped"] == ["conv_first.weight"]
    assert "body.5.rdb3.conv5.weight" in report["loaded"]


def test_finetune_from_pretrained_runs(comp, tmp_path):
    cfg = load_config(None, ["model.num_block=6", "init.source=realesrgan-x4plus-anime", "data.crop=32",
                             "data.workers=0", "train.batch_size=1", "train.iterations=2",
                             "train.val_every=2"],
                      data={"data": {"root": str(comp), "cache_dir": str(tmp_path / "cache")}})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.init_report["source"] == "realesrgan-x4plus-anime"
    assert len(result.init_report["loaded"]) == len(load_weights("realesrgan-x4plus-anime").state_dict)
    assert result.last_val["val_psnr"] > 20


def _ddp_worker(rank: int, world: int, port: int, comp: str, run: str, cache: str,
                *extra: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = load_config(None, [*TINY, "train.iterations=1", "train.ema=0", "train.device=cpu",
                             "train.val_every=1000", *extra],
                      data={"data": {"root": comp, "cache_dir": cache}})
    train(cfg, run, progress=False)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one_process_on_the_union_batch(comp, tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(comp), str(tmp_path / "ddp"),
                                str(tmp_path / "cache")), nprocs=2, join=True)
    cfg = tiny_cfg(comp, tmp_path, "train.iterations=1", "train.ema=0", "train.batch_size=4",
                   "train.val_every=1000")
    train(cfg, tmp_path / "single", progress=False)
    a, b = _final_weights(tmp_path / "ddp"), _final_weights(tmp_path / "single")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    # only rank 0 wrote: one record of each kind, not two
    records = [json.loads(x) for x in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()]
    assert [sorted(r)[0] for r in records] == ["params", "it_per_s", "bicubic_psnr", "phase_seconds"]


def test_train_cli_lists_every_data_problem_and_exits_2(tmp_path, capsys):
    comp = make_competition(tmp_path / "comp")
    (tmp_path / "comp/train/hr/0001.png").unlink()
    (tmp_path / "comp/val/lr/0002.png").write_bytes(b"not a png")
    code = main(["train", "smoke-cpu", "--data", str(comp), "--run-dir", str(tmp_path / "run"),
                 "--quiet", f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "2 problem(s)" in err  # pairing and decoding problems, reported together
    assert "train/lr/0001.png: no HR partner" in err
    assert "val/lr/0002.png: not an image upres reads" in err
    assert not (tmp_path / "run").exists()  # nothing written before the data checks pass
    code = main(["train", "smoke-cpu", "train.lr=-1"])
    assert code == 2 and "train.lr: Input should be greater than 0" in capsys.readouterr().err


def test_fp16_training_on_cpu_is_refused_clearly(comp, tmp_path):
    cfg = tiny_cfg(comp, tmp_path, "train.precision=fp16", "train.iterations=1", "train.device=cpu")
    with pytest.raises(InferenceError, match="fp16 is supported on CUDA only"):
        train(cfg, tmp_path / "run", progress=False)


def test_bf16_training_step_computes_in_bf16_with_channels_last(comp, tmp_path):
    """The named steps on their own: the forward pass of a bf16 step runs its convolutions in
    bf16 on channels_last tensors, and the step updates the fp32 weights and the EMA copy."""
    cfg = tiny_cfg(comp, tmp_path, "train.precision=bf16", "train.channels_last=true",
                   "train.iterations=3", "train.device=cpu")
    shard = Shard()
    data = prepare_data(cfg, shard, tmp_path / "run", progress=False)
    state = build_state(cfg, torch.device("cpu"))
    assert state.amp_dtype == torch.bfloat16
    seen = []
    state.model.conv_first.register_forward_hook(
        lambda mod, inp, out: seen.append((out.dtype, inp[0].is_contiguous(
            memory_format=torch.channels_last))))
    before = state.model.conv_first.weight.detach().clone()
    ema_before = state.ema.conv_first.weight.detach().clone()
    lr_b, hr_b = (torch.stack(t) for t in zip(data.dataset[0], data.dataset[1]))
    with StopFlag() as stop:
        outcome = train_step(state, state.model, lr_b, hr_b, cfg, shard, tmp_path / "run", stop)
    assert seen == [(torch.bfloat16, True)]
    assert not outcome.skipped and not outcome.stop and torch.isfinite(outcome.loss)
    assert state.model.conv_first.weight.dtype == torch.float32
    assert not torch.equal(state.model.conv_first.weight, before)
    assert not torch.equal(state.ema.conv_first.weight, ema_before)
    # and the whole loop runs with these settings
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 3 and result.last_val["val_psnr"] > 5


def test_warmed_up_ema_follows_the_training_not_the_start(comp, tmp_path):
    """train.ema_warmup: step k mixes the new weights in at 1 - min(e, (1+k)/(10+k)), so after
    4 steps the start keeps 0.5% of the EMA, not e^4 (66% at e = 0.9)."""
    e, n = 0.9, 4
    cfg = tiny_cfg(comp, tmp_path, f"train.ema={e}", "train.ema_warmup=true", "train.lr=0.01",
                   f"train.iterations={n}", "train.device=cpu")
    shard = Shard()
    data = prepare_data(cfg, shard, tmp_path / "run", progress=False)
    state = build_state(cfg, torch.device("cpu"))
    warm = plain = state.model.conv_first.weight.detach().double().clone()
    with StopFlag() as stop:
        for k in range(1, n + 1):
            lr_b, hr_b = (torch.stack(t) for t in zip(data.dataset[0], data.dataset[1]))
            state.step = k
            train_step(state, state.model, lr_b, hr_b, cfg, shard, tmp_path / "run", stop)
            w = state.model.conv_first.weight.detach().double()
            d = min(e, (1 + k) / (10 + k))
            warm, plain = d * warm + (1 - d) * w, e * plain + (1 - e) * w
    torch.testing.assert_close(state.ema.conv_first.weight.double(), warm, rtol=1e-5, atol=1e-6)
    assert (plain - warm).abs().max() > 1e-3  # what train.ema alone would hold


def test_run_log_closes_everything_when_a_step_fails(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with RunLog(Shard(), run_dir, 10, 0, False, progress=False) as log:
            log.record({"step": 1, "loss": 0.5})
            raise RuntimeError("boom")
    assert log.file.closed
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'
    assert list((run_dir / "tb").iterdir())  # the TensorBoard writer flushed and closed


def test_validation_runs_in_val_dtype_and_scores_beside_fp32(comp, tmp_path, monkeypatch):
    """``val.dtype: bf16`` reaches the validation's inference path, and on the same weights
    scores within 0.05 dB of fp32 (what ``upres auto`` checks before it asks for it)."""
    from upres.inference.upscaler import Upscaler

    asked = []

    def recording(model, **kw):
        asked.append(kw["dtype"])
        return Upscaler(model, **kw)

    monkeypatch.setattr(train_mod, "Upscaler", recording)
    scores = {}
    for dtype in ("fp32", "bf16"):
        cfg = tiny_cfg(comp, tmp_path, "train.iterations=4", "train.val_every=4", "train.seed=3",
                       f"val.dtype={dtype}")
        scores[dtype] = train(cfg, tmp_path / dtype, progress=False).last_val["val_psnr"]
    assert asked == ["fp32", "bf16"]
    assert scores["bf16"] == pytest.approx(scores["fp32"], abs=0.05)


def test_the_time_the_loop_waits_for_data_is_its_own_phase(comp, tmp_path, monkeypatch):
    """Data on the critical path shows on the run's page: a loader that takes 0.1 s a crop (two a
    batch, no workers) makes its phase at least 0.2 s a step, kept out of "training steps"."""
    from upres.training.data import CropDataset

    slow = CropDataset.__getitem__

    def crop_slowly(self, index):
        time.sleep(0.1)
        return slow(self, index)

    monkeypatch.setattr(CropDataset, "__getitem__", crop_slowly)
    cfg = tiny_cfg(comp, tmp_path, "train.iterations=3", "data.workers=0", "train.batch_size=2",
                   "train.val_every=1000", "train.val_at_start=false")
    train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    phases = next(r["phase_seconds"] for r in records if "phase_seconds" in r)
    assert phases["waiting for data"] >= 3 * 2 * 0.1
    assert phases["training steps"] < phases["waiting for data"]


def test_a_compiled_ddp_run_is_checked_once_and_trains_as_eager_ddp(comp, tmp_path):
    """Across processes the check compiles the bare network (no DDP forward left without its
    backward): two gloo processes with train.compile end where two eager ones do."""
    for name, extra in (("eager", ()), ("compiled", ("train.compile=true",))):
        mp.spawn(_ddp_worker, args=(2, free_port(), str(comp), str(tmp_path / name),
                                    str(tmp_path / "cache"), *extra), nprocs=2, join=True)
    records = [json.loads(x) for x in (tmp_path / "compiled/metrics.jsonl").read_text().splitlines()]
    [check] = [r["compile_check"] for r in records if "compile_check" in r]  # rank 0 writes
    assert check["ok"] and check["grad_error"] <= 1e-3
    a, b = _final_weights(tmp_path / "compiled"), _final_weights(tmp_path / "eager")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5)
