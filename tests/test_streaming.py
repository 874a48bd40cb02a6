"""The streaming path: a Dataset read through a DataLoader trains exactly as the in-memory tensor.

Same batches (one sampler for both paths), same noise (the DataLoader draws nothing from the
global stream), so the same per-epoch losses, test ELBOs and weights; with worker processes too.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from ppl_vae import ModelConfig, TrainConfig, build_model, fit

IMG = (1, 8, 8)


def _images(n: int = 80) -> torch.Tensor:
    return torch.rand(n, *IMG, generator=torch.Generator().manual_seed(0))


class Labelled(Dataset):
    """A user's Dataset: (image, label) pairs, like torchvision's."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], i % 10


def _fit(train, test, **kw):
    model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), IMG, seed=0)
    kw = {"device": "cpu", **kw}
    cfg = TrainConfig(epochs=2, batch_size=24, binarize=True, **kw)
    history = fit(model, train, cfg, test_x=test, progress=False)
    return history, model.state_dict()


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_dataset_trains_as_the_in_memory_tensor(workers):
    x, t = _images(), _images(30)
    ref, ref_state = _fit(x, t)
    got, state = _fit(Labelled(x), Labelled(t), num_workers=workers)
    assert got.train_loss == ref.train_loss
    assert got.test_elbo == pytest.approx(ref.test_elbo, rel=1e-6)
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], rtol=0, atol=0)


def test_a_tensor_can_be_streamed_on_request():
    x = _images()
    ref, _ = _fit(x, None)
    got, _ = _fit(x, None, stream=True)
    assert got.train_loss == ref.train_loss


def test_bf16_is_refused_off_cuda():
    with pytest.raises(ValueError, match="bf16"):
        _fit(_images(), None, precision="bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_trains_in_plain_python_and_refuses_a_compiled_objective():
    history, _ = _fit(_images(), _images(30), device="cuda", precision="bf16")
    assert history.objective == "trace"  # what auto becomes under autocast
    assert all(torch.isfinite(torch.tensor(history.train_loss)))
    with pytest.raises(ValueError, match="plain objectives"):
        _fit(_images(), None, device="cuda", precision="bf16", objective="jit-trace")


def test_a_dataset_is_evaluated_in_chunks_like_the_tensor(monkeypatch):
    import importlib

    import pyro

    from ppl_vae import evaluate as evaluate_fn
    from ppl_vae import image_metrics

    evaluation = importlib.import_module("ppl_vae.evaluate")  # the module, not the function

    x = _images(50)
    model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), IMG, seed=0)
    pyro.set_rng_seed(1)
    ref = evaluate_fn(model, x, iw_samples=10, iw_images=20)
    ref.update(image_metrics(model, x, "dropout:0.5"))
    monkeypatch.setattr(evaluation, "CHUNK", 20)  # three chunks of 20, 20 and 10
    pyro.set_rng_seed(1)
    got = evaluate_fn(model, Labelled(x), iw_samples=10, iw_images=20)
    got.update(image_metrics(model, Labelled(x), "dropout:0.5"))
    assert got["num_images"] == 50
    assert got["reconstruction_mse"] == pytest.approx(ref["reconstruction_mse"], rel=1e-6)
    assert got["psnr"] == pytest.approx(ref["psnr"], rel=1e-6)
    assert got["log_likelihood_images"] == 20
    assert got["elbo"] == pytest.approx(ref["elbo"], rel=0.02)  # Monte Carlo, other draws
