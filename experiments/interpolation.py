"""Experiment 2: latent interpolation between pairs of test digits — PCA, AE and VAE at size 32.

Each model encodes two test digits, walks the straight line between the codes and decodes ten
points on it. For PCA (a linear code) this is exactly a cross-fade of the two projections; the
conv AE (experiment 1's size-32 model) and the VAE (MLP, Bernoulli, N(0, I) prior) decode through a
non-linear map. Besides the figure, a digit classifier scores the decoded midpoints of many random
pairs: a midpoint that looks like a digit gets a confident prediction, a ghostly superposition of
two digits does not.

    python experiments/interpolation.py         # quick
    python experiments/interpolation.py --full
"""

from __future__ import annotations

import torch
from common import (
    AE_BUDGETS,
    DPI,
    VAE_BUDGETS,
    VAE_TRAIN,
    Results,
    budget,
    budget_dict,
    conv_ae,
    digit_classifier,
    first_of_class,
    load_mnist,
    mnist_model,
    parse_args,
    vae_config,
)

from ppl_vae.pca import PCA
from ppl_vae.plots import save_image_rows

LATENT = 32
STEPS = 10
#: Digit pairs shown in the figure (first test image of each class).
PAIRS = ((3, 8), (4, 9), (1, 7), (0, 6))
N_RANDOM_PAIRS = 500


@torch.no_grad()
def interpolate(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Decode ``STEPS`` codes on the segment encode(x1) → encode(x2): ``(B, STEPS, C, H, W)``.

    ``VAE.interpolate`` for any object with ``encode``/``decode`` (PCA has no such method):
    belongs in the library as a function, like :func:`ppl_vae.latent.sample_images`.
    """
    z1, z2 = model.encode(x1), model.encode(x2)
    t = torch.linspace(0, 1, STEPS, device=z1.device)[:, None]
    return model.decode(z1[:, None] * (1 - t) + z2[:, None] * t).clamp(0, 1)


def main(argv: list[str] | None = None) -> None:
    """Interpolate the shown pairs and score the midpoints of random pairs."""
    args = parse_args(__doc__, number=2, argv=argv)
    b_ae, b_vae = budget(args, AE_BUDGETS), budget(args, VAE_BUDGETS)
    data_ae, data = load_mnist(args, b_ae), load_mnist(args, b_vae)
    res = Results(args, "interpolation", "Latent interpolation: PCA, AE, VAE (size 32)")
    res.settings = {
        "ae_budget": budget_dict(b_ae),
        "vae_budget": budget_dict(b_vae),
        "models": "PCA(32) on the VAE's training images; conv AE of experiment 1 (k = 32); "
        "MLP VAE (latent 32, Bernoulli, N(0, I))",
        "steps": STEPS,
        "midpoint_score": f"classifier confidence at t = 0.5 over {N_RANDOM_PAIRS} random "
        "test pairs of different classes",
    }
    ae, _ = conv_ae(args, data_ae, b_ae, LATENT)
    vae, _ = mnist_model(args, data, b_vae, f"vae-z{LATENT}", vae_config(LATENT), **VAE_TRAIN)
    pca = PCA(LATENT).fit(data.train_x)
    models = {"PCA": pca, "AE": ae, "VAE": vae}

    first = {int(data.test_y[i]): i for i in first_of_class(data.test_y)}
    pairs = [(a, c) for a, c in PAIRS if a in first and c in first]
    x1 = data.test_x[[first[a] for a, _ in pairs]]
    x2 = data.test_x[[first[c] for _, c in pairs]]
    paths = {name: interpolate(m, x1, x2) for name, m in models.items()}
    rows, labels = [], []
    for i, (a, c) in enumerate(pairs):
        for name in models:
            rows.append(paths[name][i])
            labels.append(f"{name}: {a} → {c}")
    save_image_rows(
        rows,
        labels,
        res.path("interpolation.png"),
        f"Decoded codes on the line between two test digits (latent size {LATENT})",
        col_labels=[f"t={t:.2f}" for t in torch.linspace(0, 1, STEPS).tolist()],
        label_width=1.5,
        dpi=DPI,
    )

    # Midpoints of random pairs of different classes.
    g = torch.Generator().manual_seed(args.seed)
    n = data.test_x.shape[0]
    i1, i2 = torch.randint(n, (2, N_RANDOM_PAIRS), generator=g).to(args.device)
    keep = data.test_y[i1] != data.test_y[i2]
    i1, i2 = i1[keep], i2[keep]
    clf = digit_classifier(args, data)
    table = []
    for name, m in models.items():
        with torch.no_grad():
            mid = m.decode(0.5 * (m.encode(data.test_x[i1]) + m.encode(data.test_x[i2])))
        s = clf.scores(mid.clamp(0, 1))
        res.metrics[name] = s
        table.append([name, s["confidence"]])
    conf = {name: res.metrics[name]["confidence"] for name in models}
    agrees = conf["VAE"] > conf["PCA"]
    res.figure(
        "interpolation.png",
        "Each row decodes ten evenly spaced codes on the segment between the codes of two test "
        "digits (left and right ends), for PCA, the conv AE and the VAE at latent size 32.",
        (
            "Agrees: PCA's path is a cross-fade in which both digits show at once, while the "
            "VAE's intermediate images look like single digits that morph into each other"
            + (
                "; the AE's path is also free of double images but blurrier (its codes are "
                "not regularised, so the segment leaves the region the decoder was trained on)"
                if conf["AE"] < conf["VAE"]
                else ", as do the AE's"
            )
            + f". Midpoint classifier confidence: PCA {conf['PCA']:.2f}, AE {conf['AE']:.2f}, "
            f"VAE {conf['VAE']:.2f}."
            if agrees
            else "Disagrees: the VAE's midpoints are not more digit-like than PCA's "
            f"(confidence PCA {conf['PCA']:.2f}, AE {conf['AE']:.2f}, VAE {conf['VAE']:.2f})."
        ),
        agrees,
    )
    res.table(
        "Classifier confidence on decoded midpoints of random test pairs (higher: more digit-like)",
        ["model", "mean max class probability"],
        table,
    )
    res.save()


if __name__ == "__main__":
    main()
