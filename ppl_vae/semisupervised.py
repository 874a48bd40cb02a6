"""The semi-supervised VAE M2 of Kingma et al. (2014) as a Pyro model/guide pair.

This follows Pyro's own example ``examples/vae/ss_vae_M2.py`` and its tutorial
(https://pyro.ai/examples/ss-vae.html), the "third variant": the label is summed out of the
unsupervised ELBO by parallel enumeration and an auxiliary classification loss trains q(y|x) on
the labelled images.

Model and guide::

    p(y) = Categorical(1/K, ..., 1/K)    p(z) = N(0, I)    p(x | y, z) = Bernoulli(decoder(y, z))
    q(y | x) = Categorical(encoder_y(x))    q(z | x, y) = N(encoder_z(x, y))

For a labelled pair the ELBO is L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(y) + log p(z) - log
q(z|x,y)]; for an unlabelled image U(x) = Σ_y q(y|x) [L(x, y) - log q(y|x)], the sum over the
K labels done exactly by ``TraceEnum_ELBO`` (one z draw per label). Kingma's objective (their
eq. 9) is J^α = Σ_labelled -L(x, y) + Σ_unlabelled -U(x) + α' Σ_labelled -log q(y|x), with
α' = ``aux_loss_multiplier`` (46 in Pyro's example).

Data: grey levels in [0, 1] scored with the Bernoulli cross-entropy, as in Pyro's example (the
images are not binarised; for grey levels this is the usual unnormalised MNIST likelihood).
The likelihood is a constructor argument (any :class:`~ppl_vae.likelihoods.Likelihood`); inputs
it cannot score are refused.

Stacked M1+M2 (Kingma et al.'s section 3.2): M2 on the codes of an unsupervised VAE, M1
(:data:`M1_CONFIG`), instead of on pixels. :func:`ppl_vae.latent.encode_dataset` reads M1's
posterior means and :func:`active_units` keeps the units M1 uses; M2 scores them with
``GaussianLearnedVariance(link="identity")``. ``experiments/ss_vae.py --features m1`` does all
three.

Training (:func:`fit_ssvae`): an epoch is one pass over the unlabelled images. Two schedules,
both unbiased estimates of the whole J^α at every step (the data plate is ``data_plate(x,
num_data)``, ``num_data`` the size of the set the batch comes from):

- ``"joint"`` (Kingma et al.'s own recipe: every minibatch holds labelled and unlabelled
  images): each step takes an unlabelled batch and a labelled batch (the labelled images cycled
  through in shuffled passes) and one Adam step on -U + -L + α'·CE, the three Pyro losses'
  gradients accumulated first.
- ``"pyro"`` (default, Pyro's example): a labelled batch every ``int(N / sup_num)`` batches until
  the labelled images are used up; every batch takes one step of the ELBO's SVI and one of the
  auxiliary loss's SVI, both on one Adam; a step of a kind is weighted ``n / n_kind`` (``n``
  batches per epoch, ``n_kind`` of that kind), so every image carries the same weight in the
  gradient as in Pyro's example (where the per-batch sums are unscaled).

They differ under Adam when labels are few: with 100 labels Pyro's schedule gives the labels one
step in 251; Adam normalises that rare large gradient to an ordinary step and q(y|x) drifts to
whatever the unlabelled term favours (validation accuracy 0.64 at epoch 10, 0.53 at epoch 21 in
our run; by then the decoder ignored y: the label ELBOs of :func:`label_elbos` differed by a median
3 nats across labels), while the joint schedule reached 0.61 after its first epoch and kept the
label channel in use. With 3000 labels the joint schedule, which shows each labelled image ~16
times per epoch, overfits them (test accuracy 0.921 after 34 epochs against 0.936 for Pyro's).

This trainer is separate from :func:`ppl_vae.fit` because M2 trains on two data streams with
two objectives; the model and guide are ordinary Pyro programs and score with Pyro's ELBOs.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.util import zero_grads
from pyro.optim import Adam
from torch import nn
from torch.nn import functional as F

from . import likelihoods
from .checkpoint import load_checkpoint, param_store_state, save_checkpoint
from .errors import CheckpointError, DataError, TrainingDivergedError
from .program import data_plate

__all__ = [
    "M1_CONFIG",
    "M1_CONV_CONFIG",
    "OUTPUT_INITS",
    "PYRO_EXAMPLE",
    "PYRO_PUBLISHED",
    "SCHEDULES",
    "SSVAE",
    "SSHistory",
    "SSTrainConfig",
    "SemiSupervisedSplit",
    "accuracy",
    "active_units",
    "batch_schedule",
    "fit_ssvae",
    "label_elbos",
    "load_trained",
    "split_labelled",
]

#: Name under which the networks are registered with ``pyro.module``.
MODULE_NAME = "ssvae"

#: The settings of Pyro's ``examples/vae/ss_vae_M2.py`` (its ``EXAMPLE_RUN`` line: -zd 50 -hl 500
#: -lr 0.00042 -b1 0.95 -bs 200 -alm 46 --aux-loss -enum parallel; 50 epochs is the script's
#: default ``-n``). Its MLPs use softplus hidden units and draw initial weights and biases from
#: N(0, 0.001²).
PYRO_EXAMPLE: dict[str, Any] = {
    "z_dim": 50,
    "hidden": (500,),
    "lr": 0.00042,
    "beta1": 0.95,
    "batch_size": 200,
    "aux_loss_multiplier": 46.0,
    "epochs": 50,
    "init_std": 1e-3,
    "validation_num": 10_000,
}

#: How :class:`SSVAE` draws its output layers' initial weights (``output_init``).
OUTPUT_INITS = ("normal", "torch")

#: Pyro's published test accuracies of this model (the tutorial's "third variant": enumeration
#: plus the auxiliary loss), mean (95% confidence half-width) over five random selections of the
#: labelled images. Source: Pyro tutorial "The Semi-Supervised VAE", Table 1
#: (https://pyro.ai/examples/ss-vae.html; tutorial/source/ss-vae.ipynb in pyro-ppl/pyro).
#: ``sup_num: (M2 accuracy, its CI, baseline classifier on the labelled images alone, its CI)``.
PYRO_PUBLISHED: dict[int, tuple[float, float, float, float]] = {
    100: (0.9319, 0.0060, 0.7712, 0.0159),
    600: (0.9437, 0.0070, 0.8716, 0.0064),
    1000: (0.9487, 0.0038, 0.8863, 0.0025),
    3000: (0.9582, 0.0012, 0.9108, 0.0015),
}


# --------------------------------------------------------------------------------------------
# Networks and the model/guide pair
# --------------------------------------------------------------------------------------------


class _JointMLP(nn.Module):
    """An MLP of the concatenation ``[a, one_hot(y)]``, computed without concatenating.

    The first layer is split, ``W [a; y] + b = W_a a + b + W_y y``, so under enumeration the
    ``(K, 1, ·)`` label term broadcasts against the ``(B, ·)`` data term: the large data product
    is computed once per image instead of once per image and label (the same function).
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        sizes = [*hidden, out_dim]
        self.a_part = nn.Linear(in_dim, sizes[0])
        self.y_part = nn.Linear(num_classes, sizes[0], bias=False)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Softplus(), nn.Linear(a, b)]
        self.rest = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor, y_onehot: torch.Tensor) -> torch.Tensor:
        return self.rest(self.a_part(a) + self.y_part(y_onehot))


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    sizes = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class SSVAE(nn.Module):
    """M2: a label y and a style z generate an image; q(y|x) is the classifier.

    Args:
        input_shape: shape of one image, e.g. ``(1, 28, 28)`` (read off the data, flattened
            inside).
        num_classes: K, the number of labels (uniform prior over them).
        z_dim: size of the style code z.
        hidden: hidden layer sizes of all three MLPs (softplus units, as in Pyro's example).
        aux_loss_multiplier: α', the weight of -log q(y|x) on labelled images (Pyro: 46).
        init_std: the hidden layers' initial weights and biases are drawn from N(0, init_std²),
            as in Pyro's example (1e-3: every network starts near a constant function).
        output_init: the output layers' initial weights: ``"normal"`` (default) draws them from
            N(0, init_std²) too; ``"torch"`` draws them as ``nn.Linear`` does,
            U(±1/√fan_in), which is exactly Pyro's example (its MLPs re-draw only the hidden
            layers). Seed 0 of the stacked M1+M2 with 100 labels: test accuracy 0.8869 /
            0.8860 after 12 epochs (README).
        seed: the initial weights are a function of this seed alone (the global random streams
            are neither used nor changed).
        likelihood: p(x | y, z) given the decoder's output, any
            :class:`~ppl_vae.likelihoods.Likelihood` (default: Bernoulli, Pyro's example). The
            decoder emits ``params_per_pixel`` values per input value; the data must lie in the
            likelihood's ``data_support``. Real-valued inputs (e.g. the codes of an M1 VAE, for
            Kingma et al.'s stacked M1+M2) take ``GaussianLearnedVariance(link="identity")``.

    ``model``/``guide`` take ``(xs, ys=None, num_data=None)``: images ``(B, *input_shape)``,
    int64 labels ``(B,)`` or None (unlabelled: the guide enumerates y), and the size of the
    set the batch is drawn from (the plate scales the batch's log density by ``num_data / B``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 10,
        z_dim: int = PYRO_EXAMPLE["z_dim"],
        hidden: Sequence[int] = PYRO_EXAMPLE["hidden"],
        aux_loss_multiplier: float = PYRO_EXAMPLE["aux_loss_multiplier"],
        init_std: float = PYRO_EXAMPLE["init_std"],
        seed: int = 0,
        likelihood: likelihoods.Likelihood | None = None,
        output_init: str = "normal",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if z_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"z_dim and hidden sizes must be positive, got {z_dim}, {hidden}")
        if not aux_loss_multiplier >= 0:
            raise ValueError(f"aux_loss_multiplier must be >= 0, got {aux_loss_multiplier}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        if output_init not in OUTPUT_INITS:
            raise ValueError(f"output_init must be one of {OUTPUT_INITS}, got {output_init!r}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes, self.z_dim = int(num_classes), int(z_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.aux_loss_multiplier = float(aux_loss_multiplier)
        d = math.prod(self.input_shape)
        self.encoder_y = _mlp(d, self.hidden, self.num_classes)  # logits of q(y|x)
        self.encoder_z = _JointMLP(d, self.num_classes, self.hidden, 2 * self.z_dim)
        self.likelihood = likelihoods.Bernoulli() if likelihood is None else likelihood
        self.likelihood.event_dim = 1  # inputs are flattened: one event of d values
        out = self.likelihood.params_per_pixel * d
        self.decoder = _JointMLP(self.z_dim, self.num_classes, self.hidden, out)
        self.reset_parameters(seed, init_std, output_init)

    def reset_parameters(
        self, seed: int, init_std: float = PYRO_EXAMPLE["init_std"], output_init: str = "normal"
    ) -> None:
        """Draw the initial weights with a generator seeded by ``seed``: the hidden layers from
        N(0, init_std²), the output layers likewise (``"normal"``) or from nn.Linear's
        U(±1/√fan_in) (``"torch"``, Pyro's example exactly)."""
        fan_in_of: dict[int, int] = {}  # output-layer parameter -> its layer's fan-in
        if output_init == "torch":
            for net in (self.encoder_y, self.encoder_z, self.decoder):
                layers = [m for m in net.modules() if isinstance(m, nn.Linear)]
                # the output layer; with no hidden layer a _JointMLP's is its split first layer
                no_hidden = len(layers) == 2 and isinstance(net, _JointMLP)
                out = layers if no_hidden else layers[-1:]
                fan_in = sum(layer.in_features for layer in out)
                fan_in_of |= {id(p): fan_in for layer in out for p in layer.parameters()}
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for p in self.parameters():
                if id(p) in fan_in_of:
                    u = torch.rand(p.shape, generator=g, dtype=p.dtype)
                    p.copy_((u * 2 - 1) * (1 / math.sqrt(fan_in_of[id(p)])))
                else:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * init_std)

    # ------------------------------------------------------------------ the networks
    def _flat(self, xs: torch.Tensor) -> torch.Tensor:
        return xs.reshape(xs.shape[0], -1)

    def _onehot(self, ys: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(ys, self.num_classes).to(like.dtype)

    def classifier_logits(self, xs: torch.Tensor) -> torch.Tensor:
        """Logits of q(y|x), ``(B, K)``."""
        return self.encoder_y(self._flat(xs))

    def z_params(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of q(z|x, y); ``ys`` are labels, which may be an enumerated ``(K, 1)``
        (then the result is ``(K, B, z_dim)``)."""
        out = self.encoder_z(self._flat(xs), self._onehot(ys, xs))
        loc, log_scale = out.split(self.z_dim, dim=-1)
        return loc, log_scale.exp()  # Pyro's example: exp of the raw output

    def decoder_logits(self, zs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """The decoder's output, the likelihood's parameters (logits for the Bernoulli),
        flattened: ``(..., B, params_per_pixel * prod(input_shape))``."""
        return self.decoder(zs, self._onehot(ys, zs))

    def predict(self, xs: torch.Tensor) -> torch.Tensor:
        """The most probable label under q(y|x), ``(B,)`` int64."""
        return self.classifier_logits(xs).argmax(dim=-1)

    # ------------------------------------------------------------------ the Pyro program
    def model(
        self, xs: torch.Tensor, ys: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        """p(y) p(z) p(x | y, z); ``ys`` observed when given, else supplied by the guide."""
        pyro.module(MODULE_NAME, self)
        b = xs.shape[0]
        x = self._flat(xs)
        with data_plate(xs, num_data):
            zs = pyro.sample(
                "z", dist.Normal(x.new_zeros(b, self.z_dim), x.new_ones(b, self.z_dim)).to_event(1)
            )
            ys = pyro.sample("y", dist.Categorical(logits=x.new_zeros(b, self.num_classes)), obs=ys)
            logits = self.decoder_logits(zs, ys)
            return pyro.sample("x", self.likelihood(logits), obs=x)

    def guide(
        self, xs: torch.Tensor, ys: torch.Tensor | None = None, num_data: int | None = None
    ) -> None:
        """q(y | x) (enumerated in parallel when ``ys`` is None) and q(z | x, y)."""
        pyro.module(MODULE_NAME, self)
        with data_plate(xs, num_data):
            if ys is None:
                ys = pyro.sample(
                    "y",
                    dist.Categorical(logits=self.classifier_logits(xs)),
                    infer={"enumerate": "parallel"},
                )
            loc, scale = self.z_params(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model_classify(
        self, xs: torch.Tensor, ys: torch.Tensor | None = None, num_data: int | None = None
    ) -> None:
        """The auxiliary loss α' · -log q(y|x) on labelled images (nothing to score without
        labels). Pyro's example registers the networks either way; so does this."""
        pyro.module(MODULE_NAME, self)
        if ys is None:
            return
        with data_plate(xs, num_data), poutine.scale(scale=self.aux_loss_multiplier):
            pyro.sample("y_aux", dist.Categorical(logits=self.classifier_logits(xs)), obs=ys)

    def guide_classify(
        self, xs: torch.Tensor, ys: torch.Tensor | None = None, num_data: int | None = None
    ) -> None:
        """The auxiliary loss has no latent variables: an empty guide."""

    # ------------------------------------------------------------------ checks
    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`DataError` unless ``x`` is a finite float batch of inputs of this
        model's shape with values the likelihood can score (``[0, 1]`` for the Bernoulli)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DataError(f"{what} must be a floating-point tensor, got {_describe(x)}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise DataError(f"{what} is empty")
        if tuple(x.shape[1:]) != self.input_shape:
            raise DataError(
                f"{what} has shape {tuple(x.shape)}, expected (N, *{self.input_shape}): the "
                "shape the model was built for"
            )
        if not torch.isfinite(x).all():
            raise DataError(f"{what} contains NaN/Inf values")
        if not bool(self.likelihood.data_support.check(x).all()):
            lo, hi = float(x.min()), float(x.max())
            name = type(self.likelihood).__name__
            raise DataError(
                f"{what} spans [{lo:.4g}, {hi:.4g}], outside what the {name} likelihood scores "
                f"({self.likelihood.data_support}): rescale images to [0, 1] (e.g. bytes / 255), "
                "or give real-valued inputs a likelihood with link='identity'"
            )

    def check_labels(self, y: torch.Tensor, n: int, what: str = "labels") -> None:
        """Raise :class:`DataError` unless ``y`` holds ``n`` integer labels in [0, K)."""
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
            raise DataError(
                f"{what} must be an int64 tensor of class indices, got {_describe(y)} "
                "(one-hot labels: pass y.argmax(-1))"
            )
        _check_label_values(y, n, self.num_classes, what)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_label_values(y: torch.Tensor, n: int, num_classes: int, what: str) -> None:
    if y.shape == (n, num_classes):
        raise DataError(f"{what} look one-hot {tuple(y.shape)}: pass class indices, y.argmax(-1)")
    if y.shape != (n,):
        raise DataError(f"{what} must have shape ({n},), one per image; got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{what} span [{int(y.min())}, {int(y.max())}], outside the classes "
            f"0..{num_classes - 1}"
        )


@torch.no_grad()
def accuracy(model: SSVAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of images whose most probable label under q(y|x) is the true one."""
    model.check_data(x, "images")
    model.check_labels(y, x.shape[0])
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model.predict(x[i : i + batch_size]) == y[i : i + batch_size]).sum())
    return correct / x.shape[0]


@torch.no_grad()
def label_elbos(
    model: SSVAE,
    x: torch.Tensor,
    num_samples: int = 8,
    *,
    seed: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """The model's own evidence for every label: ``(N, K)`` Monte Carlo estimates of
    L(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(z) - log q(z|x,y)] + log p(y), ``num_samples``
    draws of z each (noise from a generator seeded by ``seed``, so the result is reproducible).

    Why: softmax over y approximates p(y | x) under the *generative* model, the target the
    unlabelled term pulls q(y|x) towards. Its argmax is the generative model's classifier, and
    the spread of L(x, ·) over y says whether the decoder uses y at all: a collapsed label
    channel gives nearly equal values, and then the unlabelled images cannot teach q(y|x).
    """
    model.check_data(x, "images")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    g = torch.Generator(device=x.device).manual_seed(int(seed))
    ys = torch.arange(model.num_classes, device=x.device).reshape(-1, 1)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        flat = model._flat(xb)
        loc, scale = model.z_params(xb, ys)  # (K, B, z_dim)
        total = torch.zeros(loc.shape[:-1], dtype=loc.dtype, device=loc.device)
        for _ in range(num_samples):
            eps = torch.randn(loc.shape, generator=g, dtype=loc.dtype, device=loc.device)
            z = loc + scale * eps
            total += (
                model.likelihood(model.decoder_logits(z, ys)).log_prob(flat)
                + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                - dist.Normal(loc, scale).log_prob(z).sum(-1)
            )
        out.append((total / num_samples).T - math.log(model.num_classes))
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Stacked M1+M2 (Kingma et al. 2014, section 3.2): M2 on the codes of an unsupervised VAE
# --------------------------------------------------------------------------------------------

#: Kingma et al.'s M1, as :class:`~ppl_vae.ModelConfig` fields: a VAE with two hidden layers of
#: 600 softplus units and a 50-dimensional z, trained without labels; its codes are M2's inputs.
M1_CONFIG: dict[str, Any] = {"latent_dim": 50, "hidden": (600, 600), "activation": "softplus"}

#: A convolutional M1 (not in Kingma et al.): the library's ``conv`` pair (two stride-2
#: convolutions of 32 and 64 ReLU channels and a 512-unit layer, mirrored in the decoder) with
#: the same 50-dimensional z. Its codes carry the digit class better than the MLP's (README).
M1_CONV_CONFIG: dict[str, Any] = {"latent_dim": 50, "net": "conv"}


def active_units(codes: torch.Tensor, threshold: float = 0.01) -> torch.Tensor:
    """Which latent units a VAE uses: ``Var_x E_q[z_u | x] > threshold`` (Burda et al. 2016's
    criterion), a boolean mask over the units.

    Why: a VAE leaves units it does not need at the prior (their posterior mean is ~0 for every
    x). Those units carry no information about x, and as inputs of M2 they are constants that a
    Gaussian likelihood with learned variance would score with an unbounded density; M1+M2
    keeps the active units only.
    """
    if codes.dim() != 2 or codes.shape[0] < 2:
        raise DataError(f"codes must be (N >= 2, latent_dim), got shape {tuple(codes.shape)}")
    mask = codes.var(0) > threshold
    if not bool(mask.any()):
        raise DataError(
            f"no latent unit is active (Var_x E[z|x] <= {threshold} for all "
            f"{codes.shape[1]}): the VAE's posterior has collapsed to its prior; train it longer"
        )
    return mask


# --------------------------------------------------------------------------------------------
# The labelled / unlabelled / validation split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SemiSupervisedSplit:
    """Training images split as in Pyro's example: ``sup_x``/``sup_y`` the labelled images
    (balanced across classes), ``unsup_x`` the rest of the training part (their labels are
    not kept, so training cannot see them), ``valid_x``/``valid_y`` the held-out validation
    images, and ``sup_index``/``unsup_index`` the positions of the labelled and unlabelled
    images in the original training tensor (to record or reproduce the split).

    ``sup_scale``/``unsup_scale``, when present, say that the training inputs are the means of
    a Gaussian per image with these standard deviations (M1's q(z1 | x) in the stacked M1+M2):
    :func:`fit_ssvae` then trains on fresh draws ``x + scale * eps`` for every batch, as
    Kingma et al. (2014, §3.2) train M2 on samples z1 ~ q(z1 | x); validation and test
    accuracy read the means. Scales that do not fit their inputs are refused on construction
    (:class:`DataError`)."""

    sup_x: torch.Tensor
    sup_y: torch.Tensor
    unsup_x: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    sup_index: torch.Tensor
    unsup_index: torch.Tensor
    sup_scale: torch.Tensor | None = None
    unsup_scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """Refuse scales that do not describe the inputs: given for one set only, of another
        shape, dtype or device than their inputs, or not positive and finite."""
        if (self.sup_scale is None) != (self.unsup_scale is None):
            raise DataError(
                "sup_scale and unsup_scale must both be given or both be None; got "
                f"{_describe(self.sup_scale)} and {_describe(self.unsup_scale)}"
            )
        for what, x, scale in (
            ("labelled", self.sup_x, self.sup_scale),
            ("unlabelled", self.unsup_x, self.unsup_scale),
        ):
            if scale is None:
                continue
            if scale.shape != x.shape or scale.dtype != x.dtype or scale.device != x.device:
                raise DataError(
                    f"the scale of the {what} inputs must match them ({x.dtype} tensor of shape "
                    f"{tuple(x.shape)} on {x.device}); got {_describe(scale)} on {scale.device}"
                )
            if not bool(torch.isfinite(scale).all() and (scale > 0).all()):
                raise DataError("scale must hold positive finite standard deviations")

    @property
    def num_train(self) -> int:
        """Labelled plus unlabelled images: the N of the objective."""
        return self.sup_x.shape[0] + self.unsup_x.shape[0]


def split_labelled(
    x: torch.Tensor,
    y: torch.Tensor,
    sup_num: int,
    *,
    validation_num: int = PYRO_EXAMPLE["validation_num"],
    num_classes: int = 10,
    seed: int = 0,
    scale: torch.Tensor | None = None,
) -> SemiSupervisedSplit:
    """Pyro's split: the last ``validation_num`` images are the validation set; from the others
    ``sup_num / num_classes`` images of each class, drawn with ``seed``, keep their labels and
    the remaining images are unlabelled. With ``scale`` (positive, the shape of ``x``), ``x``
    are Gaussian means with these standard deviations and training draws fresh inputs from
    them (:class:`SemiSupervisedSplit`).

    Raises :class:`DataError` when ``sup_num`` is not a positive multiple of ``num_classes``,
    when the data are too few (for the validation set, or for ``sup_num / num_classes`` images
    of some class), when images and labels do not match, or when ``scale`` does not fit ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise DataError(f"images must be a tensor (N, ...), got {_describe(x)}")
    n = x.shape[0]
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        raise DataError(f"labels must be an int64 tensor of class indices, got {_describe(y)}")
    _check_label_values(y, n, num_classes, "labels")
    if isinstance(sup_num, bool) or int(sup_num) != sup_num or sup_num <= 0:
        raise DataError(f"sup_num must be a positive integer, got {sup_num!r}")
    if sup_num % num_classes:
        raise DataError(
            f"sup_num = {sup_num} is not a multiple of the {num_classes} classes: the labelled "
            "images are balanced across classes (Pyro's example), so pick a multiple"
        )
    if not 0 <= validation_num < n:
        raise DataError(
            f"validation_num = {validation_num} must leave training images: the data hold {n}"
        )
    n_train = n - validation_num
    if sup_num > n_train:
        raise DataError(
            f"sup_num = {sup_num} is larger than the {n_train} training images "
            f"({n} minus {validation_num} for validation)"
        )
    if scale is not None:
        # one scale per input value: checked here, before it is split like the inputs
        if not isinstance(scale, torch.Tensor) or scale.shape != x.shape:
            raise DataError(
                f"scale must be a tensor of the inputs' shape {tuple(x.shape)}, got "
                f"{_describe(scale)}"
            )
        scale = scale.to(x.device, x.dtype)
    per_class = sup_num // num_classes
    g = torch.Generator().manual_seed(int(seed))
    train_y = y[:n_train].cpu()
    sup = []
    for c in range(num_classes):
        idx = (train_y == c).nonzero().flatten()
        if idx.numel() < per_class:
            raise DataError(
                f"class {c} has {idx.numel()} training images, fewer than the {per_class} "
                f"labelled ones per class that sup_num = {sup_num} asks for"
            )
        sup.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    sup_index = torch.cat(sup)
    is_sup = torch.zeros(n_train, dtype=torch.bool)
    is_sup[sup_index] = True
    unsup_index = (~is_sup).nonzero().flatten()
    dev = x.device
    return SemiSupervisedSplit(
        sup_x=x[sup_index.to(dev)],
        sup_y=y[sup_index.to(y.device)],
        unsup_x=x[unsup_index.to(dev)],
        valid_x=x[n_train:],
        valid_y=y[n_train:],
        sup_index=sup_index,
        unsup_index=unsup_index,
        sup_scale=None if scale is None else scale[sup_index.to(dev)],
        unsup_scale=None if scale is None else scale[unsup_index.to(dev)],
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


#: The step schedules of :class:`SSTrainConfig`.
SCHEDULES = ("joint", "pyro")


@dataclass
class SSTrainConfig:
    """How to train M2. Defaults are Pyro's example's (:data:`PYRO_EXAMPLE`)."""

    epochs: int = PYRO_EXAMPLE["epochs"]
    batch_size: int = PYRO_EXAMPLE["batch_size"]
    lr: float = PYRO_EXAMPLE["lr"]
    #: Adam's β1 (β2 = 0.999).
    beta1: float = PYRO_EXAMPLE["beta1"]
    #: Seeds the batch order and the noise of z ~ q (the weights come from ``SSVAE(seed=...)``).
    seed: int = 0
    #: How labelled and unlabelled images share the steps (both estimate the same J^α):
    #:
    #: ``"pyro"`` (default): Pyro's example, a labelled batch every ``int(N / sup_num)`` batches
    #: (:func:`batch_schedule`), one SVI step of the ELBO and one of the auxiliary loss per batch.
    #: ``"joint"``: every step takes one batch of unlabelled images *and* one batch of
    #: labelled images (cycled through in a new shuffled order each pass), and one Adam step on
    #: the sum of the three estimates (labelled ELBO, unlabelled ELBO, auxiliary loss), each
    #: scaled to its whole set. This is Kingma et al.'s own recipe (each minibatch holds
    #: labelled and unlabelled data). With few labels the two differ under Adam: with 100 labels
    #: Pyro's schedule gives the labels one step in 251, Adam normalises that rare large gradient
    #: to an ordinary step, the decoder stops using y (:func:`label_elbos` spread 3 nats) and the
    #: classifier drifts (validation accuracy 0.64 at epoch 10 falling to 0.53 by epoch 21, see
    #: the README); the joint schedule keeps the label channel. With many labels it overfits
    #: them sooner (3000 labels: test accuracy 0.921 after 34 epochs against 0.936 for "pyro").
    schedule: str = "pyro"
    #: ``"joint"`` schedule only: labelled images per step (None: ``min(batch_size, labelled)``).
    #: Kingma et al.'s 100-label run took one labelled image with every 499 unlabelled ones.
    sup_batch_size: int | None = None
    #: ``"pyro"`` schedule only. Pyro's example steps the auxiliary SVI on every batch. On an
    #: unlabelled batch its loss is zero, yet Adam still moves the parameters along its momentum
    #: (a zero-gradient step on the shared optimiser). True reproduces the published recipe;
    #: False steps it on labelled batches only.
    aux_every_batch: bool = True
    #: Wall-clock budget in seconds (None: none): no epoch is started that would, at the mean
    #: epoch time so far, end after it. Counts the epochs of earlier, resumed invocations.
    max_seconds: float | None = None
    eval_batch_size: int = 1000

    def validate(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size:
            raise ValueError(f"batch_size must be an integer, got {self.batch_size!r}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 must lie in [0, 1), got {self.beta1}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.sup_batch_size is not None:
            if self.schedule != "joint":
                raise ValueError("sup_batch_size applies to the 'joint' schedule only")
            if isinstance(self.sup_batch_size, bool) or int(self.sup_batch_size) != (
                self.sup_batch_size
            ):
                raise ValueError(f"sup_batch_size must be an integer, got {self.sup_batch_size!r}")
            if self.sup_batch_size <= 0:
                raise ValueError(f"sup_batch_size must be positive, got {self.sup_batch_size}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")


@dataclass
class SSHistory:
    """Per-epoch record. Losses are in nats per image of their set, averaged over the epoch's
    steps (parameters change during the epoch): ``sup_loss`` = -L(x, y) per labelled image,
    ``unsup_loss`` = -U(x) per unlabelled image, ``aux_loss`` = α' · -log q(y|x) per labelled
    image, ``objective`` = J^α per training image. Accuracies use q(y|x)'s most probable label;
    ``test_accuracy`` is NaN when no test set was given (it is logged, never used to choose)."""

    epoch: list[int] = field(default_factory=list)
    sup_loss: list[float] = field(default_factory=list)
    unsup_loss: list[float] = field(default_factory=list)
    aux_loss: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    valid_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSHistory:
        return cls(**{k: list(v) for k, v in d.items()})

    def best(self) -> int | None:
        """Index of the epoch with the best validation accuracy (the first of ties)."""
        if not self.valid_accuracy:
            return None
        return max(range(len(self.valid_accuracy)), key=lambda i: (self.valid_accuracy[i], -i))


def batch_schedule(sup_batches: int, unsup_batches: int, interval: int) -> list[bool]:
    """Which batches of an epoch are labelled (True), after Pyro's ``run_inference_for_epoch``:
    batch ``i`` is labelled when ``i % interval == 1`` while labelled batches remain. Unlike
    Pyro's loop this never runs out of unlabelled batches: once they are used up, the labelled
    ones that are left follow (and ``interval`` 1 means labelled first)."""
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    kinds, s, u = [], 0, 0
    for i in range(sup_batches + unsup_batches):
        sup = s < sup_batches and (u == unsup_batches or i % interval == 1 % interval)
        kinds.append(sup)
        s, u = s + sup, u + (not sup)
    return kinds


def _clear_store_entries() -> None:
    """Drop stale param-store entries of our module name: ``pyro.module`` would otherwise hand
    SVI an earlier model's tensors, which this model never computes with."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith(MODULE_NAME + "$$$")]:
        del store[name]


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


def _param_names(model: SSVAE) -> list[str]:
    return sorted(f"{MODULE_NAME}$$${n}" for n, _ in model.named_parameters())


def load_trained(checkpoint_path: str | Path, model: SSVAE) -> SSVAE:
    """Load the networks of a :func:`fit_ssvae` checkpoint into ``model`` (built with the same
    sizes) and return it. Raises :class:`CheckpointError` for another kind of checkpoint or one
    whose tensors do not fit."""
    _restore(checkpoint_path, model)
    return model


def _restore(
    checkpoint_path: str | Path, model: SSVAE, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a :func:`fit_ssvae` checkpoint, load its networks into ``model``, return it all."""
    ckpt = _read(checkpoint_path, map_location)
    _load_networks(ckpt, model)
    return ckpt


def _read(checkpoint_path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint_path, map_location=map_location)
    if ckpt.get("kind") != "ssvae":
        raise CheckpointError(f"{checkpoint_path} is not a checkpoint of fit_ssvae")
    return ckpt


def _load_networks(ckpt: dict[str, Any], model: SSVAE) -> None:
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint does not fit this model: {e}") from e


#: Training settings a resumed run may change: how long it runs and how it evaluates.
_RESUMABLE_CHANGES = frozenset({"epochs", "max_seconds", "eval_batch_size"})


def _split_summary(split: SemiSupervisedSplit) -> dict[str, Any]:
    """What identifies the data a :func:`fit_ssvae` run trains on, as its checkpoint records it:
    the sizes of the three sets, the inputs' shape and dtype, whether it trains on fresh draws
    (scales present), a digest of which images are labelled and their labels (another draw of
    the labels changes it), and the mean and standard deviation of the labelled inputs (other
    features, e.g. pixels against M1's codes, change them; recomputed features that differ in
    the last bits, on another device or torch version, do not)."""
    digest = hashlib.sha256()
    for t in (split.sup_index, split.sup_y):
        digest.update(t.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    x = split.sup_x.detach().double()
    return {
        "labelled": int(split.sup_x.shape[0]),
        "unlabelled": int(split.unsup_x.shape[0]),
        "validation": int(split.valid_x.shape[0]),
        "input_shape": list(split.sup_x.shape[1:]),
        "dtype": str(split.sup_x.dtype),
        "fresh_draws": split.sup_scale is not None,
        "labels_digest": digest.hexdigest(),
        "labelled_inputs_mean_std": [float(x.mean()), float(x.std())],
    }


def _same(key: str, before: Any, now: Any) -> bool:
    """Equal, or for the labelled inputs' statistics equal to 1e-4 relative (summary above)."""
    if key == "labelled_inputs_mean_std":
        return all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(before, now))
    return before == now


def _refuse_other_run(
    ckpt: dict[str, Any],
    model: SSVAE,
    split_record: dict[str, Any],
    config: SSTrainConfig,
    checkpoint_path: str | Path,
) -> None:
    """Resuming is continuing the same run: refuse a checkpoint written for another split (other
    sets, labels or inputs; means against fresh draws) or with other training settings than
    ``_RESUMABLE_CHANGES`` (α' included, which the networks' shapes do not show), instead of
    silently mixing two runs. A setting a checkpoint predates counts as its default then; a
    split or α' a checkpoint predates is not checked."""
    saved, now = ckpt.get("split"), split_record  # now: this run's _split_summary
    if saved is not None:
        diff = [k for k in sorted(saved.keys() & now.keys()) if not _same(k, saved[k], now[k])]
        if diff:
            details = "; ".join(f"{k}: {saved[k]!r} then, {now[k]!r} now" for k in diff)
            raise CheckpointError(
                f"{checkpoint_path} was trained on another split ({details}); resume it with "
                "the split it was trained on, or start a new run"
            )
    before = {**asdict(SSTrainConfig()), **ckpt.get("config", {}).get("train", {})}
    now_cfg = asdict(config)
    if "aux_loss_multiplier" in ckpt.get("config", {}).get("model", {}):
        before["aux_loss_multiplier"] = ckpt["config"]["model"]["aux_loss_multiplier"]
        now_cfg["aux_loss_multiplier"] = model.aux_loss_multiplier
    changed = [
        k for k in sorted(now_cfg) if k not in _RESUMABLE_CHANGES and before.get(k) != now_cfg[k]
    ]
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} then, {now_cfg[k]!r} now" for k in changed)
        raise CheckpointError(
            f"{checkpoint_path} was trained with other settings ({details}); only "
            f"{sorted(_RESUMABLE_CHANGES)} may change on resume"
        )


def _joint_step(
    model: SSVAE,
    elbos: tuple[TraceEnum_ELBO, Trace_ELBO],
    optim: Adam,
    unlabelled: tuple[torch.Tensor, int],
    labelled: tuple[torch.Tensor, torch.Tensor, int],
) -> tuple[float, float, float]:
    """One Adam step on -U (unlabelled batch) + -L (labelled batch) + α'·CE (labelled batch),
    each scaled to its whole set, so their sum estimates the whole J^α without bias. The
    gradients of the three Pyro losses accumulate before the one step, as in ``SVI.step``.
    Returns the three loss estimates."""
    elbo, aux_elbo = elbos
    (xu, n_unsup), (xl, yl, n_sup) = unlabelled, labelled
    with poutine.trace(param_only=True) as param_capture:
        unsup = elbo.loss_and_grads(model.model, model.guide, xu, None, n_unsup)
        sup = elbo.loss_and_grads(model.model, model.guide, xl, yl, n_sup)
        aux = aux_elbo.loss_and_grads(model.model_classify, model.guide_classify, xl, yl, n_sup)
    params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
    optim(params)
    zero_grads(params)
    return float(unsup), float(sup), float(aux)


def fit_ssvae(
    model: SSVAE,
    split: SemiSupervisedSplit,
    config: SSTrainConfig | None = None,
    *,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> SSHistory:
    """Train M2 on a :class:`SemiSupervisedSplit` the way Pyro's example does (module docstring).

    An epoch is one pass over the unlabelled images, in an order drawn from ``config.seed`` and
    the epoch. With ``config.schedule == "joint"`` each step adds a batch of labelled images
    (cycled through) and takes one Adam step on the three losses (:func:`_joint_step`); with
    ``"pyro"`` the labelled batches are interleaved (:func:`batch_schedule`, one every
    ``int(N / sup_num)``) and each batch takes one ``TraceEnum_ELBO(max_plate_nesting=1)`` SVI
    step and one auxiliary-loss SVI step on one Adam. After each epoch the validation
    accuracy (and the test accuracy, when ``test`` is given) is recorded and, with
    ``checkpoint_path``, the whole state is written atomically; ``resume`` continues such a run
    exactly. The same seeds (``SSVAE(seed=...)`` and ``config.seed``) give the same run. A split
    with scales trains on fresh draws of its inputs (:class:`SemiSupervisedSplit`).

    Raises :class:`DataError` for inputs the likelihood cannot score, of the wrong shape,
    labels out of range or fresh draws the likelihood cannot score,
    :class:`CheckpointError` for a resume from a checkpoint of another split or other settings
    (``_refuse_other_run``), and :class:`TrainingDivergedError` if a loss stops being finite.
    """
    config = config or SSTrainConfig()
    config.validate()
    for what, x in (("labelled images", split.sup_x), ("unlabelled images", split.unsup_x)):
        model.check_data(x, what)
    model.check_labels(split.sup_y, split.sup_x.shape[0], "labels of the labelled images")
    model.check_data(split.valid_x, "validation images")
    model.check_labels(split.valid_y, split.valid_x.shape[0], "validation labels")
    if test is not None:
        model.check_data(test[0], "test images")
        model.check_labels(test[1], test[0].shape[0], "test labels")
    if split.sup_scale is not None and model.likelihood.data_support is not constraints.real:
        raise DataError(
            f"the split asks for fresh draws x + scale * eps, which can leave the support of the "
            f"{type(model.likelihood).__name__} likelihood ({model.likelihood.data_support}); "
            "give the model a likelihood of real values (link='identity')"
        )
    device = split.sup_x.device
    model.to(device)

    def inputs(sup: bool, idx: torch.Tensor) -> torch.Tensor:
        """The batch's inputs: the stored ones, or a fresh draw around them (class docstring)."""
        x = (split.sup_x if sup else split.unsup_x)[idx]
        scale = split.sup_scale if sup else split.unsup_scale
        return x if scale is None else x + scale[idx] * torch.randn_like(x)

    n_sup, n_unsup = split.sup_x.shape[0], split.unsup_x.shape[0]
    n_total = n_sup + n_unsup
    bs = int(config.batch_size)
    joint = config.schedule == "joint"
    sup_batches, unsup_batches = math.ceil(n_sup / bs), math.ceil(n_unsup / bs)
    if joint:
        # every step: an unlabelled batch and a labelled batch, each scaled to its whole set
        kinds = [False] * unsup_batches
        if config.sup_batch_size is not None and config.sup_batch_size > n_sup:
            raise ValueError(
                f"sup_batch_size={config.sup_batch_size} is more than the {n_sup} labelled images"
            )
        bs_sup = min(int(config.sup_batch_size or bs), n_sup)
        weight = {True: 1.0, False: 1.0}
    else:
        kinds = batch_schedule(sup_batches, unsup_batches, max(1, n_total // n_sup))
        # a step of a kind, weighted n / n_kind, estimates the whole J^α (module docstring)
        weight = {True: len(kinds) / sup_batches, False: len(kinds) / unsup_batches}
    n_steps = len(kinds)
    # the number of estimates of each set's loss the epoch's sums hold
    estimates = {True: n_steps if joint else sup_batches, False: unsup_batches}

    optim = Adam({"lr": config.lr, "betas": (config.beta1, 0.999)})
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    svi = SVI(model.model, model.guide, optim, loss=elbo)
    aux_elbo = Trace_ELBO()
    svi_aux = SVI(model.model_classify, model.guide_classify, optim, loss=aux_elbo)

    history, start = SSHistory(), 0
    split_record = _split_summary(split)  # once: the checkpoints' record and the resume check
    _clear_store_entries()
    if resume:
        if checkpoint_path is None or not Path(checkpoint_path).exists():
            raise CheckpointError(
                f"resume requested but there is no checkpoint at {checkpoint_path}"
            )
        ckpt = _read(checkpoint_path, map_location=device)
        _refuse_other_run(ckpt, model, split_record, config, checkpoint_path)  # before any weight
        _load_networks(ckpt, model)
        optim.set_state(ckpt["optim_state"])
        history, start = SSHistory.from_dict(ckpt["history"]), int(ckpt["epoch"])
        torch.set_rng_state(ckpt["torch_rng_state"].cpu())
        if device.type == "cuda" and ckpt.get("cuda_rng_state") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng_state"].cpu(), device)
    else:
        pyro.set_rng_seed(config.seed)

    for epoch in range(start, config.epochs):
        spent = sum(history.seconds)
        if (
            config.max_seconds is not None
            and history.seconds
            and spent + spent / len(history.seconds) > config.max_seconds
        ):
            if progress:
                print(f"stopping before epoch {epoch + 1}: the time budget would be exceeded")
            break
        t0 = time.perf_counter()
        # the order is a function of (seed, epoch) alone: a resumed run sees the same batches
        g = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        order = {
            True: torch.randperm(n_sup, generator=g).to(device),
            False: torch.randperm(n_unsup, generator=g).to(device),
        }
        if joint:
            # the labelled images cycled through, a new shuffled order each pass
            passes = math.ceil(n_steps * bs_sup / n_sup)
            order[True] = torch.cat([torch.randperm(n_sup, generator=g) for _ in range(passes)]).to(
                device
            )
        pos = {True: 0, False: 0}
        sums = {"sup": 0.0, "unsup": 0.0, "aux": 0.0}
        for i, sup in enumerate(kinds):
            idx = order[sup][pos[sup] : pos[sup] + bs]
            pos[sup] += bs
            xs = inputs(sup, idx)
            ys = split.sup_y[idx] if sup else None
            n_set = n_sup if sup else n_unsup
            if joint:
                idx_sup = order[True][i * bs_sup : (i + 1) * bs_sup]
                loss, sup_part, aux = _joint_step(
                    model,
                    (elbo, aux_elbo),
                    optim,
                    (xs, n_unsup),
                    (inputs(True, idx_sup), split.sup_y[idx_sup], n_sup),
                )
            else:
                sup_part = 0.0
                with poutine.scale(scale=weight[sup]):
                    loss = svi.step(xs, ys, n_set)
                    aux = svi_aux.step(xs, ys, n_set) if sup or config.aux_every_batch else 0.0
            if not all(math.isfinite(v) for v in (loss, sup_part, aux)):
                raise TrainingDivergedError(
                    f"training diverged: the loss became {loss + sup_part + aux} at epoch "
                    f"{epoch + 1}, batch {i + 1}/{n_steps}; try a smaller learning rate",
                    epoch=epoch + 1,
                    step=i + 1,
                )
            # undo the weight: an estimate of the negative ELBO of the batch's whole set
            sums["sup" if sup else "unsup"] += loss / weight[sup]
            sums["sup"] += sup_part
            sums["aux"] += aux / weight[sup]
        sup_loss = sums["sup"] / estimates[True] / n_sup
        unsup_loss = sums["unsup"] / estimates[False] / n_unsup
        aux_loss = sums["aux"] / estimates[True] / n_sup
        objective = (n_sup * (sup_loss + aux_loss) + n_unsup * unsup_loss) / n_total
        model.eval()
        valid_acc = accuracy(model, split.valid_x, split.valid_y, config.eval_batch_size)
        test_acc = (
            float("nan")
            if test is None
            else accuracy(model, test[0], test[1], config.eval_batch_size)
        )
        model.train()
        seconds = time.perf_counter() - t0
        for key, value in (
            ("epoch", epoch + 1),
            ("sup_loss", sup_loss),
            ("unsup_loss", unsup_loss),
            ("aux_loss", aux_loss),
            ("objective", objective),
            ("valid_accuracy", valid_acc),
            ("test_accuracy", test_acc),
            ("seconds", seconds),
        ):
            getattr(history, key).append(value)
        if progress:
            print(
                f"epoch {epoch + 1:3d}/{config.epochs}  loss/image: labelled {sup_loss:8.2f}  "
                f"unlabelled {unsup_loss:8.2f}  aux {aux_loss:7.3f}  J {objective:8.2f}  "
                f"valid acc {valid_acc:.4f}"
                + ("" if test is None else f"  test acc {test_acc:.4f}")
                + f"  ({seconds:.1f}s)",
                flush=True,
            )
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                {
                    "kind": "ssvae",
                    "param_store": param_store_state(_param_names(model)),
                    "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optim_state": optim.get_state(),
                    "history": history.to_dict(),
                    "epoch": epoch + 1,
                    "config": {
                        "train": asdict(config),
                        "model": {"aux_loss_multiplier": model.aux_loss_multiplier},
                    },
                    "split": split_record,
                    "torch_rng_state": torch.get_rng_state(),
                    # on a GPU the draws of z (and of the inputs) come from CUDA's stream
                    "cuda_rng_state": (
                        torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None
                    ),
                },
            )
    return history
