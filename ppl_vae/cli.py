"""Command line: ``ppl-vae train …`` (also ``python -m ppl_vae``).

The CLI is thin: it parses options into :class:`~ppl_vae.model.ModelConfig` and
:class:`~ppl_vae.train.TrainConfig`, calls the library and writes a run folder::

    RUN/checkpoint.pt     weights, Pyro param store, optimiser state, config, history
    RUN/config.json       the settings, for people
    RUN/metrics.json      test ELBO, IS log p(x), reconstruction MSE, bits/dim, per-epoch history
    RUN/*.png             reconstructions, prior samples, ELBO curves
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .data import DATASETS, DatasetIntegrityError, DatasetNotFoundError, load_dataset
from .errors import CheckpointError, DataError, TrainingDivergedError
from .evaluate import evaluate
from .likelihoods import LIKELIHOODS
from .model import GUIDES, ModelConfig, build_model
from .nets import NETS
from .priors import PRIORS
from .train import Objective, TrainConfig, fit, resolve_device

#: Named model families: the same machinery with different parts (see ppl_vae.model).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "vae": {"guide": "normal", "prior": "normal"},
    "ae": {"guide": "delta", "prior": "flat"},
}


def _hidden(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip()) if s else ()


def _kv(s: str) -> dict[str, float]:
    out = {}
    for item in filter(None, s.split(",")):
        k, _, v = item.partition("=")
        out[k.strip()] = float(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppl-vae", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"ppl_vae {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model, evaluate it and write a run folder")
    m, tc = ModelConfig(), TrainConfig()
    t.add_argument(
        "--model",
        choices=sorted(MODEL_PRESETS),
        default="vae",
        help="model family (sets --guide and --prior defaults)",
    )
    t.add_argument("--dataset", choices=DATASETS, default="mnist")
    t.add_argument(
        "--data-root",
        default=None,
        help="data cache (default: $PPL_VAE_DATA or ~/.cache/ppl_vae/data)",
    )
    t.add_argument("--latent-dim", type=int, default=m.latent_dim)
    t.add_argument("--prior", choices=sorted(PRIORS), default=None)
    t.add_argument("--prior-kwargs", type=_kv, default={}, help="e.g. scale=0.5")
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default=m.likelihood)
    t.add_argument("--likelihood-kwargs", type=_kv, default={}, help="e.g. variance=0.1")
    t.add_argument("--net", choices=sorted(NETS), default=m.net)
    t.add_argument(
        "--hidden", type=_hidden, default=m.hidden, help="MLP hidden sizes, e.g. 512,512"
    )
    t.add_argument("--guide", choices=sorted(GUIDES), default=None)
    t.add_argument("--epochs", type=int, default=tc.epochs)
    t.add_argument("--batch-size", type=int, default=tc.batch_size)
    t.add_argument("--lr", type=float, default=tc.lr)
    t.add_argument("--objective", choices=[o.value for o in Objective], default=tc.objective)
    t.add_argument("--particles", type=int, default=tc.num_particles)
    t.add_argument("--beta", type=float, default=tc.beta, help="KL weight (beta-VAE)")
    t.add_argument("--warmup-epochs", type=float, default=tc.warmup_epochs, help="KL warm-up")
    t.add_argument("--binarize", action="store_true", help="dynamic binarization")
    t.add_argument("--seed", type=int, default=tc.seed)
    t.add_argument("--device", default=tc.device, help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--train-size", type=int, default=None, help="use the first N training images")
    t.add_argument("--test-size", type=int, default=None, help="use the first N test images")
    t.add_argument(
        "--iw-samples", type=int, default=1000, help="importance samples for log p(x) (0 to skip)"
    )
    t.add_argument(
        "--iw-images",
        type=int,
        default=1000,
        help="test images for the log p(x) estimate (it costs K decoder passes each)",
    )
    t.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: runs/MODEL-DATASET-TIMESTAMP, so no run is overwritten)",
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--no-figures", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    preset = MODEL_PRESETS[args.model]
    mc = ModelConfig(
        latent_dim=args.latent_dim,
        prior=args.prior or preset["prior"],
        likelihood=args.likelihood,
        net=args.net,
        guide=args.guide or preset["guide"],
        hidden=tuple(args.hidden),
        prior_kwargs=args.prior_kwargs,
        likelihood_kwargs=args.likelihood_kwargs,
    )
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        objective=args.objective,
        num_particles=args.particles,
        beta=args.beta,
        warmup_epochs=args.warmup_epochs,
        binarize=args.binarize,
        seed=args.seed,
        device=args.device,
    )
    mc.validate()
    tc.validate()
    return mc, tc


def _jsonable(obj: Any) -> Any:
    """Normalise tuples to lists etc. so configs compare equal however they were stored."""
    return json.loads(json.dumps(obj))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def train_command(args: argparse.Namespace) -> int:
    mc, tc = _configs(args)
    out: Path = (
        args.out or Path("runs") / f"{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    ckpt = out / "checkpoint.pt"
    run_config = {
        "model": asdict(mc),
        "model_family": args.model,
        "dataset": args.dataset,
        "train_size": args.train_size,
        "test_size": args.test_size,
    }
    if args.resume:
        from .checkpoint import load_checkpoint

        saved = load_checkpoint(ckpt)["config"]
        if _jsonable(saved.get("model")) != _jsonable(asdict(mc)):
            raise CheckpointError(
                f"{ckpt} was trained with model settings {saved.get('model')}; pass the same "
                "options to --resume it"
            )
    elif ckpt.exists():
        raise CheckpointError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(tc.device)
    print(f"ppl-vae: {args.model} on {args.dataset}, device {device}, run folder {out}")
    data = load_dataset(args.dataset, args.data_root, device=device)
    data = data.subset(args.train_size, args.test_size)
    model = build_model(mc, data.image_shape)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {mc.net} encoder/decoder, latent {mc.latent_dim}, prior {mc.prior}, "
        f"likelihood {mc.likelihood}, guide {mc.guide}; {n_params:,} parameters"
    )
    _write_json(out / "config.json", {**run_config, "train": asdict(tc)})
    t0 = time.perf_counter()
    history = fit(
        model,
        data.train_x,
        tc,
        test_x=data.test_x,
        checkpoint_path=ckpt,
        resume=args.resume,
        extra_state=run_config,
        progress=not args.quiet,
    )
    train_seconds = time.perf_counter() - t0
    print("evaluating on the test set ...")
    metrics = evaluate(
        model,
        data.test_x,
        iw_samples=args.iw_samples,
        iw_images=args.iw_images,
        progress=not args.quiet,
    )
    metrics.update(
        {
            "dataset": args.dataset,
            "model_family": args.model,
            "epochs": len(history.epoch),
            "train_seconds_this_invocation": train_seconds,
            "device": str(device),
            "torch": torch.__version__,
            "history": history.to_dict(),
        }
    )
    _write_json(out / "metrics.json", metrics)
    if not args.no_figures:
        from .plots import save_run_figures

        for path in save_run_figures(model, data.test_x, history, out):
            print(f"figure: {path}")
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors the user can act on print one clear line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return train_command(args)
    except (
        DataError,
        CheckpointError,
        TrainingDivergedError,
        DatasetNotFoundError,
        DatasetIntegrityError,
        ValueError,
    ) as e:
        print(f"ppl-vae: error: {e}", file=sys.stderr)
        return 2
    return 1


__all__ = ["build_parser", "main"]
