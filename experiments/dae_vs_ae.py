"""Experiment 11: denoising AE vs plain AE with pixel dropout, PSNR on corrupted test images.

Both models are the same point-mass model/guide pair (MLP 512-512, latent 32, flat prior,
Bernoulli likelihood, same initial weights, seed and budget, trained by :func:`ppl_vae.fit`); the
only difference is that the DAE's guide encodes a corrupted copy x̃ of each training batch
(``--corruption``, 50% pixel dropout by default) while its model scores the clean x. Both are then
asked to reconstruct the clean test images from corrupted ones (the same x̃ for both, from a seed
of its own); PSNR is measured against the clean images. Also scored: clean reconstructions, and
extra corruptions the DAE was not trained on (``--extra-eval``, 90% dropout by default).

    python experiments/dae_vs_ae.py             # quick: 20k images, 5 epochs (~1 min)
    python experiments/dae_vs_ae.py --full      # all 60k images, 20 epochs (~10 min on 1 thread)
"""

from __future__ import annotations

import argparse
import re

import torch
from common import (
    DPI,
    Budget,
    Results,
    budget,
    budget_dict,
    load_mnist,
    mnist_model,
    parse_args,
)

from ppl_vae import ModelConfig, elbo, reconstruction_error
from ppl_vae.corruptions import corrupt, make_corruption, psnr, reconstruction_psnr
from ppl_vae.plots import save_image_rows

BUDGETS = {
    "quick": Budget(n_train=20000, n_test=None, epochs=5),
    "full": Budget(n_train=None, n_test=None, epochs=20),
    "tiny": Budget(n_train=256, n_test=128, epochs=1),
}
N_SHOW = 12
CLEAN_COLUMNS = ("clean_mse", "clean_psnr", "elbo", "train_seconds")


def options(p: argparse.ArgumentParser) -> None:
    """This experiment's own options."""
    p.add_argument("--corruption", default="dropout:0.5", help="the DAE's training corruption")
    p.add_argument(
        "--extra-eval",
        action="append",
        default=None,
        help="further test corruptions to score (repeatable; default: dropout:0.9)",
    )
    p.add_argument("--net", default="mlp", choices=["mlp", "conv"])
    p.add_argument("--hidden", default="512,512", help="MLP hidden sizes")
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--likelihood", default="bernoulli")
    p.add_argument("--lr", type=float, default=1e-3)


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", spec)


