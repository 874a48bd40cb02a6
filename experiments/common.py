"""Experiment plumbing: arguments and budgets, a trained-model cache, the ``Results`` record.

Every numbered script in ``experiments/`` has the same shape::

    def main(argv=None):
        args = parse_args(__doc__, number=7, argv=argv)    # --tiny/--full, --out, --cache ...
        b = budget(args, VAE_BUDGETS)                      # data and epochs of the mode
        data = load_mnist(args, b)
        model, info = mnist_model(args, data, b, "vae-z2", vae_config(2), **VAE_TRAIN)
        res = Results(args, "vae_samples", "VAE samples at latent sizes 2, 5, 10, 20")
        ...                                                # numbers and figures: ppl_vae calls
        res.figure("samples.png", caption="...", verdict="...", agrees=True)
        res.table("Test ELBO per latent size", ["latent", "ELBO"], rows)
        res.save()                                         # <out>/<mode>/<name>/metrics.json

``experiments/report.py`` turns every ``metrics.json`` under ``<out>`` into ``REPORT.md``. Trained
models are cached (keyed by everything that determines them) under ``--cache``, so experiments
that share a model (the size-32 conv AE of experiments 1, 2 and 3, the VAEs of 7 and 8) train it
once per mode.

What a model scores (ELBO, log p(x), MSE, PSNR), corruptions, latent densities, PCA and image
figures come from :mod:`ppl_vae`; this module only holds what the experiments share as
experiments. Three helpers below stand in for library functions that do not exist yet
(:func:`elbo_terms`, :class:`Clipped`, :func:`save_panels`); each says where it belongs.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import pickle
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

import ppl_vae
from ppl_vae import (
    VAE,
    History,
    ImageData,
    ModelConfig,
    PointMassGuide,
    TrainConfig,
    build_model,
    fit,
    likelihoods,
    load_dataset,
    nets,
    priors,
    resolve_device,
)
from ppl_vae.corruptions import make_corruption
from ppl_vae.plots import image_grid

#: Figures are written at this resolution: legible in a browser, small in the repository.
DPI = 100


# --------------------------------------------------------------------------------------------
# Arguments and budgets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How much data and training one mode gets. ``None`` means the whole split."""

    n_train: int | None
    n_test: int | None
    epochs: int
    batch_size: int = 128


