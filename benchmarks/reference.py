"""The hand-written PyTorch VAE loop the library is measured against.

:class:`HandWrittenVAE` trains the encoder and decoder of a library :class:`~ppl_vae.VAE` (so the
network and its initial weights are identical) with the loss written out in plain PyTorch and
``torch.optim.Adam``: no Pyro on its path. Given the same seed as :func:`ppl_vae.fit` it draws the
same batch order and the same noise, so the two loops train the same weights up to float rounding
(``tests/test_benchmark.py`` checks this, and that its loss is Pyro's on the same noise).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ppl_vae import EpochBatches

__all__ = ["ANALYTIC_KL", "HandWrittenVAE", "fastest_adam"]

#: The objectives whose loss :class:`HandWrittenVAE` computes, and whether with the analytic KL.
ANALYTIC_KL: dict[str, bool] = {
    "trace": False,
    "jit-trace": False,
    "meanfield": True,
    "jit-meanfield": True,
}


class HandWrittenVAE:
    """The VAE training step written out in plain PyTorch.

    Uses ``model``'s encoder and decoder modules directly with a Normal q(z|x) (loc, softplus
    scale + 1e-5), a N(0, I) prior and a Bernoulli likelihood on logits. ``analytic_kl`` selects
    the loss: the closed-form KL (what ``TraceMeanField_ELBO`` computes) or the single-sample
    ``log q(z) − log p(z)`` (what ``Trace_ELBO`` computes). The batch loss is scaled by ``N / B``
    as the library's data plate does.
    """

    def __init__(
        self,
        model: nn.Module,
        train_x: torch.Tensor,
        *,
        batch_size: int,
        lr: float,
        analytic_kl: bool,
        seed: int,
    ) -> None:
        self.encoder, self.decoder = model.encoder, model.decoder
        self.x = train_x
        self.batch_size = batch_size
        self.analytic_kl = analytic_kl
        params = [*model.encoder.parameters(), *model.decoder.parameters()]
        self.optimizer = fastest_adam(params, lr)
        # fit(seed=s) visits the batches of ppl_vae.batching.EpochBatches(seed=s) and draws its
        # noise from the global RNG seeded with s; the same batches and a generator seeded alike
        # replay both, so from the same initial weights the two loops follow the same trajectory
        # (up to rounding)
        self.order = EpochBatches(train_x.shape[0], batch_size, seed=seed)
        self.noise = torch.Generator(device=train_x.device).manual_seed(seed)
        self.epochs_done = 0

    def epoch(self) -> float:
        """One pass over the data in a random order; returns the mean loss per image."""
        n = self.x.shape[0]
        self.order.set_epoch(self.epochs_done)
        self.epochs_done += 1
        total = 0.0
        for idx in self.order:
            x = self.x[idx.to(self.x.device)]
            loss = self.loss(x) * (n / x.shape[0])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * x.shape[0] / n  # read back every step, as fit() does
        return total / n

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO summed over the batch ``x`` (one reparameterised sample per image)."""
        z_loc, z_raw = self.encoder(x).chunk(2, dim=-1)  # (B, latent_dim) each
        z_scale = F.softplus(z_raw) + 1e-5
        eps = torch.randn(z_loc.shape, generator=self.noise, device=z_loc.device, dtype=z_loc.dtype)
        z = z_loc + z_scale * eps
        logits = self.decoder(z)
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        if self.analytic_kl:
            kl = 0.5 * (z_loc.square() + z_scale.square() - 1.0).sum() - z_scale.log().sum()
        else:  # log q(z|x) − log p(z) at the sampled z; (z − loc) / scale = eps
            kl = (0.5 * (z.square() - eps.square()) - z_scale.log()).sum()
        return nll + kl


def fastest_adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """The fastest torch Adam for these parameters (fused on CPU/CUDA), as the library uses."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # pragma: no cover - torch without fused Adam for this device
        return torch.optim.Adam(params, lr=lr, foreach=True)
