"""Figures: image grids (torchvision) and curves (matplotlib), written as PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import torch
from torchvision.utils import make_grid

if TYPE_CHECKING:
    from .model import VAE
    from .train import History

__all__ = [
    "image_grid",
    "save_elbo_curves",
    "save_grid",
    "save_image_rows",
    "save_run_figures",
    "save_table_samples",
]


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """``(N, C, H, W)`` images in [0, 1] → one ``(H', W', C)`` NumPy array for ``imshow``."""
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1)
    return grid.permute(1, 2, 0).numpy()


def save_image_rows(
    rows: Sequence[torch.Tensor],
    labels: Sequence[str],
    path: str | Path,
    title: str = "",
    col_labels: Sequence[str] | None = None,
    *,
    cell: float = 0.62,
    label_width: float = 1.6,
    dpi: int = 110,
) -> Path:
    """One labelled row per tensor of ``(n, C, H, W)`` images (originals, reconstructions, ...).

    ``cell`` is the width in inches of one image (widen it for long column labels) and
    ``label_width`` the room left of the rows for their labels.
    """
    path = Path(path)
    n = max(r.shape[0] for r in rows)
    top = 0.9 if col_labels and any("\n" in c for c in col_labels) else 0.6
    fig, axes = plt.subplots(
        len(rows),
        1,
        figsize=(n * cell + label_width, len(rows) * cell * 1.13 + top),
        squeeze=False,
    )
    for ax, row, label in zip(axes[:, 0], rows, labels):
        ax.imshow(image_grid(row, nrow=n), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if col_labels:
        w = rows[0].shape[-1] + 2
        axes[0, 0].set_xticks([2 + w * i + w / 2 - 1 for i in range(len(col_labels))])
        axes[0, 0].set_xticklabels(col_labels, fontsize=8)
        axes[0, 0].xaxis.tick_top()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_grid(images: torch.Tensor, nrow: int, path: str | Path, title: str) -> Path:
    """A square-ish grid of images with a title."""
    path = Path(path)
    ncol = nrow
    nrows = -(-images.shape[0] // ncol)
    fig, ax = plt.subplots(figsize=(ncol * 0.5 + 0.4, nrows * 0.5 + 0.6))
    ax.imshow(image_grid(images, nrow=ncol), cmap="gray", interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_elbo_curves(history: History, path: str | Path, title: str = "") -> Path:
    """Train loss (negated, so both curves are 'higher is better') and test ELBO per epoch."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(history.epoch, [-v for v in history.train_loss], "o-", label="train: −loss (β-ELBO)")
    ax.plot(history.epoch, history.test_elbo, "s-", label="test ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per image")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "ELBO during training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def save_run_figures(
    model: VAE,
    test_x: torch.Tensor,
    history: History,
    out: str | Path,
    *,
    train_x: torch.Tensor | None = None,
    corruption: str | None = None,
    seed: int = 0,
    n: int = 16,
) -> list[Path]:
    """The main job's figures: reconstructions, samples and ELBO curves.

    Samples come from the prior when it can be sampled and, for the AE family (point-mass guide,
    codes not distributed like any prior), from a 10-component Gaussian mixture fitted to the
    codes of ``train_x``. With a ``corruption`` spec,
    a third figure shows corrupted test images and their reconstructions. Draws are seeded by
    ``seed`` without touching the caller's random streams.
    """
    from .corruptions import corrupt, make_corruption
    from .latent import GMMDensity, encode_dataset, sample_images
    from .metrics import eval_mode

    out = Path(out)
    if test_x.dim() == 2:  # a table: rows, not images
        return [save_table_samples(model, test_x, out / "samples.png", seed=seed)] + (
            [save_elbo_curves(history, out / "elbo_curves.png")] if history.epoch else []
        )
    x = test_x[:n]
    paths = []
    with eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        paths.append(
            save_image_rows(
                [x, model.reconstruct(x)],
                ["test images", "reconstructions"],
                out / "reconstructions.png",
                "Test images and their reconstructions",
            )
        )
        if model.can_sample:
            title = "Decoded prior samples E[x | z], z ~ p(z)"
            paths.append(save_grid(model.sample(64), 8, out / "samples.png", title))
        if not model.guide_family.has_density and train_x is not None:
            codes = encode_dataset(model, train_x[:10_000])
            density = GMMDensity(min(10, codes.shape[0]), seed=seed).fit(codes)
            gen = torch.Generator(device=codes.device).manual_seed(seed)
            title = "Decoded samples of a 10-component GMM fitted to the training codes"
            images = sample_images(model, density, 64, generator=gen)
            paths.append(save_grid(images, 8, out / "latent_samples.png", title))
        if corruption is not None:
            x_t = corrupt(x, make_corruption(corruption), seed=seed)
            paths.append(
                save_image_rows(
                    [x, x_t.clamp(0, 1), model.reconstruct(x, x_t)],
                    ["test images", "corrupted", "reconstructed"],
                    out / "denoising.png",
                    f"Reconstructions of corrupted test images ({corruption})",
                )
            )
    if history.epoch:
        paths.append(save_elbo_curves(history, out / "elbo_curves.png"))
    return paths


@torch.no_grad()
def save_table_samples(
    model: VAE, test_x: torch.Tensor, path: str | Path, *, seed: int = 0, n: int = 1000
) -> Path:
    """Test rows next to draws x ~ p(x | z), z ~ p(z), on the first two columns: whether the
    model puts its mass where the data are."""
    from .metrics import eval_mode

    path = Path(path)
    with eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        drawn = model.sample(n, mean=False) if model.can_sample else None
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    x = test_x[:n].cpu()
    ax.scatter(x[:, 0], x[:, 1 % x.shape[1]], s=6, alpha=0.6, label="test data")
    if drawn is not None:
        d = drawn.cpu()
        ax.scatter(d[:, 0], d[:, 1 % d.shape[1]], s=6, alpha=0.6, label="model draws")
    ax.set_xlabel("column 0")
    ax.set_ylabel("column 1")
    ax.legend()
    ax.set_title("Test rows and draws from the model", fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
