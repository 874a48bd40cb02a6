"""Experiment 6: the multimodal posterior — one MSE answer vs several posterior completions.

A centred 16×16 block hides the middle of a test digit. The DAE of experiment 5 (trained with
MSE against random 16×16 blocks) returns one answer, which approximates the *mean* of
p(x_hidden | x_visible):
where several completions are plausible it averages them into a blur. A probabilistic model can
instead *sample* that posterior. Here the model is the 10-D MNIST VAE of experiment 7, conditioned
on the visible pixels only, by sampling-importance-resampling (SIR):

1. draw K codes z_k from a proposal r(z) = ½ p(z) + ½ N(μ(x̃), σ(x̃)² + 0.5²) — the prior mixed
   with a widened encoder posterior of the masked image (the encoder never saw masked digits, so it
   is only a hint; the prior half keeps every mode reachable);
2. weight each by w_k = p(z_k) p(x_visible | z_k) / r(z_k), where p(x_visible | z) is the
   decoder's Bernoulli likelihood of the visible pixels only (the hidden ones are left out);
3. resample S codes with probabilities ∝ w_k and decode them; visible pixels are pasted back.

The weighted average of the decoded images estimates the posterior mean, the quantity the DAE's
MSE training targets. The effective sample size (Σw)²/Σw² says how many particles carry the weight.

    python experiments/inpainting_posterior.py          # quick
    python experiments/inpainting_posterior.py --full
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from common import (
    DAE_BUDGETS,
    DPI,
    VAE_BUDGETS,
    VAE_TRAIN,
    Results,
    budget,
    budget_dict,
    dae,
    digit_classifier,
    first_of_class,
    load_mnist,
    mnist_model,
    parse_args,
    vae_config,
)

from ppl_vae import VAE
from ppl_vae.plots import save_image_rows

SPEC = "block:16"
BLOCK = 16
LATENT = 10
SHOW_CLASSES = (2, 3, 4, 5, 7, 9)
N_SAMPLES = 6
WIDEN = 0.5


@torch.no_grad()
def sir_completions(
    vae: VAE,
    x_tilde: torch.Tensor,
    visible: torch.Tensor,
    num_particles: int,
    num_samples: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor | float]:
    """Sample p(x_hidden | x_visible) under ``vae`` by importance resampling (see module doc).

    ``x_tilde`` and ``visible`` are one image ``(C, H, W)``; returns the ``samples`` (pasted),
    the weighted ``mean`` image, the effective sample size ``ess`` and the resampled indices.
    """
    prior = vae.prior()
    q = vae.posterior(x_tilde[None])
    loc, scale = q.base_dist.loc[0], q.base_dist.scale[0]
    q_wide = dist.Normal(loc, (scale**2 + WIDEN**2).sqrt()).to_event(1)
    half = num_particles // 2
    z = torch.cat(
        [
            torch.randn(half, vae.latent_dim, generator=generator).to(loc),
            loc
            + (scale**2 + WIDEN**2).sqrt()
            * torch.randn(num_particles - half, vae.latent_dim, generator=generator).to(loc),
        ]
    )  # (K, latent_dim)
    log_p = prior.log_prob(z)
    log_r = torch.logaddexp(log_p, q_wide.log_prob(z)) - math.log(2)
    out = vae.decoder(z)  # (K, C, H, W) decoder parameters
    pixel_ll = vae.likelihood(out).base_dist.log_prob(x_tilde.expand_as(out))
    log_lik = (pixel_ll * visible).flatten(1).sum(1)  # hidden pixels do not count
    log_w = log_p + log_lik - log_r
    w = torch.softmax(log_w, 0)
    ess = float(1.0 / (w**2).sum())
    idx = torch.multinomial(w.cpu(), num_samples, replacement=True, generator=generator)
    images = vae.likelihood.mean(out)
    mean = (w[:, None, None, None] * images).sum(0)
    paste = visible * x_tilde
    return {
        "samples": paste + ~visible * images[idx.to(images.device)],
        "mean": paste + ~visible * mean,
        "ess": ess,
        "indices": idx,
    }


def centre_block_visible(x: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean mask of the pixels outside a centred ``size`` × ``size`` block (x's shape)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    visible = torch.ones_like(x, dtype=torch.bool)
    visible[..., top : top + size, left : left + size] = False
    return visible


def grey_fraction(x: torch.Tensor, hidden: torch.Tensor) -> float:
    """Share of hidden pixels with a grey value in (0.2, 0.8): a measure of blur in the block."""
    vals = x[hidden.expand_as(x)]
    return float(((vals > 0.2) & (vals < 0.8)).float().mean())


def main(argv: list[str] | None = None) -> None:
    """Mask test digits, complete them with the DAE and by SIR under the VAE, write the figure."""
    args = parse_args(__doc__, number=6, argv=argv)
    b_dae, b_vae = budget(args, DAE_BUDGETS), budget(args, VAE_BUDGETS)
    data_dae, data = load_mnist(args, b_dae), load_mnist(args, b_vae)
    num_particles = {"tiny": 500, "quick": 20000, "full": 50000}[args.mode]
    res = Results(args, "inpainting_posterior", "The multimodal posterior under a block mask")
    res.settings = {
        "dae_budget": budget_dict(b_dae),
        "vae_budget": budget_dict(b_vae),
        "corruption": SPEC,
        "dae": "the block-mask DAE of experiment 5 (MSE)",
        "vae": f"MLP VAE, latent {LATENT}, Bernoulli likelihood (experiment 7's model)",
        "sampler": f"SIR with {num_particles} particles, proposal ½ p(z) + ½ N(μ(x̃), σ(x̃)² + "
        f"{WIDEN}²), weights use the visible pixels only; {N_SAMPLES} resampled completions",
    }
    model_dae, _ = dae(args, data_dae, b_dae, SPEC)
    vae, _ = mnist_model(args, data, b_vae, f"vae-z{LATENT}", vae_config(LATENT), **VAE_TRAIN)
    clf = digit_classifier(args, data)

    idx = first_of_class(data.test_y, SHOW_CLASSES)
    shown = [int(data.test_y[i]) for i in idx]  # the classes present in a small test split
    x = data.test_x[idx]
    visible = centre_block_visible(x, BLOCK)
    x_tilde = x * visible
    with torch.no_grad():
        x_dae = model_dae.reconstruct(x_tilde).clamp(0, 1)
    x_dae = visible * x_tilde + ~visible * x_dae
    g = torch.Generator().manual_seed(args.seed)
    rows, labels, table = [], [], []
    for i in range(x.shape[0]):
        out = sir_completions(vae, x_tilde[i], visible[i], num_particles, N_SAMPLES, g)
        samples = out["samples"]
        preds = clf(samples).argmax(-1).tolist()
        distinct = len(set(out["indices"].tolist()))
        hidden = ~visible[i]
        row = torch.cat(
            [x[i : i + 1], x_tilde[i : i + 1], x_dae[i : i + 1], out["mean"][None], samples]
        )
        rows.append(row)
        labels.append(f"digit {shown[i]}")
        table.append(
            [
                shown[i],
                out["ess"],
                distinct,
                " ".join(map(str, preds)),
                grey_fraction(x_dae[i], hidden),
                grey_fraction(samples, hidden),
            ]
        )
    save_image_rows(
        rows,
        labels,
        res.path("inpainting_posterior.png"),
        "Centre 16×16 block hidden: the DAE's one MSE answer\nvs completions sampled from the "
        "VAE's posterior given the visible pixels",
        col_labels=["original", "masked\nx̃", "DAE\n(MSE)", "posterior\nmean"]
        + [f"sample\n{j + 1}" for j in range(N_SAMPLES)],
        label_width=1.0,
        cell=0.8,
        dpi=DPI,
    )
    grey_dae = sum(r[4] for r in table) / len(table)
    grey_samples = sum(r[5] for r in table) / len(table)
    mean_distinct = sum(r[2] for r in table) / len(table)
    multi_class = sum(len(set(r[3].split())) > 1 for r in table)
    res.metrics = {
        "grey_fraction_dae": grey_dae,
        "grey_fraction_samples": grey_samples,
        "mean_distinct_completions": mean_distinct,
        "digits_with_completions_of_several_classes": multi_class,
        "ess": [r[1] for r in table],
    }
    agrees = mean_distinct >= 2 and grey_samples < grey_dae
    res.figure(
        "inpainting_posterior.png",
        "Per row: a test digit, its block-masked version, the block-mask DAE's output, the "
        "VAE's posterior-mean completion, and "
        f"{N_SAMPLES} completions resampled from the VAE's posterior given the visible pixels "
        "(visible pixels pasted back everywhere).",
        (
            "Agrees: the DAE gives one greyish compromise inside the block — like the posterior "
            "mean it approximates — while the posterior samples are sharper "
            f"(grey share in the block {grey_samples:.2f} vs {grey_dae:.2f} for the DAE) and "
            f"differ from one another ({mean_distinct:.1f} distinct of {N_SAMPLES} on average; "
            f"for {multi_class} of {len(table)} digits the classifier reads several different "
            "digits among them), i.e. the posterior has several modes."
            if agrees
            else "Disagrees in part: the importance sampler collapsed to few distinct completions "
            f"({mean_distinct:.1f} of {N_SAMPLES} distinct on average) or the samples are not "
            f"sharper than the DAE's answer (grey share {grey_samples:.2f} vs {grey_dae:.2f})."
        ),
        agrees,
    )
    res.table(
        "Per digit: effective sample size of the importance weights, distinct resampled "
        "completions, classifier's reading of each completion, grey share in the block",
        ["digit", "ESS", "distinct", "classes read", "grey share DAE", "grey share samples"],
        table,
    )
    res.notes.append(
        "SIR is exact as K → ∞ but with a finite K its samples are only as diverse as the "
        "effective sample size allows; a low ESS means repeated completions."
    )
    res.save()


if __name__ == "__main__":
    main()
