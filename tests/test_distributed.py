"""Training across processes: two CPU processes with gloo against one process.

A deterministic program (point-mass guide, flat prior, Gaussian likelihood with identity mean)
makes the comparison exact up to float rounding: with gradients summed over the ranks weighted by
their share of the global batch, two processes with half a batch each train the same parameters
as one process with the whole batch. The program records the data points each rank sees (the
first feature is the point's index), to check that the ranks see different shards, other ones
every epoch. A run checkpointed by two processes resumes in one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ppl_vae import ModelConfig, TrainConfig, build_model, fit
from ppl_vae.batching import EpochBatches

N, D, BATCH = 48, 4, 16
ROOT = Path(__file__).resolve().parents[1]


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    x[:, 0] = torch.arange(N, dtype=torch.float32)  # the point's index, to see who saw what
    return x


class Recording:
    """The library's AE, seen through plain methods that record the batches of training steps."""

    def __init__(self, seen: list[list[int]]) -> None:
        cfg = ModelConfig(
            latent_dim=2,
            hidden=(8,),
            guide="delta",
            prior="flat",
            likelihood="gaussian",
            likelihood_kwargs={"link": "identity"},
        )
        self.vae = build_model(cfg, (D,), seed=0)
        self.seen = seen

    def model(self, x, x_in=None, *, num_data=None):
        if torch.is_grad_enabled():
            self.seen.append(sorted(int(v) for v in x[:, 0].round()))
        return self.vae.model(x, x_in, num_data=num_data)

    def guide(self, x, x_in=None, *, num_data=None):
        return self.vae.guide(x, x_in, num_data=num_data)


def _config(epochs: int, device: str = "cpu") -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=BATCH, lr=1e-2, device=device, seed=3)


def _train(epochs: int, ckpt: Path | None = None, resume: bool = False, device: str = "cpu"):
    seen: list[list[int]] = []
    prog = Recording(seen)
    prog.vae.to(device)  # a user's program lives where the user puts it; fit moves the data
    test = _data()[:21] + 0.5  # 21 points: the ranks' shares of the test set differ in size
    history = fit(
        prog,
        _data(),
        _config(epochs, device),
        test_x=test,
        checkpoint_path=ckpt,
        resume=resume,
        progress=False,
    )
    state = {k: v.detach().cpu().clone() for k, v in prog.vae.state_dict().items()}
    return state, history, seen[1:]  # the first is fit's check of the program on a first batch


