"""The field's density-model protocol: importance-sampled NLL on dynamically binarized MNIST.

Papers compare VAEs by −log p(x) on binary images (Burda et al., 2016; Tomczak & Welling,
2018). Training sees a fresh binarization of the grey-level images every epoch (each pixel
~ Bernoulli(grey level), ``TrainConfig(binarize=True)``); the test set is binarized *once*, with
a recorded seed, and the md5 of its bits is recorded too, so anyone can score the same bits.
The NLL is estimated by importance sampling with K = 5000 draws from the guide (Burda et al.),
in bounded memory (:func:`~ppl_vae.evaluate.log_likelihood` processes the particles in chunks),
next to the ELBO and the IWAE-k bounds, in nats and bits per dimension.

:data:`PUBLISHED` holds the published rows the library's numbers are put beside
(``experiments/likelihood_table.py``); :data:`MODELS` the models by name.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .evaluate import elbo, log_likelihood
from .metrics import bits_per_dim, eval_mode

__all__ = [
    "MODELS",
    "PROTOCOL",
    "PUBLISHED",
    "TEST_BITS_MD5",
    "TEST_BITS_SEED",
    "LiteratureModel",
    "binarize_fixed",
    "bits_md5",
    "check_protocol",
    "check_protocol_model",
    "density_report",
    "protocol_metrics",
]

#: The name of the protocol (``--protocol binarized-mnist``).
PROTOCOL = "binarized-mnist"
#: Seed of the one fixed binarization of the 10 000 MNIST test images.
TEST_BITS_SEED = 0
#: md5 of those bits, packed 8 pixels to a byte in row-major order (:func:`bits_md5`).
TEST_BITS_MD5 = "cf0af779210858dddcd8c91af2de38d7"


def binarize_fixed(x: torch.Tensor, seed: int = TEST_BITS_SEED) -> torch.Tensor:
    """One binarization of grey levels in [0, 1]: pixel = [u < grey level] with u ~ U(0, 1) drawn
    on the CPU from a generator seeded by ``seed`` alone (the same bits on any machine).
    Returned as floats of 0/1 on ``x``'s device."""
    if not (x.min() >= 0 and x.max() <= 1):
        raise ValueError("binarization needs grey levels in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape, generator=g)  # uniforms: the same stream on every machine
    return (u < x.detach().cpu().float()).to(x.device, x.dtype)


def bits_md5(bits: torch.Tensor) -> str:
    """md5 of binary images, packed 8 pixels to a byte in row-major order: a short name for the
    exact bits a number was computed on."""
    flat = bits.detach().cpu().reshape(-1)
    if not bool(((flat == 0) | (flat == 1)).all()):
        raise ValueError("bits_md5 needs binary data (0/1 values)")
    return hashlib.md5(np.packbits(flat.to(torch.uint8).numpy()).tobytes()).hexdigest()


@torch.no_grad()
def density_report(
    model: Any,
    bits: torch.Tensor,
    *,
    num_samples: int = 5000,
    bounds: tuple[int, ...] = (5, 50),
    batch_size: int = 100,
    max_elements: int = 2**25,
    progress: bool = False,
) -> dict[str, Any]:
    """The protocol's numbers for ``model`` on binary images ``bits``, per image:

    - ``nll``: −log p(x) by importance sampling with ``num_samples`` draws (K = 5000);
    - ``elbo`` (analytic KL where Pyro knows it) and ``iwae_k`` for each k in ``bounds``: the
      importance-weighted bounds, each estimated with its own k draws per image;
    - each also in bits per dimension, the md5 of the bits and the seconds taken.
    """
    d = math.prod(bits.shape[1:])
    t0 = time.perf_counter()
    report: dict[str, Any] = {"protocol": PROTOCOL, "num_images": bits.shape[0]}
    report["bits_md5"] = bits_md5(bits)
    with eval_mode(model):
        ll = log_likelihood(
            model,
            bits,
            num_samples=num_samples,
            batch_size=batch_size,
            max_elements=max_elements,
            progress=progress,
        )
        report["nll"] = -float(ll.mean())
        report["nll_standard_error"] = float(ll.std() / math.sqrt(len(ll)))
        report["nll_samples"] = num_samples
        report["elbo"] = elbo(model, bits, batch_size=1000)
        for k in bounds:
            report[f"iwae_{k}"] = float(
                log_likelihood(model, bits, num_samples=k, batch_size=batch_size).mean()
            )
    report["nll_bits_per_dim"] = -bits_per_dim(report["nll"], d)
    report["elbo_bits_per_dim"] = bits_per_dim(report["elbo"], d)
    report["seconds"] = time.perf_counter() - t0
    return report


def check_protocol(protocol: str | None, dataset: str) -> None:
    """Refuse an unknown protocol, or the binarized-MNIST one on other data."""
    if protocol is None:
        return
    if protocol != PROTOCOL:
        raise ValueError(f"unknown protocol {protocol!r}; the one known is {PROTOCOL!r}")
    if dataset.lower() != "mnist":
        raise ValueError(
            f"the {PROTOCOL} protocol scores binarized MNIST; this run's data are {dataset!r}"
        )


def check_protocol_model(likelihood: str, test_x: Any) -> None:
    """Before any training: the protocol scores a Bernoulli likelihood on an in-memory test set."""
    if likelihood != "bernoulli":
        raise ValueError(
            f"the {PROTOCOL} protocol scores binary images with the Bernoulli likelihood, not "
            f"{likelihood!r}"
        )
    if not isinstance(test_x, torch.Tensor):
        raise ValueError(f"the {PROTOCOL} protocol needs the test images in memory")


def protocol_metrics(
    model: Any, test_x: torch.Tensor, protocol: str | None, k: int, progress: bool
) -> dict[str, Any]:
    """The protocol's report on the fixed binarization of ``test_x`` (empty without one); the
    model and data were checked by :func:`check_protocol_model` before any work."""
    if protocol is None:
        return {}
    bits = binarize_fixed(test_x)
    return {"binarized_mnist": density_report(model, bits, num_samples=k, progress=progress)}


@dataclass(frozen=True)
class LiteratureModel:
    """A model of the papers' tables, by name: a model family of
    :data:`~ppl_vae.model.MODEL_PRESETS`, which also holds its objective (the IWAE models')."""

    family: str
    note: str = ""
    #: The MLP's nonlinearity: Burda et al.'s tanh unless the model needs another (see MODELS).
    activation: str = "tanh"
    #: Extra guide-family arguments (the IAF's number of flows, ...).
    guide_kwargs: tuple[tuple[str, Any], ...] = ()


#: The models the papers compare, by name (``experiments/likelihood_table.py --models``).
MODELS: dict[str, LiteratureModel] = {
    "vae": LiteratureModel("vae", note="diagonal Normal guide, N(0, I) prior, ELBO"),
    "iwae-5": LiteratureModel("iwae-5", "IWAE bound, k = 5 (Burda et al.)"),
    "iwae-50": LiteratureModel("iwae-50", "IWAE bound, k = 50 (Burda et al.)"),
    # The VampPrior runs on ReLU nets (Tomczak & Welling used gated units, not tanh): on Burda's
    # tanh net with a tanh encoder *and* decoder it collapses within ~20 steps (every image gets
    # the pseudo-inputs' posterior; ReLU in either net avoids it). "vae-relu" is its reference.
    "vampprior": LiteratureModel(
        "vampprior", note="500 learnable pseudo-inputs (Tomczak), ReLU nets", activation="relu"
    ),
    "vae-relu": LiteratureModel(
        "vae", note="the VAE on the VampPrior's ReLU nets", activation="relu"
    ),
    "iaf": LiteratureModel(
        "iaf",
        note="IAF guide (Kingma et al.): 4 gated flows, each started near the identity",
        guide_kwargs=(("num_flows", 4), ("stable", True)),
    ),
    "iaf-affine": LiteratureModel("iaf", note="IAF guide: 2 plain affine flows (random start)"),
    "gmvae": LiteratureModel("gmvae", note="mixture prior, component summed out by enumeration"),
}

#: Published test NLLs (nats) on dynamically binarized MNIST: (source, model, NLL, setting).
PUBLISHED: list[tuple[str, str, float, str]] = [
    ("Burda et al. 2016, Table 1", "vae", 86.76, "784-200-200-50 tanh, 3280 epochs, batch 20"),
    ("Burda et al. 2016, Table 1", "iwae-5", 85.54, "784-200-200-50 tanh, 3280 epochs"),
    ("Burda et al. 2016, Table 1", "iwae-50", 84.78, "784-200-200-50 tanh, 3280 epochs"),
    ("Tomczak & Welling 2018", "vampprior", 85.57, "MLP, 500 pseudo-inputs"),
    ("pythae reproduction", "vae", 89.78, "pythae benchmark"),
    ("pythae reproduction", "vampprior", 85.79, "pythae benchmark"),
    ("pythae reproduction", "iwae-5", 86.82, "pythae benchmark (IWAE)"),
]