def main(argv: list[str] | None = None) -> None:
    """Train the AE and the DAE, score both on clean and corrupted test images."""
    args = parse_args(__doc__, number=11, argv=argv, options=options)
    extra = ["dropout:0.9"] if args.extra_eval is None else args.extra_eval
    specs = [args.corruption, *extra]
    for spec in specs:
        make_corruption(spec)  # fail fast on a typo
    b = budget(args, BUDGETS)
    data = load_mnist(args, b)
    x = data.test_x
    config = ModelConfig(
        latent_dim=args.latent_dim,
        prior="flat",
        likelihood=args.likelihood,
        net=args.net,
        guide="delta",
        hidden=tuple(int(h) for h in args.hidden.split(",") if h),
    )
    res = Results(args, "dae_vs_ae", "Denoising AE vs plain AE on dropped-out pixels")
    res.settings = {
        "budget": budget_dict(b),
        "model": f"{args.net.upper()} {args.hidden} AE, latent {args.latent_dim}, point-mass "
        f"guide, flat prior, {args.likelihood} likelihood; SVI Trace_ELBO, Adam lr {args.lr}",
        "dae_corruption": f"{args.corruption}, a fresh draw for every batch",
        "test": f"each corruption drawn once (seed {args.seed} + 1000 + i, not the training "
        "corruption's stream), the same x̃ for both models",
        "initial_weights": f"identical for both models (torch seed {args.seed})",
    }
    models = {}
    for name, spec in (("AE", None), ("DAE", args.corruption)):
        models[name], info = mnist_model(
            args,
            data,
            b,
            f"dae-vs-ae-{name.lower()}",
            config,
            corruption=make_corruption(spec, seed=args.seed) if spec else None,
            corruption_spec=spec,
            init_seed=args.seed,
            lr=args.lr,
        )
        res.metrics[name] = {
            **info,
            "clean_mse": reconstruction_error(models[name], x),
            "clean_psnr": reconstruction_psnr(models[name], x),
            "elbo": elbo(models[name], x),
            "elbo_note": "log p(x | f(x)): flat prior, point-mass guide",
        }

    table, evals = [], {}
    for i, spec in enumerate(specs):
        # a seed of its own, so the test x̃ is not drawn from the training corruption's stream
        x_t = corrupt(x, make_corruption(spec), seed=args.seed + 1000 + i)
        row = {"corrupted_input_psnr": float(psnr(x_t.clamp(0, 1), x).mean())}
        for name, model in models.items():
            row[f"{name}_psnr"] = reconstruction_psnr(model, x, x_t)
            row[f"{name}_mse"] = reconstruction_error(model, x, x_t)
        row["DAE_minus_AE_psnr"] = row["DAE_psnr"] - row["AE_psnr"]
        evals[spec] = row
        trained = "trained on" if i == 0 else "not trained on"
        trained_on = "" if i == 0 else f", trained against {args.corruption} only,"
        table.append(
            [
                f"{spec} ({trained})",
                row["corrupted_input_psnr"],
                row["AE_psnr"],
                row["DAE_psnr"],
                row["DAE_minus_AE_psnr"],
            ]
        )
        with torch.no_grad():
            rows = [x[:N_SHOW], x_t[:N_SHOW].clamp(0, 1)] + [
                m.reconstruct(x[:N_SHOW], x_t[:N_SHOW]) for m in models.values()
            ]
        filename = "dae_vs_ae.png" if i == 0 else f"dae_vs_ae_{_slug(spec)}.png"
        save_image_rows(
            rows,
            ["original", f"corrupted ({spec})", "AE", f"DAE ({args.corruption})"],
            res.path(filename),
            f"Reconstructions from corrupted test images ({spec})",
            dpi=DPI,
        )
        agrees = row["DAE_psnr"] > max(row["AE_psnr"], row["corrupted_input_psnr"])
        res.figure(
            filename,
            f"Test digits, the same digits corrupted by {spec}, and the reconstructions of the "
            f"plain AE and of the DAE trained against {args.corruption}, both fed the "
            "corrupted images.",
            (
                f"Agrees: the DAE{trained_on} restores the digits better than the plain AE "
                f"(PSNR {row['DAE_psnr']:.2f} vs {row['AE_psnr']:.2f} dB, corrupted input "
                f"{row['corrupted_input_psnr']:.2f} dB): it learned to fill in what the "
                "corruption removed, the AE only to copy what it is given."
                if agrees
                else f"Disagrees: the DAE does not beat both the plain AE and the corrupted input "
                f"(PSNR DAE {row['DAE_psnr']:.2f}, AE {row['AE_psnr']:.2f}, input "
                f"{row['corrupted_input_psnr']:.2f} dB)."
            ),
            agrees,
        )
    res.metrics["corrupted_test"] = evals
    res.table(
        "PSNR on corrupted test images (dB, higher is better; mean over images)",
        ["test corruption", "corrupted x̃", "AE h(x̃)", "DAE h(x̃)", "DAE − AE"],
        table,
    )
    res.table(
        "Clean test images",
        ["model", "MSE per pixel", "PSNR (dB)", "log p(x | f(x)) (nats)", "train seconds"],
        [[n, *(res.metrics[n][k] for k in CLEAN_COLUMNS)] for n in models],
    )
    res.notes.append(
        "The price of denoising: on clean images the DAE reconstructs worse than the plain AE, "
        "which spends its whole capacity on copying."
        if res.metrics["DAE"]["clean_psnr"] < res.metrics["AE"]["clean_psnr"]
        else "On clean images the DAE reconstructs as well as the plain AE."
    )
    res.save()


if __name__ == "__main__":
    main()