def parse_args(
    doc: str,
    number: int,
    argv: Sequence[str] | None = None,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options every experiment script shares, plus the script's own (``options(parser)``).

    ``doc`` is the script's docstring (its first line is the description). The mode is quick
    by default (a few minutes on 2 CPU cores), ``--full`` the long run (whole training set,
    more epochs, CUDA when present) and ``--tiny`` the smoke-test budget of the test suite
    (seconds, numbers meaningless). ``args.number`` is the experiment's number, ``args.mode``
    its mode and ``args.argv`` the command line recorded in ``metrics.json``.
    """
    p = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        epilog="\n".join(doc.strip().splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="long run: more data and epochs")
    mode.add_argument("--tiny", action="store_true", help="smoke-test budget (seconds)")
    p.add_argument("--out", default="results", help="results folder (default: results)")
    p.add_argument(
        "--cache",
        default=None,
        help="trained-model cache (default: runs/experiment_cache next to the results folder)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the mode's epochs")
    p.add_argument("--n-train", type=int, default=None, help="override the mode's training size")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: these small nets gain little from more, and "
        "on a shared machine extra threads mostly spin)",
    )
    if options is not None:
        options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.number = number
    args.mode = "full" if args.full else "tiny" if args.tiny else "quick"
    args.device = str(resolve_device(args.device))
    if args.cache is None:
        args.cache = str(Path(args.out).resolve().parent / "runs" / "experiment_cache")
    args.argv = list(sys.argv if argv is None else ["<script>", *argv])
    return args


def budget(args: argparse.Namespace, budgets: dict[str, Budget]) -> Budget:
    """``budgets[args.mode]`` with any ``--epochs`` / ``--n-train`` override applied."""
    b = budgets[args.mode]
    if args.epochs is not None:
        b = replace(b, epochs=args.epochs)
    if args.n_train is not None:
        b = replace(b, n_train=args.n_train)
    return b


@functools.lru_cache(maxsize=2)
def _mnist(device: str) -> ImageData:
    return load_dataset("mnist", verbose=False).to(device)


def load_mnist(args: argparse.Namespace, b: Budget) -> ImageData:
    """MNIST cut to the budget (first images of each split), on the chosen device."""
    torch.manual_seed(args.seed)
    return _mnist(args.device).subset(b.n_train, b.n_test)


def train_config(args: argparse.Namespace, b: Budget, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` for this budget (``overrides`` e.g. ``objective="meanfield"``)."""
    # objective "trace": the plain Trace_ELBO the committed results were produced with (the
    # library's default "auto" compiles it: the same objective, other float rounding)
    cfg = TrainConfig(
        epochs=b.epochs,
        batch_size=b.batch_size,
        seed=args.seed,
        device=args.device,
        objective="trace",
    )
    return replace(cfg, **overrides)


def first_of_class(labels: torch.Tensor, classes: Sequence[int] = range(10)) -> list[int]:
    """Index of the first image of each class in ``classes`` that occurs in ``labels``."""
    return [int((labels == c).nonzero()[0]) for c in classes if (labels == c).any()]


# --------------------------------------------------------------------------------------------
# Model cache and the models the experiments share
# --------------------------------------------------------------------------------------------


def _fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def trained_model(
    args: argparse.Namespace,
    name: str,
    spec: dict[str, Any],
    build: Callable[[], VAE],
    train_x: torch.Tensor,
    config: TrainConfig,
    *,
    corruption: Callable[[torch.Tensor], torch.Tensor] | None = None,
    init_seed: int | None = None,
) -> tuple[VAE, dict[str, Any]]:
    """Train ``build()`` on ``train_x`` with ``config``, or load it from the cache.

    ``spec`` must describe everything about the model and its corruption that ``build`` and
    ``corruption`` do not show in their repr (the cache key is ``name``, ``spec``, the train
    config, ``init_seed`` and the data's shape and checksum). With ``init_seed`` torch's RNG is
    seeded right before ``build()``, so the initial weights do not depend on what ran before
    (without it they do: see the README of the experiments). Returns the model in eval mode
    and ``{"train_seconds", "cached", "train_loss"}``.
    """
    key = {
        "name": name,
        "spec": spec,
        "train": asdict(config),
        "data": [list(train_x.shape), round(float(train_x.double().sum()), 3)],
        "library": ppl_vae.__version__,  # a model trained by another release is retrained
    }
    if init_seed is not None:
        key["init_seed"] = init_seed

    def fresh() -> VAE:
        if init_seed is not None:
            torch.manual_seed(init_seed)
        return build()

    path = Path(args.cache) / f"{name}-{_fingerprint(key)}.pt"
    model = fresh()
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state"])
        except (RuntimeError, KeyError, pickle.UnpicklingError):
            model = fresh()  # the library's modules changed since: train afresh
        else:
            model.to(args.device).eval()
            return model, {**blob["info"], "cached": True}
    t0 = time.perf_counter()
    history: History = fit(model, train_x, config, corruption=corruption, progress=False)
    info = {
        "train_seconds": round(time.perf_counter() - t0, 1),
        "train_loss": history.train_loss[-1] if history.train_loss else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state": state, "info": info, "key": key}, tmp)
    tmp.replace(path)
    print(f"  trained {name} in {info['train_seconds']}s", flush=True)
    model.eval()
    return model, {**info, "cached": False}


def mnist_model(
    args: argparse.Namespace,
    data: ImageData,
    b: Budget,
    name: str,
    config: ModelConfig,
    *,
    corruption: Callable[[torch.Tensor], torch.Tensor] | None = None,
    corruption_spec: str | None = None,
    init_seed: int | None = None,
    **train_overrides: Any,
) -> tuple[VAE, dict[str, Any]]:
    """:func:`trained_model` for a registry-built model (:func:`ppl_vae.build_model`), its
    initial weights a function of ``init_seed`` (default: ``--seed``) alone, so a shared model is
    the same whichever experiment trains it first."""
    spec = {"model": asdict(config), "corruption": corruption_spec}
    init_seed = args.seed if init_seed is None else init_seed
    return trained_model(
        args,
        name,
        spec,
        lambda: build_model(config, data.image_shape, seed=init_seed),
        data.train_x,
        train_config(args, b, **train_overrides),
        corruption=corruption,
        init_seed=init_seed,
    )


def vae_config(latent_dim: int, **kw: Any) -> ModelConfig:
    """The MNIST VAE shared by experiments 2, 3, 6, 7 and 8 (MLP 512-512, Bernoulli, N(0, I))."""
    return ModelConfig(latent_dim=latent_dim, **kw)


#: Budgets of the MNIST VAEs shared by experiments 2, 3, 6, 7 and 8 (the cache reuses them).
VAE_BUDGETS = {
    "quick": Budget(n_train=20000, n_test=5000, epochs=5),
    "full": Budget(n_train=None, n_test=None, epochs=10),
    "tiny": Budget(n_train=512, n_test=256, epochs=1),
}
#: The VAEs are trained with the analytic-KL ELBO (lower variance than the Monte Carlo KL).
VAE_TRAIN = {"objective": "meanfield"}
#: Budgets of the conv AEs shared by experiments 1, 2 and 3.
AE_BUDGETS = {
    "quick": Budget(n_train=5000, n_test=2000, epochs=3, batch_size=64),
    "full": Budget(n_train=None, n_test=None, epochs=10),
    "tiny": Budget(n_train=256, n_test=128, epochs=1, batch_size=64),
}
#: Budgets of the MNIST (denoising) AEs of experiments 5 and 6.
DAE_BUDGETS = {
    "quick": Budget(n_train=12000, n_test=2000, epochs=5),
    "full": Budget(n_train=None, n_test=None, epochs=10),
    "tiny": Budget(n_train=512, n_test=128, epochs=1),
}
#: Corruptions of experiment 5 (:func:`ppl_vae.corruptions.make_corruption` specs).
CORRUPTIONS = {
    "50% pixel dropout": "dropout:0.5",
    "90% pixel dropout": "dropout:0.9",
    "blur σ = 4": "blur:4",
    "16×16 block mask": "block:16",
}


def dae_config(latent_dim: int = 32) -> ModelConfig:
    """The MSE-trained MLP (denoising) AE: point-mass guide, flat prior, Gaussian c = 0.1."""
    return ModelConfig(
        latent_dim=latent_dim,
        guide="delta",
        prior="flat",
        likelihood="gaussian",
        likelihood_kwargs={"variance": 0.1},
    )


def dae(
    args: argparse.Namespace, data: ImageData, b: Budget, spec: str | None
) -> tuple[VAE, dict[str, Any]]:
    """The DAE trained against corruption ``spec`` (``None``: the plain AE), cached."""
    corruption = None if spec is None else make_corruption(spec, seed=args.seed)
    name = "ae-mlp" if spec is None else f"dae-{spec.replace(':', '')}"
    return mnist_model(
        args, data, b, name, dae_config(), corruption=corruption, corruption_spec=spec
    )


#: Convolutional AE of experiments 1-3: narrower than the library's default conv nets (16
#: channels, 256 hidden units) because convolutions are slow on a 2-core CPU; a larger learning
#: rate than the default 1e-3 because the quick budget allows only a few hundred steps.
CONV_AE = {"channels": 16, "hidden": 256, "likelihood": "gaussian", "variance": 0.1, "lr": 3e-3}


def conv_ae(
    args: argparse.Namespace, data: ImageData, b: Budget, latent_dim: int
) -> tuple[VAE, dict[str, Any]]:
    """The MSE-trained convolutional AE (point-mass guide, flat prior, Gaussian likelihood with
    fixed variance c = 0.1 and sigmoid mean), trained or loaded from the cache."""
    shape = data.image_shape

    def build() -> VAE:
        ch, hid = CONV_AE["channels"], CONV_AE["hidden"]
        return VAE(
            nets.ConvEncoder(shape, latent_dim, channels=ch, hidden=hid),
            nets.ConvDecoder(latent_dim, shape, channels=ch, hidden=hid),
            priors.Flat(latent_dim),
            likelihoods.Gaussian(variance=CONV_AE["variance"]),
            shape,
            PointMassGuide(),
        )

    spec = {"latent_dim": latent_dim, **CONV_AE}
    return trained_model(
        args,
        f"conv-ae-z{latent_dim}",
        spec,
        build,
        data.train_x,
        train_config(args, b, lr=CONV_AE["lr"]),
    )


class DigitClassifier(nn.Module):
    """A small MLP classifier of MNIST digits, used only to *score* generated images.

    ``confidence`` (mean max-softmax probability) and ``inception_score`` (exp E KL(p(y|x)‖p(y)))
    are crude sample-quality numbers: blurry or mixed digits get low confidence.
    """

    def __init__(self, num_pixels: int = 784) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(num_pixels, 256), nn.ReLU(), nn.Linear(256, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> dict[str, float]:
        p = F.softmax(self(x.clamp(0, 1)), dim=-1)  # (N, 10)
        marginal = p.mean(0, keepdim=True)
        kl = (p * (p.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(-1)
        return {
            "confidence": float(p.max(-1).values.mean()),
            "inception_score": float(kl.mean().exp()),
        }


def digit_classifier(args: argparse.Namespace, data: ImageData, epochs: int = 2) -> DigitClassifier:
    """Train (or load from the cache) :class:`DigitClassifier` on ``data``'s training set."""
    key = {"n": list(data.train_x.shape), "epochs": epochs, "seed": args.seed}
    path = Path(args.cache) / f"classifier-{_fingerprint(key)}.pt"
    clf = DigitClassifier(math.prod(data.image_shape)).to(args.device)
    if path.exists():
        clf.load_state_dict(torch.load(path, map_location=args.device, weights_only=True))
        return clf.eval()
    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    n = data.train_x.shape[0]
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(128):
            loss = F.cross_entropy(clf(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(clf.state_dict(), path)
    return clf.eval()


# --------------------------------------------------------------------------------------------
# Stand-ins for library functions that do not exist yet (move them into ppl_vae)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def elbo_terms(model: VAE, x: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)), each term per image (nats), one-sample MC.

    The KL is estimated as E_q[log q(z|x) − log p(z)], so it works for every prior (the mixture
    prior has no closed form). Observed sites make the first term, latent sites the second.
    Belongs in :mod:`ppl_vae.evaluate` (next to ``elbo_per_image``, which reads the same traces).
    """
    rec = kl = 0.0
    for xb in x.split(batch_size):
        guide_tr = poutine.trace(model.guide).get_trace(xb)
        model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(xb)
        guide_tr.compute_log_prob()
        model_tr.compute_log_prob()
        rec += float(_sites_log_prob(model_tr, observed=True))
        kl += float(
            _sites_log_prob(guide_tr, observed=False) - _sites_log_prob(model_tr, observed=False)
        )
    n = x.shape[0]
    return {"elbo": (rec - kl) / n, "reconstruction_loglik": rec / n, "kl": kl / n}


def _sites_log_prob(trace: poutine.Trace, observed: bool) -> torch.Tensor | float:
    """Sum of the log densities of a trace's observed (or latent) sample sites."""
    sites = trace.nodes.values()
    return sum(
        s["log_prob_sum"] for s in sites if s["type"] == "sample" and s["is_observed"] == observed
    )


class Clipped:
    """A model whose reconstructions are clipped to [0, 1], the images' range.

    PCA's affine reconstructions leave that range; clipping only brings them closer to the data,
    so PCA is compared with the AEs (sigmoid means) at its best. Works with
    :func:`ppl_vae.reconstruction_error` and :func:`ppl_vae.corruptions.reconstruction_psnr`.
    The CLI's ``compare`` has the same adapter; belongs in :mod:`ppl_vae.pca` (an option of PCA).
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def reconstruct(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.reconstruct(x, x_in).clamp(0, 1)


def save_panels(
    panels: Sequence[tuple[torch.Tensor, int, str]],
    path: Path,
    title: str,
    ncols: int | None = None,
    panel_size: float = 3.0,
) -> Path:
    """Side-by-side image grids, each ``(images, nrow, caption)`` (Kingma & Welling's Fig. 5).

    :func:`ppl_vae.plots.save_grid` with several panels; belongs in :mod:`ppl_vae.plots`.
    """
    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel_size * ncols, (panel_size + 0.3) * nrows + 0.4), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, (images, nrow, caption) in zip(axes.flat, panels):
        ax.imshow(image_grid(images, nrow=nrow), cmap="gray", interpolation="nearest")
        ax.set_title(caption, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Results:
    """What one experiment run produced: figures with captions and verdicts, tables, numbers.

    The experiment's number and mode come from ``args`` (:func:`parse_args`). ``save`` writes
    ``metrics.json`` into :attr:`dir`; ``report.py`` reads nothing else.
    """

    args: argparse.Namespace
    name: str
    title: str
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[dict[str, Any]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.dir = Path(self.args.out) / self.args.mode / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()

    def path(self, filename: str) -> Path:
        """Where to write a figure file of this experiment."""
        return self.dir / filename

    def savefig(self, fig: plt.Figure, filename: str) -> Path:
        """Write a matplotlib figure into :attr:`dir` at the report's resolution and close it."""
        fig.tight_layout()
        fig.savefig(self.path(filename), dpi=DPI)
        plt.close(fig)
        return self.path(filename)

    def figure(self, filename: str, caption: str, verdict: str, agrees: bool | None) -> None:
        """Register a figure already written to :meth:`path` (``agrees``: with the lecture)."""
        self.figures.append(
            {"file": filename, "caption": caption, "verdict": verdict, "agrees": agrees}
        )

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table for the report; floats are rounded when rendered."""
        self.tables.append(
            {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}
        )

    def save(self) -> Path:
        """Write ``metrics.json`` and return its path."""
        script = Path(self.args.argv[0]).name
        flags = " ".join(shlex.quote(a) for a in self.args.argv[1:])
        blob = {
            "number": self.args.number,
            "name": self.name,
            "title": self.title,
            "mode": self.args.mode,
            "command": f"python experiments/{script} {flags}".strip(),
            "device": self.args.device,
            "seed": self.args.seed,
            "threads": torch.get_num_threads(),
            "runtime_seconds": round(time.perf_counter() - self._t0, 1),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "settings": self.settings,
            "figures": self.figures,
            "tables": self.tables,
            "metrics": self.metrics,
            "notes": self.notes,
        }
        path = self.dir / "metrics.json"
        path.write_text(json.dumps(blob, indent=2, default=_json_default) + "\n")
        print(f"wrote {path} ({blob['runtime_seconds']}s)", flush=True)
        return path


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def budget_dict(b: Budget) -> dict[str, Any]:
    """A budget as settings for the report."""
    return asdict(b)
