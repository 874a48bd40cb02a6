"""Experiment 8: the learned 2-D manifold of a VAE (Kingma & Welling 2014, Figure 4).

The 2-D VAE of experiment 7 (shared through the model cache). Left: a 20 × 20 grid of codes
z = Φ⁻¹(u) for u on an even grid in (0, 1)², decoded to E[x | z] — since p(z) = N(0, I), equal
steps in u are equal steps in prior probability mass. Right: the posterior means of the test
digits, coloured by class.

    python experiments/vae_manifold.py          # quick
    python experiments/vae_manifold.py --full
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from common import (
    VAE_BUDGETS,
    VAE_TRAIN,
    Results,
    budget,
    budget_dict,
    load_mnist,
    mnist_model,
    parse_args,
    vae_config,
)

from ppl_vae.latent import encode_dataset
from ppl_vae.plots import image_grid

GRID = 20


def class_separation(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Between-class over total variance of the codes (1: classes are points, 0: all mixed)."""
    total = ((codes - codes.mean(0)) ** 2).sum()
    between = sum(
        (labels == c).sum() * ((codes[labels == c].mean(0) - codes.mean(0)) ** 2).sum()
        for c in labels.unique()
    )
    return float(between / total)


def main(argv: list[str] | None = None) -> None:
    """Decode the Φ⁻¹ grid, encode the test set, write the two-panel figure."""
    args = parse_args(__doc__, number=8, argv=argv)
    b = budget(args, VAE_BUDGETS)
    data = load_mnist(args, b)
    res = Results(args, "vae_manifold", "The learned 2-D manifold")
    res.settings = {
        "budget": budget_dict(b),
        "model": "the 2-D VAE of experiment 7 (MLP 512-512, Bernoulli, N(0, I) prior)",
        "grid": f"{GRID}×{GRID} codes Φ⁻¹(u), u evenly spaced in [0.025, 0.975]²",
    }
    model, info = mnist_model(args, data, b, "vae-z2", vae_config(2), **VAE_TRAIN)
    u = torch.linspace(0.025, 0.975, GRID, device=args.device)
    z1 = torch.distributions.Normal(0.0, 1.0).icdf(u)
    # Rows go top to bottom, so the second coordinate decreases down the image.
    zz = torch.stack(torch.meshgrid(z1, z1.flip(0), indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        images = model.decode(zz)
    codes = encode_dataset(model, data.test_x).cpu()
    labels = data.test_y.cpu()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 6.2))
    ax1.imshow(image_grid(images, nrow=GRID), cmap="gray", interpolation="nearest")
    ax1.set_xticks([])
    ax1.set_yticks([])
    ax1.set_xlabel("z₁ = Φ⁻¹(u₁), u₁ from 0.025 to 0.975 →")
    ax1.set_ylabel("← z₂ = Φ⁻¹(u₂), u₂ from 0.025 (bottom) to 0.975 (top)")
    ax1.set_title("(a) decoded grid through the inverse Gaussian CDF")
    sc = ax2.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6)
    ax2.set_xlabel("z₁ (posterior mean)")
    ax2.set_ylabel("z₂ (posterior mean)")
    ax2.set_title(f"(b) test codes coloured by digit ({len(labels)} images)")
    cbar = fig.colorbar(sc, ax=ax2, ticks=range(10), fraction=0.046)
    cbar.set_label("digit")
    ax2.grid(alpha=0.3)
    res.savefig(fig, "manifold.png")

    sep = class_separation(codes, labels)
    radius = float(codes.norm(dim=1).median())
    res.metrics = {"class_separation": sep, "median_code_radius": radius, **info}
    res.figure(
        "manifold.png",
        "(a) The 2-D VAE's decoder evaluated on a grid through the inverse Gaussian CDF; "
        "(b) the posterior means of the test digits, coloured by class.",
        (
            "Agrees: as in Kingma & Welling's Figure 4, the decoded grid morphs smoothly "
            "between digit classes, and the test codes form class clusters that fill the "
            f"N(0, I) disc (between-class share of code variance {sep:.2f}, median "
            f"radius {radius:.2f})."
            if sep > 0.5
            else f"Disagrees in part: the classes overlap strongly in the code space "
            f"(between-class share of code variance {sep:.2f}); train longer."
        ),
        sep > 0.5,
    )
    res.table(
        "2-D code statistics on the test set",
        ["between-class share of code variance", "median ‖z‖"],
        [[sep, radius]],
    )
    res.save()


if __name__ == "__main__":
    main()