def _worker(rank: int, world: int, init: str, out: str, epochs: int, ckpt: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pyro.clear_param_store()
        state, history, seen = _train(epochs, Path(ckpt) if ckpt else None)
        record = {"state": state, "loss": history.train_loss, "test": history.test_elbo}
        torch.save({**record, "seen": seen}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, tag: str, epochs: int, ckpt: Path | None = None) -> list[dict]:
    init = f"file://{tmp_path / f'init-{tag}'}"
    out = str(tmp_path / tag)
    mp.spawn(_worker, args=(2, init, out, epochs, str(ckpt) if ckpt else None), nprocs=2)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def one_process():
    torch.set_num_threads(1)
    pyro.clear_param_store()
    return _train(2)


def test_two_processes_train_what_one_process_trains(tmp_path, one_process):
    state, history, seen = one_process
    ranks = _spawn(tmp_path, "two", epochs=2)
    for r in ranks:  # every rank holds the same parameters: those of one process
        _close(r["state"], state)
        assert r["loss"] == pytest.approx(history.train_loss, rel=1e-5)
        # the test ELBO, each rank scoring its share, reduced over the ranks
        assert r["test"] == pytest.approx(history.test_elbo, rel=1e-5)
    # each step's shares are disjoint and together make the single process's batch
    steps = len(seen)
    assert all(len(r["seen"]) == steps for r in ranks)
    for i in range(steps):
        a, b = ranks[0]["seen"][i], ranks[1]["seen"][i]
        assert not set(a) & set(b)
        assert sorted(a + b) == seen[i]
    # and a rank's shard differs from one epoch to the next
    per_epoch = steps // 2
    first = {p for batch in ranks[0]["seen"][:per_epoch] for p in batch}
    second = {p for batch in ranks[0]["seen"][per_epoch:] for p in batch}
    assert len(first) == len(second) == N // 2 and first != second


def test_a_run_of_two_processes_resumes_in_one(tmp_path, one_process):
    state, history, _ = one_process
    ckpt = tmp_path / "ck.pt"
    _spawn(tmp_path, "half", epochs=1, ckpt=ckpt)
    pyro.clear_param_store()
    resumed, resumed_history, _ = _train(2, ckpt, resume=True)
    _close(resumed, state)
    assert resumed_history.train_loss == pytest.approx(history.train_loss, rel=1e-5)


def test_the_sampler_shards_every_global_batch():
    """The order every path uses: set_epoch changes it, shares partition the global batches."""
    single = EpochBatches(10, 4, seed=1)
    shards = [EpochBatches(10, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for s in (single, *shards):
            s.set_epoch(epoch)
        whole = [b.tolist() for b in single]
        parts = [[b.tolist() for b in s] for s in shards]
        assert [sorted(a + b) for a, b in zip(*parts)] == [sorted(b) for b in whole]
    single.set_epoch(0)
    e0 = [b.tolist() for b in single]
    single.set_epoch(1)
    assert e0 != [b.tolist() for b in single]
    assert len(single) == 3 and len(shards[0]) == 3
    odd = EpochBatches(9, 4, seed=1, rank=1, world_size=2)  # last global batch of 1: dropped
    assert len(odd) == len(list(odd)) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_trains_and_only_rank_zero_writes(mnist, tmp_path):
    """``torchrun --nproc-per-node=2 -m ppl_vae train``, then the run resumed by one process."""
    out = tmp_path / "run"
    args = ["--train-size", "256", "--test-size", "64", "--hidden", "16", "--latent-dim", "4"]
    args += ["--iw-samples", "5", "--iw-images", "8", "--no-figures", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += [f"--master-port={_free_port()}", "-m", "ppl_vae", "train", "--epochs", "1", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("metrics:") == 1  # rank 0 alone reports and writes
    assert (out / "checkpoint.pt").exists() and (out / "metrics.json").exists()
    cmd = [sys.executable, "-m", "ppl_vae", "train", "--epochs", "2", "--resume", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    assert json.loads((out / "metrics.json").read_text())["history"]["epoch"] == [1, 2]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cuda_worker(rank: int, world: int, backend: str, init: str, out: str) -> None:
    device = f"cuda:{rank % torch.cuda.device_count()}"
    torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    try:
        pyro.clear_param_store()
        state, history, seen = _train(2, device=device)
        record = {"state": state, "loss": history.train_loss, "test": history.test_elbo}
        torch.save({**record, "seen": seen}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _cuda_backends() -> list:
    """NCCL with one rank per GPU (NCCL refuses two ranks on one GPU: on a single GPU it runs
    one rank, which still takes every collective through NCCL), and gloo with two ranks sharing
    GPU 0."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [
        pytest.param("nccl", max(1, min(2, gpus)), marks=CUDA, id="nccl"),
        pytest.param("gloo", 2, marks=CUDA, id="gloo-2-ranks"),
    ]


@pytest.mark.parametrize(("backend", "world"), _cuda_backends())
def test_cuda_processes_train_what_one_cuda_process_trains(tmp_path, backend, world):
    """On CUDA: the ranks' parameters, losses and reduced test ELBO equal one process's."""
    pyro.clear_param_store()
    state, history, seen = _train(2, device="cuda:0")
    init = f"file://{tmp_path / 'init-cuda'}"
    out = str(tmp_path / backend)
    mp.spawn(_cuda_worker, args=(world, backend, init, out), nprocs=world)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    for r in ranks:
        _close(r["state"], state)
        assert r["loss"] == pytest.approx(history.train_loss, rel=1e-4)
        assert r["test"] == pytest.approx(history.test_elbo, rel=1e-4)
    for i in range(len(seen)):  # the shares of each step make the single process's batch
        assert sorted(p for r in ranks for p in r["seen"][i]) == seen[i]


@CUDA
def test_cuda_torchrun_with_nccl(mnist, tmp_path):
    """``torchrun -m ppl_vae train --device cuda``: NCCL, one rank per GPU, rank 0 writes."""
    gpus = torch.cuda.device_count()
    out = tmp_path / "run"
    args = ["--train-size", "512", "--test-size", "128", "--iw-samples", "5", "--iw-images", "8"]
    args += ["--device", "cuda", "--no-figures", "--quiet", "--out", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={min(2, gpus)}"]
    cmd += [f"--master-port={_free_port()}", "-m", "ppl_vae", "train", "--epochs", "1", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("metrics:") == 1
    assert (out / "checkpoint.pt").exists() and (out / "metrics.json").exists()
