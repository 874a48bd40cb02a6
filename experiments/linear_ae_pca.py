"""Experiment 12: a linear auto-encoder trained by SVI finds the PCA subspace (Baldi & Hornik).

For each latent size k (2, 8 and, in full mode, 32) the linear AE (one affine encoder layer, one
affine decoder layer, point-mass guide, flat prior, Gaussian likelihood with identity mean and
fixed variance c: :func:`ppl_vae.pca.linear_autoencoder`) is trained on all MNIST training images
by :func:`ppl_vae.fit` (the same SVI + Trace_ELBO path as every model) and compared with
:class:`ppl_vae.pca.PCA` fitted on the same images:

* reconstruction MSE per pixel, AE / PCA (on the training images, where PCA is the optimum, and
  on the test images);
* the principal angles between the decoder's column space and the top-k principal subspace.

``fit`` has a constant learning rate, so the schedule is a few ``fit`` calls in a row, each with a
smaller rate (the weights carry over; Adam's moments restart). Slow directions are the ones whose
eigenvalue is close to the k-th: large batches and a decaying rate are what get the angle down.
The AEs are trained afresh on every run (no other experiment shares them, and their initial
weights follow from ``--seed`` through the whole run), so ``--cache`` is not used.

    python experiments/linear_ae_pca.py          # quick: k = 2, 8 (~2 min on 1 thread)
    python experiments/linear_ae_pca.py --full   # k = 2, 8, 32 (~3 min on 1 thread)
"""

from __future__ import annotations

import argparse
import time

import matplotlib.pyplot as plt
import torch
from common import (
    DPI,
    Budget,
    Results,
    budget,
    budget_dict,
    load_mnist,
    parse_args,
    train_config,
)

from ppl_vae import fit, reconstruction_error
from ppl_vae.pca import PCA, decoder_basis, linear_autoencoder, principal_angles
from ppl_vae.plots import save_image_rows

#: ``epochs`` is the schedule's total, for the report; the schedule is what runs.
BUDGETS = {
    "quick": Budget(n_train=None, n_test=None, epochs=25, batch_size=256),
    "full": Budget(n_train=None, n_test=None, epochs=25, batch_size=256),
    "tiny": Budget(n_train=1000, n_test=250, epochs=2, batch_size=256),
}
#: Learning-rate stages ``LRxEPOCHS`` per mode.
SCHEDULES = {
    "quick": "5e-3x5,2e-3x15,5e-4x5",
    "full": "5e-3x5,2e-3x15,5e-4x5",
    "tiny": "1e-2x1,1e-3x1",
}
#: The angle needs steps, not fewer images, to come down (on 20k images the schedule leaves 15°
#: at k = 8), so the quick mode trains the first two sizes of the full run (the same numbers).
LATENT_DIMS = {"quick": "2,8", "full": "2,8,32", "tiny": "2"}
N_SHOW = 10
TABLE_COLUMNS = (
    "k",
    "PCA train MSE",
    "train ratio",
    "test ratio",
    "largest angle (°)",
    "λ_k",
    "λ_k+1",
    "train seconds",
)
MAX_RATIO = 1.02
MAX_ANGLE = 5.0


