"""A linear auto-encoder trained by SVI finds the PCA subspace (Baldi & Hornik, 1989).

For each latent size k (2, 8, 32 by default) the linear AE — one affine encoder layer, one affine
decoder layer, point-mass guide, flat prior, Gaussian likelihood with identity mean and fixed
variance c — is trained on MNIST by :func:`ppl_vae.fit` (the same SVI + Trace_ELBO path as every
model), and compared with :class:`ppl_vae.pca.PCA` fitted on the same images:

* reconstruction MSE per pixel, AE / PCA (on the training images, where PCA is the optimum, and on
  the test images);
* the principal angles between the decoder's column space and the top-k principal subspace.

``fit`` has a constant learning rate, so the schedule is a few ``fit`` calls in a row, each with a
smaller rate (the weights carry over; Adam's moments restart). Slow directions are the ones whose
eigenvalue is close to the k-th: large batches and a decaying rate are what get the angle down.

    python experiments/linear_ae_pca.py                 # k = 2, 8, 32 on all of MNIST (~3 min CPU)
    python experiments/linear_ae_pca.py --tiny          # smoke test (seconds)

Writes ``OUT/metrics.json``, ``OUT/reconstructions.png`` and ``OUT/principal_angles.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from ppl_vae import TrainConfig, fit, load_dataset, reconstruction_error
from ppl_vae.pca import PCA, decoder_basis, linear_autoencoder, principal_angles
from ppl_vae.plots import save_image_rows
from ppl_vae.train import resolve_device

DEFAULT_SCHEDULE = "5e-3x5,2e-3x15,5e-4x5"


def _schedule(s: str) -> list[tuple[float, int]]:
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latent-dims", default="2,8,32", help="comma-separated latent sizes")
    p.add_argument(
        "--schedule",
        type=_schedule,
        default=_schedule(DEFAULT_SCHEDULE),
        help=f"learning-rate stages LRxEPOCHS,... (default {DEFAULT_SCHEDULE})",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--variance", type=float, default=1.0, help="likelihood variance c")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--train-size", type=int, default=None, help="first N training images")
    p.add_argument("--test-size", type=int, default=None, help="first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("results/linear_ae_pca"))
    p.add_argument("--tiny", action="store_true", help="smoke test: k=2, 2000 images, 2 epochs")
    args = p.parse_args(argv)
    if args.tiny:
        args.latent_dims, args.schedule = "2", [(1e-2, 2)]
        args.train_size, args.test_size = 2000, 500
    args.latent_dims = [int(k) for k in str(args.latent_dims).split(",")]
    return args


def run_one(
    k: int, train_x: torch.Tensor, test_x: torch.Tensor, args: argparse.Namespace
) -> tuple[dict, PCA, torch.nn.Module]:
    """Fit PCA(k) and train the linear AE(k); return the metrics and both models."""
    pca = PCA(k).fit(train_x)
    ae = linear_autoencoder(train_x.shape[1:], k, variance=args.variance, data_mean=train_x.mean(0))
    stages = []
    t0 = time.perf_counter()
    for i, (lr, epochs) in enumerate(args.schedule):
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=args.batch_size,
            lr=lr,
            seed=args.seed + i,
            device=args.device,
            objective="trace",  # the objective of the committed results
        )
        history = fit(ae, train_x, cfg, progress=False)
        angle = float(principal_angles(decoder_basis(ae), pca.components).max())
        stages.append(
            {"lr": lr, "epochs": epochs, "train_loss": history.train_loss[-1], "max_angle": angle}
        )
        print(f"  k={k:3d} stage {i + 1}: lr {lr:g} × {epochs} epochs, max angle {angle:6.2f}°")
    seconds = time.perf_counter() - t0
    ae.eval()
    with torch.no_grad():
        pca_train = float(((pca.reconstruct(train_x) - train_x) ** 2).mean())
        pca_test = float(((pca.reconstruct(test_x) - test_x) ** 2).mean())
    ae_train = reconstruction_error(ae, train_x)
    ae_test = reconstruction_error(ae, test_x)
    angles = principal_angles(decoder_basis(ae), pca.components)
    metrics = {
        "latent_dim": k,
        "pca_train_mse": pca_train,
        "ae_train_mse": ae_train,
        "train_mse_ratio": ae_train / pca_train,
        "pca_test_mse": pca_test,
        "ae_test_mse": ae_test,
        "test_mse_ratio": ae_test / pca_test,
        "max_principal_angle_deg": float(angles.max()),
        "principal_angles_deg": [float(a) for a in angles],
        # λ_k and λ_(k+1): the smaller their gap, the flatter the loss along the last direction
        "eigenvalues_k_and_next": [
            float(pca.explained_variance[-1]),
            float(PCA(k + 1).fit(train_x).explained_variance[-1]),
        ],
        "train_seconds": seconds,
        "stages": stages,
    }
    metrics["within_2_percent"] = max(metrics["train_mse_ratio"], metrics["test_mse_ratio"]) <= 1.02
    metrics["angle_under_5_degrees"] = metrics["max_principal_angle_deg"] < 5.0
    return metrics, pca, ae


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, device=device).subset(args.train_size, args.test_size)
    t_start = time.perf_counter()
    results, rows, labels = [], [data.test_x[:10]], ["test images"]
    for k in args.latent_dims:
        m, pca, ae = run_one(k, data.train_x, data.test_x, args)
        results.append(m)
        print(
            f"k={k:3d}: MSE AE {m['ae_train_mse']:.5f} / PCA {m['pca_train_mse']:.5f} = "
            f"{m['train_mse_ratio']:.4f} (train), {m['test_mse_ratio']:.4f} (test); "
            f"largest principal angle {m['max_principal_angle_deg']:.2f}°  "
            f"({m['train_seconds']:.0f}s)"
        )
        with torch.no_grad():
            rows += [pca.reconstruct(data.test_x[:10]), ae.reconstruct(data.test_x[:10])]
        labels += [f"PCA k={k}", f"linear AE k={k}"]
    out = {
        "experiment": "linear_ae_pca",
        "tiny": args.tiny,
        "settings": {
            "dataset": args.dataset,
            "train_images": int(data.train_x.shape[0]),
            "test_images": int(data.test_x.shape[0]),
            "schedule": args.schedule,
            "batch_size": args.batch_size,
            "variance": args.variance,
            "seed": args.seed,
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
        "results": results,
        "wall_seconds": time.perf_counter() - t_start,
    }
    (args.out / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    save_image_rows(
        [r.clamp(0, 1) for r in rows],
        labels,
        args.out / "reconstructions.png",
        "PCA and the SVI-trained linear AE reconstruct test digits alike",
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for m in results:
        a = sorted(m["principal_angles_deg"])
        ax.plot(range(1, len(a) + 1), a, "o-", ms=3, label=f"k = {m['latent_dim']}")
    ax.axhline(5.0, color="grey", ls="--", lw=1, label="5°")
    ax.set_xlabel("principal angle index (sorted)")
    ax.set_ylabel("angle (degrees)")
    ax.set_title("Linear AE decoder subspace vs PCA subspace", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "principal_angles.png", dpi=110)
    plt.close(fig)
    print(f"wrote {args.out / 'metrics.json'} ({out['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
