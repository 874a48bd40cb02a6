"""Denoising AE vs plain AE on MNIST with pixel dropout: PSNR on corrupted test images.

Both models are the same point-mass model/guide pair (same net, latent size, likelihood, seed and
budget, trained by :func:`ppl_vae.fit`); the only difference is that the DAE's guide encodes a
corrupted copy x̃ of each training batch (``--corruption``, 50% pixel dropout by default) while
its model scores the clean x. Both are then asked to reconstruct the clean test images from
corrupted ones (the same x̃ for both, from a fixed seed); PSNR is measured against the clean
images. Also scored: clean reconstructions, and extra corruptions (90% dropout by default).

    python experiments/dae_vs_ae.py            # quick: 20k images, 5 epochs (a few minutes CPU)
    python experiments/dae_vs_ae.py --full     # all 60k images, 20 epochs
    python experiments/dae_vs_ae.py --tiny     # smoke test (seconds)

Writes ``OUT/metrics.json`` and ``OUT/dae_vs_ae.png`` (rows: original, corrupted, AE, DAE; one
figure per extra corruption as ``OUT/dae_vs_ae_<spec>.png``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from ppl_vae import ModelConfig, TrainConfig, build_model, fit, load_dataset
from ppl_vae.corruptions import corrupt, make_corruption, psnr, reconstruction_psnr
from ppl_vae.evaluate import elbo, reconstruction_error
from ppl_vae.plots import save_image_rows
from ppl_vae.train import resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-size", type=int, default=20_000, help="first N training images")
    p.add_argument("--test-size", type=int, default=None, help="first N test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("results/dae_vs_ae"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="all 60k images, 20 epochs")
    mode.add_argument("--tiny", action="store_true", help="smoke test: 500 images, 1 epoch")
    args = p.parse_args(argv)
    if args.full:
        args.train_size, args.epochs = None, 20
    if args.tiny:
        args.train_size, args.test_size, args.epochs, args.hidden = 500, 200, 1, "32"
    if args.extra_eval is None:
        args.extra_eval = ["dropout:0.9"]
    for spec in [args.corruption, *args.extra_eval]:
        make_corruption(spec)  # fail fast on a typo
    return args


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    data = load_dataset("mnist", device=device).subset(args.train_size, args.test_size)
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    config = ModelConfig(
        latent_dim=args.latent_dim,
        prior="flat",
        likelihood=args.likelihood,
        net=args.net,
        guide="delta",
        hidden=hidden,
    )
    train_cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        objective="trace",  # the objective of the committed results
    )
    t_start = time.perf_counter()
    models, seconds = {}, {}
    for name, spec in (("AE", None), ("DAE", args.corruption)):
        torch.manual_seed(args.seed)  # identical initial weights for both
        model = build_model(config, data.image_shape)
        corruption = make_corruption(spec, seed=args.seed) if spec else None
        t0 = time.perf_counter()
        fit(model, data.train_x, train_cfg, corruption=corruption, progress=False)
        seconds[name] = time.perf_counter() - t0
        model.eval()
        models[name] = model
        print(f"trained {name} in {seconds[name]:.0f}s")

    x = data.test_x
    results: dict[str, dict] = {name: {"train_seconds": s} for name, s in seconds.items()}
    for name, model in models.items():
        results[name]["clean_mse"] = reconstruction_error(model, x)
        results[name]["clean_psnr"] = reconstruction_psnr(model, x)
        results[name]["elbo_note"] = "log p(x | f(x)): flat prior, point-mass guide"
        results[name]["elbo"] = elbo(model, x)
    evals = {}
    for i, spec in enumerate([args.corruption, *args.extra_eval]):
        # a seed of its own, so the test x̃ is not drawn from the training corruption's stream
        x_t = corrupt(x, make_corruption(spec), seed=args.seed + 1000 + i)
        row = {"corrupted_input_psnr": float(psnr(x_t.clamp(0, 1), x).mean())}
        for name, model in models.items():
            row[f"{name}_psnr"] = reconstruction_psnr(model, x, x_t)
            row[f"{name}_mse"] = reconstruction_error(model, x, x_t)
        row["DAE_minus_AE_psnr"] = row["DAE_psnr"] - row["AE_psnr"]
        evals[spec] = row
        print(
            f"{spec:>14}: PSNR corrupted input {row['corrupted_input_psnr']:.2f} dB, "
            f"AE {row['AE_psnr']:.2f} dB, DAE {row['DAE_psnr']:.2f} dB "
            f"(DAE − AE = {row['DAE_minus_AE_psnr']:+.2f} dB)"
        )
        n = 12
        with torch.no_grad():
            rows = [x[:n], x_t[:n].clamp(0, 1)] + [
                m.reconstruct(x[:n], x_t[:n]) for m in models.values()
            ]
        name = "dae_vs_ae.png" if i == 0 else f"dae_vs_ae_{_slug(spec)}.png"
        save_image_rows(
            rows,
            ["original", f"corrupted ({spec})", "AE", f"DAE ({args.corruption})"],
            args.out / name,
            f"Reconstructions from corrupted test images ({spec})",
        )
    for name in models:
        print(
            f"{name}: clean PSNR {results[name]['clean_psnr']:.2f} dB, "
            f"MSE {results[name]['clean_mse']:.5f}"
        )
    out = {
        "experiment": "dae_vs_ae",
        "tiny": args.tiny,
        "settings": {
            "model": {**vars(config), "hidden": list(hidden)},
            "train": vars(train_cfg),
            "dae_corruption": args.corruption,
            "train_images": int(data.train_x.shape[0]),
            "test_images": int(x.shape[0]),
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
        "models": results,
        "corrupted_test": evals,
        "wall_seconds": time.perf_counter() - t_start,
    }
    (args.out / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out / 'metrics.json'} ({out['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
