"""Conditional VAE for quadrant completion: Pyro's CVAE tutorial as a model/guide pair.

The task (Sohn, Lee and Yan, NeurIPS 2015; Pyro's tutorial https://pyro.ai/examples/cvae.html,
code in ``pyro-ppl/pyro`` ``examples/cvae/``): split each image into four quadrants, show 1, 2
or 3 of them (``x``) and predict the others (``y``). Conventions copied from the tutorial:

* **Which quadrants are visible** (:data:`VISIBLE_QUADRANTS`): 1 → bottom-left; 2 → the left
  half; 3 → all but bottom-right. Rows ``[:H//2]`` are the top, columns ``[:W//2]`` the left.
* **Inputs and targets** (:func:`split_quadrants`): grey levels in [0, 1] (bytes / 255, not
  binarized). The input ``xs`` is the image with its *hidden* pixels set to :data:`MASKED`
  (−1); the target ``ys`` is the image with its *visible* pixels set to −1. Hidden pixels are
  found as ``xs == -1``.
* **Baseline** (:class:`BaselineNet`): a deterministic MLP ``x → ŷ`` (500-500, ReLU, sigmoid
  output) trained by the BCE of the hidden pixels only (:func:`masked_bce`), summed over pixels,
  averaged over the batch, Adam 1e-3.
* **CVAE** (:class:`CVAE`): the prior network p(z | x) reads the visible pixels with the hidden
  ones *filled in by the frozen baseline's prediction* (it is not initialised from the baseline's
  weights: it is a fresh network fed the baseline's guess); the recognition network q(z | x, y)
  reads the whole image (visible pixels from ``xs``, hidden ones from ``ys``); both are 500-500
  ReLU MLPs giving a diagonal Normal over z (dimension 200, scale = exp of a linear head). The
  generation network p(y | z) is a 500-500 ReLU MLP of z alone; the likelihood is Bernoulli on
  the grey levels of the hidden pixels only (the cross-entropy, not a normalised density of grey
  levels). Trained with SVI, ``Trace_ELBO``, Adam 1e-3, batch 128.
* **Early stopping**: after each epoch the validation loss (baseline: masked BCE; CVAE: the
  one-particle ``Trace_ELBO`` loss) is computed; training stops after ``patience`` epochs without
  improvement (tutorial: 3; at most 50 epochs in its text, 101 in ``main.py``) and the best
  epoch's weights are restored. The tutorial validates on the MNIST *test* set.
* **The reported metric** ("negative conditional log-likelihood", util.py ``generate_table``),
  over the test set in batches of 32, as the mean over batches of the per-image batch means:
  baseline: the masked BCE per image, which *is* its −log p(y | x); CVAE:
  ``Trace_ELBO(num_particles=10)`` with the recognition network as guide, i.e. the **negative
  ELBO**, ``E_q[−log p(y | x, z)] + KL(q(z | x, y) ‖ p(z | x))``, an *upper bound* on
  −log p(y | x) estimated with 10 draws. :func:`tutorial_nll` computes exactly that;
  :func:`importance_nll` adds the importance-sampled estimate of −log p(y | x) itself with q as
  the proposal (lower than the bound; it converges to the true value as K grows).

Differences from the tutorial's code, none of which changes the mathematics: the networks output
logits and the BCE is computed from them (the tutorial applies a sigmoid and clamps the log at
−100); batches are index tensors into a tensor kept in memory; the data plate is scaled to the
training-set size (the tutorial's unscaled plate gives the same gradient direction, up to Adam's
scale invariance); the baseline's parameters are never registered with Pyro (the tutorial's
``pyro.module`` registers them but they receive no gradient).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn import functional as F

from .errors import DataError
from .importance import iwae_bound, log_weights
from .likelihoods import Bernoulli, mask_pixels
from .model import reset_parameters
from .nets import MLPDecoder, MLPEncoder
from .program import data_plate

__all__ = [
    "CVAE",
    "MASKED",
    "QUADRANTS",
    "VISIBLE_QUADRANTS",
    "BaselineNet",
    "ConditionalTrainConfig",
    "TrainingLog",
    "complete",
    "hidden_mask",
    "importance_nll",
    "masked_bce",
    "split_quadrants",
    "train_baseline",
    "train_cvae",
    "tutorial_nll",
    "visible_mask",
]

#: The value that marks a missing pixel in inputs (hidden) and targets (visible), as in the
#: tutorial. Real pixels are in [0, 1], so it cannot be confused with one.
MASKED = -1.0
#: Quadrant names; the top is rows ``[:H//2]``, the left columns ``[:W//2]``.
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
#: The tutorial's visible quadrants for 1, 2 and 3 quadrants of input (``MaskImages``).
VISIBLE_QUADRANTS: dict[int, tuple[str, ...]] = {
    1: ("bottom-left",),
    2: ("top-left", "bottom-left"),
    3: ("top-left", "top-right", "bottom-left"),
}


# --------------------------------------------------------------------------------------------
# Quadrant masks
# --------------------------------------------------------------------------------------------


def _check_num_visible(num_visible: int) -> None:
    if isinstance(num_visible, bool) or num_visible not in VISIBLE_QUADRANTS:
        raise ValueError(f"num_visible must be 1, 2 or 3 (quadrants shown), got {num_visible!r}")


def visible_mask(
    num_visible: int, height: int, width: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(height, width)`` bool tensor, True on the pixels of the visible quadrants."""
    _check_num_visible(num_visible)
    if height < 2 or width < 2:
        raise ValueError(f"quadrants need images of at least 2×2 pixels, got {height}×{width}")
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    rows = {"top": slice(None, height // 2), "bottom": slice(height // 2, None)}
    cols = {"left": slice(None, width // 2), "right": slice(width // 2, None)}
    for quadrant in VISIBLE_QUADRANTS[num_visible]:
        r, c = quadrant.split("-")
        mask[rows[r], cols[c]] = True
    return mask


def _check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise DataError(f"{what} must be a floating-point tensor, got {type(images).__name__}")
    if images.dim() < 3:
        raise DataError(
            f"{what} must be a batch of images (N, H, W) or (N, C, H, W), got shape "
            f"{tuple(images.shape)}"
        )
    if images.numel() and (
        not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1
    ):
        raise DataError(
            f"{what} must hold grey levels in [0, 1] (the Bernoulli cross-entropy of the tutorial, "
            f"and −1 marks missing pixels); got values in [{float(images.min()):.3g}, "
            f"{float(images.max()):.3g}]"
        )


def split_quadrants(images: torch.Tensor, num_visible: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xs, ys)`` of a batch of images ``(N, …, H, W)`` with grey levels in [0, 1].

    ``xs`` is the input: the images with the hidden quadrants set to :data:`MASKED`. ``ys`` is
    the target: the images with the visible quadrants set to :data:`MASKED` (the tutorial's
    ``input``/``output``).
    """
    _check_images(images)
    visible = visible_mask(num_visible, *images.shape[-2:], device=images.device)
    masked = images.new_tensor(MASKED)
    return torch.where(visible, images, masked), torch.where(visible, masked, images)


def hidden_mask(xs: torch.Tensor) -> torch.Tensor:
    """True on the pixels the input does not show (``xs == MASKED``): what is to be predicted."""
    return xs == MASKED


def complete(xs: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """The visible pixels of ``xs`` with the hidden ones taken from ``prediction`` (which may
    have extra leading dims, e.g. samples). This is also how the tutorial's encoders see an
    input and a (predicted or true) target as one image."""
    return torch.where(hidden_mask(xs), prediction, xs)


def masked_bce(logits: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per-image BCE of the hidden pixels (``ys != MASKED``), summed over pixels: shape ``(N,)``.

    For the deterministic baseline this is exactly −log p(y_hidden | x_visible) under the
    Bernoulli likelihood on grey levels (the tutorial's ``MaskedBCELoss`` per image).
    """
    target = ys != MASKED
    loss = F.binary_cross_entropy_with_logits(logits, ys.clamp(min=0), reduction="none")
    return (loss * target).flatten(1).sum(1)


# --------------------------------------------------------------------------------------------
# Networks and the model/guide pair
# --------------------------------------------------------------------------------------------


class BaselineNet(nn.Module):
    """The deterministic baseline ``x → logits of ŷ`` (the tutorial's ``BaselineNet``).

    A fully connected net from the input image (hidden pixels −1) to one logit per pixel,
    ``hidden`` ReLU layers in between (500, 500 in the tutorial). Weights are initialised from
    ``seed`` alone (:func:`~ppl_vae.reset_parameters`).
    """

    def __init__(
        self, image_shape: Sequence[int], hidden: Sequence[int] = (500, 500), seed: int = 0
    ) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) < 2 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {image_shape}")
        self.net = MLPDecoder(math.prod(self.image_shape), self.image_shape, tuple(hidden))
        reset_parameters(self, seed)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, *image_shape)``."""
        return self.net(xs.flatten(start_dim=xs.dim() - len(self.image_shape)))

    @torch.no_grad()
    def predict(self, xs: torch.Tensor) -> torch.Tensor:
        """Pixel probabilities ŷ (the tutorial's output and its prediction shown in figures)."""
        return torch.sigmoid(self(xs))


class CVAE(nn.Module):
    """The conditional VAE of the tutorial as a Pyro ``model``/``guide`` pair.

    ``model(xs, ys=None, num_data=None)``: z ~ p(z | x) = Normal(prior_net(x ⊕ ŷ)), where
    ``x ⊕ ŷ`` is the input with its hidden pixels filled in by the frozen baseline; then the
    hidden pixels ``y ~ Bernoulli(generation_net(z))`` (observed when ``ys`` is given; without
    ``ys`` the pixel probabilities are recorded as the deterministic site ``"y"``, as the
    tutorial does for prediction). ``guide(xs, ys=None, num_data=None)``: q(z | x, y) =
    Normal(recognition_net(x ⊕ y)) when ``ys`` is given, else the prior network (so that
    ``Predictive(model, guide)`` draws completions from p(z | x)).

    ``num_data`` is the size of the data set the mini-batch comes from: the data plate then
    scales the batch's log density by ``num_data / B`` (an unbiased ELBO of the whole set).
    The baseline is held frozen: its prediction is computed without gradient and its parameters
    are never registered with Pyro. Weights of the three networks are initialised from ``seed``.
    """

    def __init__(
        self,
        baseline: BaselineNet,
        z_dim: int = 200,
        hidden: Sequence[int] = (500, 500),
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(baseline, BaselineNet):
            raise TypeError(f"baseline must be a BaselineNet, got {type(baseline).__name__}")
        if z_dim < 1:
            raise ValueError(f"z_dim must be >= 1, got {z_dim}")
        self.image_shape = baseline.image_shape
        self.z_dim = int(z_dim)
        self.baseline = baseline
        self.prior_net = MLPEncoder(self.image_shape, 2 * z_dim, tuple(hidden))
        self.recognition_net = MLPEncoder(self.image_shape, 2 * z_dim, tuple(hidden))
        self.generation_net = MLPDecoder(z_dim, self.image_shape, tuple(hidden))
        self.likelihood = Bernoulli()  # BCE of grey levels: validate_args=False
        self.likelihood.event_dim = len(self.image_shape)
        reset_parameters(self.trainable, seed)

    @property
    def trainable(self) -> nn.ModuleList:
        """The three networks SVI trains (not the baseline), in a fixed order."""
        return nn.ModuleList([self.prior_net, self.recognition_net, self.generation_net])

    def _check(self, xs: torch.Tensor, ys: torch.Tensor | None) -> torch.Tensor:
        shape = tuple(xs.shape[1:])
        if xs.dim() != len(self.image_shape) + 1 or shape != self.image_shape:
            raise DataError(
                f"xs must be a batch of shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(xs.shape)}"
            )
        if ys is not None and ys.shape != xs.shape:
            raise DataError(f"ys must have the shape of xs {tuple(xs.shape)}, got {ys.shape}")
        hidden = hidden_mask(xs)
        if not hidden.flatten(1).any(1).all():
            raise DataError(
                "every input must hide some pixels (set them to -1): nothing to predict"
            )
        return hidden

    @staticmethod
    def _normal(net: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = net(image).chunk(2, dim=-1)
        return loc, log_scale.exp()  # the tutorial's exp: no floor, as there

    def _prior(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            y_hat = torch.sigmoid(self.baseline(xs))
        return self._normal(self.prior_net, complete(xs, y_hat))

    def model(
        self, xs: torch.Tensor, ys: torch.Tensor | None = None, num_data: int | None = None
    ) -> torch.Tensor:
        """p(z | x) p(y_hidden | z); returns the pixel probabilities ``(…, N, *image_shape)``."""
        hidden = self._check(xs, ys)
        pyro.module("prior_net", self.prior_net)
        pyro.module("generation_net", self.generation_net)
        with data_plate(xs, num_data):
            loc, scale = self._prior(xs)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            logits = self.generation_net(z)
            probs = torch.sigmoid(logits)
            if ys is None:
                pyro.deterministic("y", probs.detach(), event_dim=len(self.image_shape))
            else:
                obs = torch.where(hidden, ys, torch.zeros_like(ys))  # visible: masked out
                pyro.sample("y", mask_pixels(self.likelihood(logits), hidden), obs=obs)
            return probs

    def guide(
        self, xs: torch.Tensor, ys: torch.Tensor | None = None, num_data: int | None = None
    ) -> None:
        """q(z | x, y) from the recognition network; the prior network when ``ys`` is None."""
        self._check(xs, ys)
        with data_plate(xs, num_data):
            if ys is None:
                pyro.module("prior_net", self.prior_net)
                loc, scale = self._prior(xs)
            else:
                pyro.module("recognition_net", self.recognition_net)
                loc, scale = self._normal(self.recognition_net, complete(xs, ys))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def sample_completions(self, xs: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``(num_samples, N, *image_shape)``: E[y | z] for z ~ p(z | x), visible pixels from
        ``xs`` (the tutorial's figure rows). Uses the torch random stream."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self._check(xs, None)
        loc, scale = self._prior(xs)
        z = dist.Normal(loc, scale).sample((num_samples,))
        return complete(xs, torch.sigmoid(self.generation_net(z)))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class ConditionalTrainConfig:
    """How the baseline and the CVAE are trained; the defaults are the tutorial's."""

    #: Upper bound on the epochs (the tutorial's text: 50; its ``main.py`` default: 101).
    epochs: int = 50
    #: Stop after this many epochs without a better validation loss (tutorial: 3); 0: never.
    patience: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    #: Batch order and (CVAE) the noise of SVI; the initial weights are the networks' own seeds.
    seed: int = 0
    #: Wall-clock budget of one training run in seconds (checked after each epoch); None: none.
    #: With a budget the number of epochs depends on the machine, so runs are not reproducible.
    max_seconds: float | None = None
    #: Images per evaluation batch of the validation loss.
    eval_batch_size: int = 1000
    #: One line per epoch on stdout.
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 or None, got {self.max_seconds}")


@dataclass
class TrainingLog:
    """Per-epoch record of one training run (losses in nats per image)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    #: The epoch whose weights were kept (the best validation loss; the last without validation).
    best_epoch: int = 0
    #: ``"patience"``, ``"epochs"`` (the cap) or ``"time"`` (the wall-clock budget).
    stopped_by: str = "epochs"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_training_data(images: torch.Tensor, val_images: torch.Tensor | None) -> None:
    _check_images(images, "training images")
    if images.shape[0] == 0:
        raise DataError("no training images")
    if val_images is not None:
        _check_images(val_images, "validation images")
        if val_images.shape[1:] != images.shape[1:] or val_images.shape[0] == 0:
            raise DataError(
                f"validation images {tuple(val_images.shape)} must be a non-empty batch of the "
                f"training images' shape {tuple(images.shape[1:])}"
            )


def _loop(
    step: Any,
    validate: Any,
    module: nn.Module,
    images: torch.Tensor,
    num_visible: int,
    config: ConditionalTrainConfig,
    val_images: torch.Tensor | None,
    what: str,
) -> TrainingLog:
    """The epoch loop both models share: seeded batch order, per-epoch validation, early
    stopping with the best weights restored, a wall-clock budget, one progress line per epoch."""
    gen = torch.Generator().manual_seed(config.seed)
    n, log = images.shape[0], TrainingLog()
    best, best_state, waited, t_start = math.inf, None, 0, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        module.train()
        total = 0.0
        order = torch.randperm(n, generator=gen).to(images.device)
        for idx in order.split(config.batch_size):
            xs, ys = split_quadrants(images[idx], num_visible)
            total += step(xs, ys, n) * idx.shape[0]
        module.eval()
        val = math.nan
        if val_images is not None:
            with torch.no_grad():
                val = validate(val_images)
        log.epoch.append(epoch)
        log.train_loss.append(total / n)
        log.val_loss.append(val)
        log.seconds.append(time.perf_counter() - t0)
        if not math.isfinite(total):
            raise FloatingPointError(f"{what}: the training loss became {total} in epoch {epoch}")
        improved = val_images is None or val < best
        if improved:
            best, waited, log.best_epoch = val, 0, epoch
            best_state = copy.deepcopy(module.state_dict()) if val_images is not None else None
        else:
            waited += 1
        if config.progress:
            print(
                f"{what} epoch {epoch:3d}/{config.epochs}  train {total / n:8.3f}  "
                f"val {val:8.3f}{' *' if improved and val_images is not None else '  '}  "
                f"({log.seconds[-1]:.1f}s)",
                flush=True,
            )
        if config.patience and waited >= config.patience:
            log.stopped_by = "patience"
            break
        if config.max_seconds is not None and time.perf_counter() - t_start >= config.max_seconds:
            log.stopped_by = "time" if epoch < config.epochs else "epochs"
            break
    if best_state is not None:
        module.load_state_dict(best_state)  # in place: Pyro's param store sees the same tensors
    module.eval()
    return log


def train_baseline(
    net: BaselineNet,
    images: torch.Tensor,
    num_visible: int,
    config: ConditionalTrainConfig | None = None,
    val_images: torch.Tensor | None = None,
) -> TrainingLog:
    """Train the baseline by the masked BCE (sum over hidden pixels, mean over the batch) with
    Adam, as the tutorial does; early stopping on ``val_images`` (none: all epochs)."""
    config = config or ConditionalTrainConfig()
    config.validate()
    _check_num_visible(num_visible)
    _check_training_data(images, val_images)
    net.to(images.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)

    def step(xs: torch.Tensor, ys: torch.Tensor, n: int) -> float:
        loss = masked_bce(net(xs), ys).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def validate(val: torch.Tensor) -> float:
        return float(_baseline_nll_per_image(net, val, num_visible, config.eval_batch_size).mean())

    return _loop(step, validate, net, images, num_visible, config, val_images, "baseline")


def _forget(module: nn.Module, names: Sequence[str]) -> None:
    """Drop ``names``' entries from Pyro's param store. ``pyro.module`` keeps a stale entry of
    the same name (an earlier CVAE's) and SVI would then step that tensor, not this module's."""
    store = pyro.get_param_store()
    for key in list(store.keys()):
        if any(key.startswith(f"{name}$$$") for name in names):
            del store[key]


def train_cvae(
    cvae: CVAE,
    images: torch.Tensor,
    num_visible: int,
    config: ConditionalTrainConfig | None = None,
    val_images: torch.Tensor | None = None,
) -> TrainingLog:
    """Train the CVAE with ``SVI(model, guide, Adam, Trace_ELBO())`` on mini-batches scaled to
    the training set; early stopping on the one-particle negative ELBO of ``val_images`` (as
    the tutorial's ``svi.evaluate_loss``). Seeds Pyro's (global) random streams with
    ``config.seed``. The baseline inside ``cvae`` should be trained first."""
    config = config or ConditionalTrainConfig()
    config.validate()
    _check_num_visible(num_visible)
    _check_training_data(images, val_images)
    cvae.to(images.device)
    _forget(cvae, ("prior_net", "recognition_net", "generation_net"))
    pyro.set_rng_seed(config.seed)
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": config.lr}), loss=Trace_ELBO())

    def step(xs: torch.Tensor, ys: torch.Tensor, n: int) -> float:
        return svi.step(xs, ys, num_data=n) / n  # the scaled loss, per image of the data set

    def validate(val: torch.Tensor) -> float:
        total = 0.0
        for batch in val.split(config.eval_batch_size):
            xs, ys = split_quadrants(batch, num_visible)
            total += svi.evaluate_loss(xs, ys)
        return total / val.shape[0]

    return _loop(step, validate, cvae, images, num_visible, config, val_images, "CVAE")


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _batch_means(per_image: torch.Tensor, batch_size: int) -> float:
    """The tutorial's average: the mean over batches of each batch's mean (a short last batch
    weighs as much as a full one)."""
    return float(torch.stack([b.mean() for b in per_image.split(batch_size)]).mean())


@torch.no_grad()
def _baseline_nll_per_image(
    net: BaselineNet, images: torch.Tensor, num_visible: int, batch_size: int
) -> torch.Tensor:
    out = []
    for batch in images.split(batch_size):
        xs, ys = split_quadrants(batch, num_visible)
        out.append(masked_bce(net(xs), ys))
    return torch.cat(out)


@torch.no_grad()
def tutorial_nll(
    baseline: BaselineNet,
    cvae: CVAE | None,
    images: torch.Tensor,
    num_visible: int,
    *,
    num_particles: int = 10,
    batch_size: int = 32,
) -> dict[str, float]:
    """The tutorial's "negative conditional log-likelihood" per image (``util.generate_table``).

    Over ``images`` in batches of ``batch_size`` (32), averaged as the tutorial does (mean of
    batch means): ``"baseline"``, the masked BCE, which is the baseline's exact −log p(y | x);
    ``"cvae"``, the ``Trace_ELBO(num_particles)`` loss with the recognition network as guide,
    i.e. the Monte Carlo **negative ELBO** (an upper bound on −log p(y | x), not the NLL
    itself; see :func:`importance_nll`). Also ``"baseline_per_image"``: the plain mean over
    images. Draws come from Pyro's random stream (seed it for a repeatable number).
    """
    _check_num_visible(num_visible)
    _check_images(images)
    if images.shape[0] == 0 or num_particles < 1 or batch_size < 1:
        raise ValueError("need images, num_particles >= 1 and batch_size >= 1")
    per_image = _baseline_nll_per_image(baseline.eval(), images, num_visible, batch_size)
    out = {
        "baseline": _batch_means(per_image, batch_size),
        "baseline_per_image": float(per_image.mean()),
    }
    if cvae is not None:
        cvae.eval()
        # vectorised particles: the same estimator as the tutorial's sequential ones, faster
        elbo = Trace_ELBO(
            num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
        )
        means = []
        for batch in images.split(batch_size):
            xs, ys = split_quadrants(batch, num_visible)
            means.append(elbo.loss(cvae.model, cvae.guide, xs, ys) / batch.shape[0])
        out["cvae"] = float(torch.tensor(means, dtype=torch.float64).mean())
    return out


@torch.no_grad()
def importance_nll(
    cvae: CVAE,
    images: torch.Tensor,
    num_visible: int,
    *,
    num_samples: int = 100,
    batch_size: int = 100,
    chunk: int = 100,
) -> torch.Tensor:
    """Importance-sampled −log p(y_hidden | x_visible) per image, shape ``(N,)``.

    −log (1/K Σ_k p(z_k | x) p(y | x, z_k) / q(z_k | x, y)) with z_k ~ q(z | x, y), the
    recognition network as proposal, K = ``num_samples`` (drawn ``chunk`` at a time to bound
    memory). The log-weights are read off Pyro traces of the model and guide
    (:func:`ppl_vae.importance.log_weights`). For any K it is an upper bound on −log p(y | x) in
    expectation that is no larger than the negative ELBO, and it converges to −log p(y | x) as K
    grows (Burda et al., 2016). Draws come from Pyro's random stream.
    """
    _check_num_visible(num_visible)
    _check_images(images)
    if num_samples < 1 or batch_size < 1 or chunk < 1:
        raise ValueError("num_samples, batch_size and chunk must be >= 1")
    cvae.eval()
    out = []
    for batch in images.split(batch_size):
        xs, ys = split_quadrants(batch, num_visible)
        acc = torch.full((batch.shape[0],), -math.inf, dtype=batch.dtype, device=batch.device)
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            log_w, _ = log_weights(cvae.model, cvae.guide, (xs, ys), {}, k, nesting=1)
            acc = torch.logaddexp(acc, iwae_bound(log_w) + math.log(k))
            done += k
        out.append(-(acc - math.log(num_samples)))
    return torch.cat(out)