def schedule(s: str) -> list[tuple[float, int]]:
    """``"5e-3x5,2e-3x15"`` → [(0.005, 5), (0.002, 15)]: (learning rate, epochs) stages."""
    stages = []
    for part in s.split(","):
        lr, _, epochs = part.strip().partition("x")
        try:
            stages.append((float(lr), int(epochs)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad stage {part!r}; use LRxEPOCHS, e.g. 2e-3x15"
            ) from None
    return stages


def options(p: argparse.ArgumentParser) -> None:
    """This experiment's own options (``--epochs`` does not apply: use ``--schedule``)."""
    p.add_argument("--latent-dims", default=None, help="comma-separated latent sizes")
    p.add_argument(
        "--schedule",
        type=schedule,
        default=None,
        help=f"learning-rate stages LRxEPOCHS,... (default {SCHEDULES['full']})",
    )
    p.add_argument("--variance", type=float, default=1.0, help="likelihood variance c")


def run_one(
    k: int,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    stages: list[tuple[float, int]],
    spectrum: torch.Tensor,
    args: argparse.Namespace,
    b: Budget,
) -> tuple[dict, PCA, torch.nn.Module]:
    """Fit PCA(k) and train the linear AE(k); return the metrics and both models."""
    pca = PCA(k).fit(train_x)
    ae = linear_autoencoder(train_x.shape[1:], k, variance=args.variance, data_mean=train_x.mean(0))
    log = []
    t0 = time.perf_counter()
    for i, (lr, epochs) in enumerate(stages):
        cfg = train_config(args, b, epochs=epochs, lr=lr, seed=args.seed + i)
        history = fit(ae, train_x, cfg, progress=False)
        angle = float(principal_angles(decoder_basis(ae), pca.components).max())
        log.append(
            {"lr": lr, "epochs": epochs, "train_loss": history.train_loss[-1], "max_angle": angle}
        )
        print(f"  k={k:3d} stage {i + 1}: lr {lr:g} × {epochs} epochs, max angle {angle:6.2f}°")
    seconds = time.perf_counter() - t0
    ae.eval()
    angles = principal_angles(decoder_basis(ae), pca.components)
    m = {
        "latent_dim": k,
        "pca_train_mse": reconstruction_error(pca, train_x),
        "ae_train_mse": reconstruction_error(ae, train_x),
        "pca_test_mse": reconstruction_error(pca, test_x),
        "ae_test_mse": reconstruction_error(ae, test_x),
        "max_principal_angle_deg": float(angles.max()),
        "principal_angles_deg": [float(a) for a in angles],
        # λ_k and λ_(k+1): the smaller their gap, the flatter the loss along the last direction
        "eigenvalues_k_and_next": [float(spectrum[k - 1]), float(spectrum[k])],
        "train_seconds": seconds,
        "stages": log,
    }
    m["train_mse_ratio"] = m["ae_train_mse"] / m["pca_train_mse"]
    m["test_mse_ratio"] = m["ae_test_mse"] / m["pca_test_mse"]
    m["within_2_percent"] = max(m["train_mse_ratio"], m["test_mse_ratio"]) <= MAX_RATIO
    m["angle_under_5_degrees"] = m["max_principal_angle_deg"] < MAX_ANGLE
    return m, pca, ae


def main(argv: list[str] | None = None) -> None:
    """Fit PCA and train the linear AE at every size; write the rows, the angles and the table."""
    args = parse_args(__doc__, number=12, argv=argv, options=options)
    if args.epochs is not None:
        raise SystemExit("linear_ae_pca.py trains on a schedule: use --schedule, not --epochs")
    stages = args.schedule or schedule(SCHEDULES[args.mode])
    ks = [int(k) for k in (args.latent_dims or LATENT_DIMS[args.mode]).split(",")]
    b = budget(args, BUDGETS)
    data = load_mnist(args, b)
    res = Results(args, "linear_ae_pca", "A linear AE trained by SVI finds the PCA subspace")
    res.settings = {
        "budget": {**budget_dict(b), "epochs": sum(e for _, e in stages)},
        "schedule": ", ".join(f"lr {lr:g} × {e} epochs" for lr, e in stages),
        "model": "linear AE (one affine layer each way), point-mass guide, flat prior, Gaussian "
        f"likelihood with identity mean and c = {args.variance}; SVI Trace_ELBO, Adam; one fit "
        "call per stage (seed + stage index)",
        "pca": "ppl_vae.pca.PCA (exact eigendecomposition) on the same training images",
        "latent_sizes": ks,
    }
    spectrum = PCA(max(ks) + 1).fit(data.train_x).explained_variance
    x_show = data.test_x[:N_SHOW]
    rows, labels, table = [x_show], ["test images"], []
    for k in ks:
        m, pca, ae = run_one(k, data.train_x, data.test_x, stages, spectrum, args, b)
        res.metrics[f"k{k}"] = m
        table.append(
            [
                k,
                m["pca_train_mse"],
                m["train_mse_ratio"],
                m["test_mse_ratio"],
                m["max_principal_angle_deg"],
                *m["eigenvalues_k_and_next"],
                m["train_seconds"],
            ]
        )
        print(
            f"k={k:3d}: MSE AE / PCA = {m['train_mse_ratio']:.4f} (train), "
            f"{m['test_mse_ratio']:.4f} (test); largest principal angle "
            f"{m['max_principal_angle_deg']:.2f}° ({m['train_seconds']:.0f}s)"
        )
        with torch.no_grad():
            rows += [pca.reconstruct(x_show).clamp(0, 1), ae.reconstruct(x_show).clamp(0, 1)]
        labels += [f"PCA k={k}", f"linear AE k={k}"]
    save_image_rows(
        rows,
        labels,
        res.path("reconstructions.png"),
        "PCA and the SVI-trained linear AE reconstruct test digits alike",
        dpi=DPI,
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k in ks:
        a = sorted(res.metrics[f"k{k}"]["principal_angles_deg"])
        ax.plot(range(1, len(a) + 1), a, "o-", ms=3, label=f"k = {k}")
    ax.axhline(MAX_ANGLE, color="grey", ls="--", lw=1, label=f"{MAX_ANGLE:g}°")
    ax.set_xlabel("principal angle index (sorted)")
    ax.set_ylabel("angle (degrees)")
    ax.set_title("Linear AE decoder subspace vs PCA subspace", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    res.savefig(fig, "principal_angles.png")

    ratios = " / ".join(f"{r[3]:.4f}" for r in table)
    angles = " / ".join(f"{r[4]:.2f}°" for r in table)
    sizes = " / ".join(str(k) for k in ks)
    close = all(res.metrics[f"k{k}"]["within_2_percent"] for k in ks)
    res.figure(
        "reconstructions.png",
        f"Ten test digits and their reconstructions by PCA and by the linear AE at k = {sizes}.",
        (
            "Agrees: the linear AE reconstructs like PCA, the optimal linear code (test MSE "
            f"ratio AE / PCA {ratios} at k = {sizes}, within {100 * (MAX_RATIO - 1):.0f}% "
            "on training and test images)."
            if close
            else f"Disagrees: the linear AE's MSE is more than {100 * (MAX_RATIO - 1):.0f}% above "
            f"PCA's (test ratio {ratios} at k = {sizes}); it needs more training."
        ),
        close,
    )
    aligned = all(res.metrics[f"k{k}"]["angle_under_5_degrees"] for k in ks)
    res.figure(
        "principal_angles.png",
        "Principal angles between the column space of the linear AE's decoder and the top-k "
        "principal subspace, per latent size k.",
        (
            "Agrees: SVI on the ELBO of the linear AE finds the principal subspace (largest "
            f"angle {angles} at k = {sizes}), though not the principal directions themselves "
            "(the decoder's columns need not be orthonormal)."
            if aligned
            else f"Disagrees: the largest angle ({angles} at k = {sizes}) is {MAX_ANGLE:g}° or "
            "more; the directions whose eigenvalues are close to the k-th converge slowly."
        ),
        aligned,
    )
    res.table(
        "Linear AE vs PCA per latent size k (MSE per pixel; ratios AE / PCA)",
        TABLE_COLUMNS,
        table,
    )
    res.save()


if __name__ == "__main__":
    main()
