"""Command line: ``ppl-vae train …`` and ``ppl-vae compare …`` (also ``python -m ppl_vae``).

The CLI is thin: it parses options into :class:`~ppl_vae.model.ModelConfig` and
:class:`~ppl_vae.train.TrainConfig`, calls the library and writes a run folder::

    RUN/checkpoint.pt     weights, Pyro param store, optimiser state, config, history
    RUN/config.json       the settings, for people
    RUN/metrics.json      test ELBO, IS log p(x), reconstruction MSE, bits/dim, per-epoch history
    RUN/*.png             reconstructions, prior samples, ELBO curves (AE family: samples of a
                          Gaussian mixture fitted to the training codes; with a corruption:
                          corrupted test images and their reconstructions)

``--model`` picks a family (AE, denoising AE, sparse AE, VAE: one model/guide pair with different
parts, see :mod:`ppl_vae.model`); every other option means the same for all of them.
``ppl-vae compare`` trains several families with the same options and writes one table
(``compare.md`` and ``compare.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .corruptions import corrupt, make_corruption, psnr, reconstruction_psnr
from .data import (
    DATASETS,
    DatasetIntegrityError,
    DatasetNotFoundError,
    ImageData,
    load_dataset,
)
from .errors import CheckpointError, DataError, TrainingDivergedError
from .evaluate import evaluate, reconstruction_error
from .likelihoods import LIKELIHOODS, make_likelihood
from .model import GUIDES, ModelConfig, build_model
from .nets import NETS
from .priors import PRIORS, Flat, make_prior
from .train import Objective, TrainConfig, fit, resolve_device, resolve_objective

#: Named model families: the same machinery with different parts (see ppl_vae.model).
#: ``corruption`` is the default ``--corruption`` (what the guide's encoder sees in training).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "vae": {"guide": "normal", "prior": "normal"},
    "ae": {"guide": "delta", "prior": "flat"},
    "dae": {"guide": "delta", "prior": "flat", "corruption": "dropout:0.5"},
    "sparse-ae": {"guide": "delta", "prior": "laplace"},
}

#: Models ``ppl-vae compare`` trains by default ("pca" is the linear baseline, fitted not trained).
COMPARE_MODELS = ("ae", "dae", "sparse-ae", "vae", "pca")


def _hidden(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip()) if s else ()


def _kv(s: str) -> dict[str, float]:
    out = {}
    for item in filter(None, s.split(",")):
        k, _, v = item.partition("=")
        out[k.strip()] = float(v)
    return out


def _spec(s: str) -> str:
    """Validate a corruption spec at parse time (so a typo fails before any data is loaded)."""
    if s.strip().lower() != "none":
        try:
            make_corruption(s)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return s


def _add_run_options(t: argparse.ArgumentParser, compare: bool = False) -> None:
    """The options shared by ``train`` and ``compare``: data, model parts, optimisation, eval."""
    m, tc = ModelConfig(), TrainConfig()
    t.add_argument("--dataset", choices=DATASETS, default="mnist")
    t.add_argument(
        "--data-root",
        default=None,
        help="data cache (default: $PPL_VAE_DATA or ~/.cache/ppl_vae/data)",
    )
    t.add_argument("--latent-dim", type=int, default=m.latent_dim)
    if not compare:  # compare takes guide and prior from each model's preset
        t.add_argument("--prior", choices=sorted(PRIORS), default=None)
        t.add_argument("--prior-kwargs", type=_kv, default={}, help="e.g. scale=0.5")
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default=m.likelihood)
    t.add_argument("--likelihood-kwargs", type=_kv, default={}, help="e.g. variance=0.1")
    t.add_argument("--net", choices=sorted(NETS), default=m.net)
    t.add_argument(
        "--hidden", type=_hidden, default=m.hidden, help="MLP hidden sizes, e.g. 512,512"
    )
    if not compare:
        t.add_argument("--guide", choices=sorted(GUIDES), default=None)
    t.add_argument(
        "--sparsity-lambda",
        type=float,
        default=None,
        help="L1 weight λ on the codes of a Laplace prior (scale b = 1/λ; sparse-ae default 1)",
    )
    t.add_argument("--epochs", type=int, default=3 if compare else tc.epochs)
    t.add_argument("--batch-size", type=int, default=tc.batch_size)
    t.add_argument("--lr", type=float, default=tc.lr)
    t.add_argument(
        "--objective",
        choices=[o.value for o in Objective],
        default=tc.objective,
        help="auto: JitTrace_ELBO for the library's own models on CPU, else Trace_ELBO",
    )
    t.add_argument("--particles", type=int, default=tc.num_particles)
    t.add_argument("--beta", type=float, default=tc.beta, help="KL weight (beta-VAE)")
    t.add_argument("--warmup-epochs", type=float, default=tc.warmup_epochs, help="KL warm-up")
    t.add_argument("--binarize", action="store_true", help="dynamic binarization")
    t.add_argument("--seed", type=int, default=tc.seed)
    t.add_argument("--device", default=tc.device, help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument(
        "--train-size",
        type=int,
        default=10_000 if compare else None,
        help="use the first N training images (0 or absent: all)",
    )
    t.add_argument(
        "--test-size",
        type=int,
        default=2_000 if compare else None,
        help="use the first N test images (0 or absent: all)",
    )
    t.add_argument(
        "--iw-samples",
        type=int,
        default=200 if compare else 1000,
        help="importance samples for log p(x) (0 to skip)",
    )
    t.add_argument(
        "--iw-images",
        type=int,
        default=500 if compare else 1000,
        help="test images for the log p(x) estimate (it costs K decoder passes each)",
    )
    t.add_argument(
        "--eval-corruption",
        type=_spec,
        default="dropout:0.5" if compare else None,
        help="also score reconstructions of test images corrupted this way (PSNR vs the clean "
        "images; default: "
        + ("dropout:0.5" if compare else "the training --corruption, if any")
        + "; 'none' to skip)",
    )
    t.add_argument("--no-figures", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppl-vae", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"ppl_vae {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    # handled in main() by ppl_vae.bench, listed here so that --help shows it
    sub.add_parser("benchmark", help="time library training against hand-written PyTorch")

    t = sub.add_parser("train", help="train a model, evaluate it and write a run folder")
    t.add_argument(
        "--model",
        choices=sorted(MODEL_PRESETS),
        default="vae",
        help="model family (sets --guide, --prior and --corruption defaults)",
    )
    t.add_argument(
        "--corruption",
        type=_spec,
        default=None,
        help="corrupt what the encoder sees in training, e.g. dropout:0.5, noise:0.3, blur:4, "
        "block:16, saltpepper:0.1, or several joined by '+' (default: none; dae: dropout:0.5)",
    )
    _add_run_options(t)
    t.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: runs/MODEL-DATASET-TIMESTAMP, so no run is overwritten)",
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")

    c = sub.add_parser(
        "compare",
        help="train several model families with the same options and write one table",
        description="Train each model family with the same options (a quick budget by default: "
        "3 epochs on 10,000 images), evaluate all on the same clean and corrupted test images, "
        "and write OUT/compare.md and OUT/compare.json (each model's run folder is OUT/MODEL).",
    )
    c.add_argument(
        "--models",
        default=",".join(COMPARE_MODELS),
        help=f"comma-separated, from {sorted([*MODEL_PRESETS, 'pca'])}",
    )
    c.add_argument(
        "--dae-corruption",
        type=_spec,
        default=MODEL_PRESETS["dae"]["corruption"],
        help="the denoising AE's training corruption",
    )
    _add_run_options(c, compare=True)
    c.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: runs/compare-DATASET-TIMESTAMP)",
    )
    c.add_argument("--resume", action="store_true", help="continue the runs in OUT/MODEL")
    return p


def _configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    preset = MODEL_PRESETS[args.model]
    prior = getattr(args, "prior", None) or preset["prior"]
    prior_kwargs = dict(getattr(args, "prior_kwargs", None) or {})
    if args.sparsity_lambda is not None:
        lam = args.sparsity_lambda
        if prior != "laplace":
            raise ValueError(
                f"--sparsity-lambda needs the Laplace prior (--model sparse-ae), not {prior!r}"
            )
        if not lam > 0:
            raise ValueError(f"--sparsity-lambda must be > 0, got {lam}")
        if "scale" in prior_kwargs:
            raise ValueError("give either --sparsity-lambda or --prior-kwargs scale=b, not both")
        prior_kwargs["scale"] = 1.0 / lam  # −log Laplace(z; 0, b) = ‖z‖₁ / b + const
    mc = ModelConfig(
        latent_dim=args.latent_dim,
        prior=prior,
        likelihood=args.likelihood,
        net=args.net,
        guide=getattr(args, "guide", None) or preset["guide"],
        hidden=tuple(args.hidden),
        prior_kwargs=prior_kwargs,
        likelihood_kwargs=args.likelihood_kwargs,
    )
    # Build the parts once now, so a typo in a name or a parameter fails before data is read.
    make_prior(mc.prior, mc.latent_dim, **mc.prior_kwargs)
    make_likelihood(mc.likelihood, **mc.likelihood_kwargs)
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


def _norm_spec(spec: str | None) -> str | None:
    return None if spec is None or spec.strip().lower() in ("", "none") else spec


def _corruption_specs(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(training corruption, evaluation corruption); ``none`` and absent both give None.

    The training corruption defaults to the model preset's (the DAE's ``dropout:0.5``); the
    evaluation corruption defaults to the training one.
    """
    train = args.corruption
    if train is None:
        train = MODEL_PRESETS[args.model].get("corruption")
    train = _norm_spec(train)
    evaluation = _norm_spec(args.eval_corruption) if args.eval_corruption is not None else train
    return train, evaluation


@torch.no_grad()
def _image_metrics(model: Any, x: torch.Tensor, eval_spec: str | None, seed: int) -> dict[str, Any]:
    """PSNR of clean reconstructions and, with ``eval_spec``, of reconstructions from x̃.

    x̃ comes from a generator seeded by ``seed`` alone, so every model run with the same seed is
    scored on the same corrupted images.
    """
    was_training = getattr(model, "training", False)
    model.eval()
    metrics: dict[str, Any] = {"psnr": reconstruction_psnr(model, x)}
    if eval_spec is not None:
        x_t = corrupt(x, make_corruption(eval_spec), seed=seed)
        metrics.update(
            {
                "eval_corruption": eval_spec,
                "corrupted_input_psnr": float(psnr(x_t.clamp(0, 1), x).mean()),
                "corrupted_reconstruction_mse": reconstruction_error(model, x, x_t),
                "corrupted_psnr": reconstruction_psnr(model, x, x_t),
            }
        )
    if was_training:
        model.train()
    return metrics


_NOTE_BOUND = "ELBO: a lower bound on log p(x)"
_NOTE_FLAT = "log p(x | f(x)) only: flat (improper) prior, point-mass guide; not a bound"
_NOTE_MAP = "log p(x | f(x)) + log p(f(x)) at the point-mass code (MAP objective); not a bound"


def _elbo_note(model: Any) -> str:
    """What the reported 'ELBO' means for this guide and prior."""
    if model.guide_family.has_density:
        return _NOTE_BOUND
    if isinstance(model.prior, Flat):
        return _NOTE_FLAT
    return _NOTE_MAP


@torch.no_grad()
def _extra_figures(
    model: Any, data: ImageData, out: Path, eval_spec: str | None, seed: int, n: int = 16
) -> list[Path]:
    """Denoising rows (with a corruption) and, for point-mass guides, samples of a GMM fitted
    to the training codes (an AE's flat prior cannot be sampled)."""
    from .latent import GMMDensity, encode_dataset, sample_images
    from .plots import save_grid, save_image_rows

    model.eval()
    paths = []
    x = data.test_x[:n]
    if eval_spec is not None:
        x_t = corrupt(x, make_corruption(eval_spec), seed=seed)
        paths.append(
            save_image_rows(
                [x, x_t.clamp(0, 1), model.reconstruct(x, x_t)],
                ["test images", "corrupted", "reconstructed"],
                out / "denoising.png",
                f"Reconstructions of corrupted test images ({eval_spec})",
            )
        )
    if not model.guide_family.has_density:
        codes = encode_dataset(model, data.train_x[:10_000])
        density = GMMDensity(min(10, codes.shape[0]), seed=seed).fit(codes)
        gen = torch.Generator(device=codes.device).manual_seed(seed)
        paths.append(
            save_grid(
                sample_images(model, density, 64, generator=gen),
                8,
                out / "latent_samples.png",
                "Decoded samples of a 10-component GMM fitted to the training codes",
            )
        )
    model.train()
    return paths


def _train_run(args: argparse.Namespace, data: ImageData | None = None) -> dict[str, Any]:
    """Train, evaluate and write one run folder; returns the metrics (what ``train`` does)."""
    mc, tc = _configs(args)
    train_spec, eval_spec = _corruption_specs(args)
    if args.resume and args.out is None:
        raise ValueError("--resume needs --out RUN_FOLDER (the run to continue)")
    out: Path = (
        args.out or Path("runs") / f"{args.model}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if args.out is None and out.exists():  # two runs started in the same second
        out = out.with_name(f"{out.name}-{os.getpid()}")
    ckpt = out / "checkpoint.pt"
    run_config = {
        "model": asdict(mc),
        "model_family": args.model,
        "corruption": train_spec,
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
        for key in ("dataset", "train_size", "test_size"):
            if saved.get(key) != run_config[key]:
                raise CheckpointError(
                    f"{ckpt} was trained with {key}={saved.get(key)!r}, not {run_config[key]!r};"
                    " pass the same data options to --resume it"
                )
        if saved.get("corruption", train_spec) != train_spec:
            raise CheckpointError(
                f"{ckpt} was trained with --corruption {saved.get('corruption')}; pass the same "
                "corruption to --resume it"
            )
    elif ckpt.exists():
        raise CheckpointError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(tc.device)
    print(f"ppl-vae: {args.model} on {args.dataset}, device {device}, run folder {out}")
    if data is None:
        data = load_dataset(args.dataset, args.data_root, device=device)
        data = data.subset(args.train_size or None, args.test_size or None)  # 0 = all
    model = build_model(mc, data.image_shape)
    n_params = sum(p.numel() for p in model.parameters())
    objective = resolve_objective(tc.objective, model, device).value
    print(
        f"model: {mc.net} encoder/decoder, latent {mc.latent_dim}, prior {mc.prior}, "
        f"likelihood {mc.likelihood}, guide {mc.guide}"
        + (f", corruption {train_spec}" if train_spec else "")
        + f"; {n_params:,} parameters; objective {objective}"
        + (" (auto)" if tc.objective == "auto" else "")
    )
    _write_json(out / "config.json", {**run_config, "train": asdict(tc)})
    # The corruption's own generator is seeded, so a fresh run is reproducible; on --resume fit
    # continues it from the state saved in the checkpoint (checkpoints written before ppl_vae
    # saved it, or on another kind of device, restart it from the seed).
    corruption = make_corruption(train_spec, seed=tc.seed) if train_spec else None
    t0 = time.perf_counter()
    history = fit(
        model,
        data.train_x,
        tc,
        test_x=data.test_x,
        corruption=corruption,
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
    metrics["elbo_note"] = _elbo_note(model)
    metrics.update(_image_metrics(model, data.test_x, eval_spec, tc.seed))
    metrics.update(
        {
            "dataset": args.dataset,
            "model_family": args.model,
            "corruption": train_spec,
            "num_parameters": n_params,
            "objective": objective,
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

        paths = save_run_figures(model, data.test_x, history, out)
        paths += _extra_figures(model, data, out, eval_spec, tc.seed)
        for path in paths:
            print(f"figure: {path}")
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    print(f"metrics: {out / 'metrics.json'}")
    return metrics


def train_command(args: argparse.Namespace) -> int:
    _train_run(args)
    return 0


class _ClippedPCA:
    """PCA whose reconstructions are clipped to [0, 1], the images' range (PCA's affine
    reconstructions leave it; clipping only brings them closer to the data)."""

    training = False

    def __init__(self, pca: Any) -> None:
        self.pca = pca

    def eval(self) -> None: ...

    def train(self) -> None: ...

    def reconstruct(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        return self.pca.reconstruct(x, x_in).clamp(0, 1)


def _pca_metrics(args: argparse.Namespace, data: ImageData, eval_spec: str | None) -> dict:
    """The PCA baseline's row: same latent size, reconstructions clipped to [0, 1]."""
    from .pca import PCA

    t0 = time.perf_counter()
    pca = PCA(args.latent_dim).fit(data.train_x)
    seconds = time.perf_counter() - t0
    clipped = _ClippedPCA(pca)
    return {
        "model_family": "pca",
        "reconstruction_mse": reconstruction_error(clipped, data.test_x),  # type: ignore[arg-type]
        "train_seconds_this_invocation": seconds,
        "explained_variance_ratio": float(pca.explained_variance_ratio.sum()),
        "elbo_note": "no likelihood: reconstruction metrics only",
        **_image_metrics(clipped, data.test_x, eval_spec, args.seed),
    }


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def compare_command(args: argparse.Namespace) -> int:
    """Train each of ``--models`` with the same options; write OUT/compare.{md,json}."""
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    known = [*MODEL_PRESETS, "pca"]
    for name in names:
        if name not in known:
            raise ValueError(f"unknown model {name!r} in --models; choose from {sorted(known)}")
    if not names:
        raise ValueError("--models is empty")
    out: Path = args.out or Path("runs") / (
        f"compare-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    eval_spec = _norm_spec(args.eval_corruption)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_root, device=device)
    data = data.subset(args.train_size or None, args.test_size or None)
    rows: list[dict[str, Any]] = []
    for name in names:
        if name == "pca":
            metrics = _pca_metrics(args, data, eval_spec)
            rows.append({"model": "pca", "guide": "—", "prior": "—", **metrics})
            continue
        run = argparse.Namespace(**vars(args))
        run.model = name
        run.corruption = args.dae_corruption if name == "dae" else "none"
        run.sparsity_lambda = args.sparsity_lambda if name == "sparse-ae" else None
        run.out = out / name
        run.resume = args.resume and (run.out / "checkpoint.pt").exists()
        metrics = _train_run(run, data)
        mc, _ = _configs(run)
        prior = mc.prior + (
            "(" + ", ".join(f"{k}={v:g}" for k, v in mc.prior_kwargs.items()) + ")"
            if mc.prior_kwargs
            else ""
        )
        rows.append({"model": name, "guide": mc.guide, "prior": prior, **metrics})
    settings = {
        "dataset": args.dataset,
        "train_images": int(data.train_x.shape[0]),
        "test_images": int(data.test_x.shape[0]),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "latent_dim": args.latent_dim,
        "net": args.net,
        "hidden": list(args.hidden),
        "likelihood": args.likelihood,
        "likelihood_kwargs": args.likelihood_kwargs,
        "eval_corruption": eval_spec,
        "seed": args.seed,
        "device": str(device),
    }
    table = [{k: v for k, v in r.items() if k != "history"} for r in rows]
    _write_json(out / "compare.json", {"settings": settings, "models": table})
    md = _compare_markdown(settings, table)
    (out / "compare.md").write_text(md)
    print(md)
    print(f"table: {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


def _compare_markdown(settings: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    ev = settings["eval_corruption"]
    lines = [
        f"# Model comparison on {settings['dataset']}",
        "",
        f"{settings['train_images']:,} training and {settings['test_images']:,} test images; "
        f"{settings['epochs']} epochs, batch {settings['batch_size']}, lr {settings['lr']:g}, "
        f"{settings['net']} net (hidden {settings['hidden']}), latent {settings['latent_dim']}, "
        f"{settings['likelihood']} likelihood, seed {settings['seed']}, {settings['device']}.",
        "",
        "| model | guide | prior | train corruption | test MSE | PSNR clean (dB) | "
        f"PSNR {ev or 'corrupted'} (dB) | ELBO (nats) | IS log p(x) (nats) | train s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        elbo = r.get("elbo")
        note = r.get("elbo_note", "")
        mark = {_NOTE_FLAT: " ¹", _NOTE_MAP: " ²"}.get(note, "")
        lines.append(
            f"| {r['model']} | {r['guide']} | {r['prior']} | {r.get('corruption') or '—'} | "
            f"{_fmt(r.get('reconstruction_mse'), '.5f')} | {_fmt(r.get('psnr'), '.2f')} | "
            f"{_fmt(r.get('corrupted_psnr'), '.2f')} | {_fmt(elbo, '.2f')}{mark} "
            f"| {_fmt(r.get('log_likelihood'), '.2f')} | "
            f"{_fmt(r.get('train_seconds_this_invocation'), '.1f')} |"
        )
    base = next((r.get("corrupted_input_psnr") for r in rows if "corrupted_input_psnr" in r), None)
    if base is not None:
        lines.append(f"| *corrupted input itself* | | | | | | {_fmt(base, '.2f')} | | | |")
    iw = next((r for r in rows if "log_likelihood" in r), None)
    lines += [
        "",
        "Test MSE is per pixel on clean test images; PSNR is the mean over test images of "
        "10·log10(1/MSE_i), for reconstructions of clean images and of corrupted ones (scored "
        "against the clean originals; every model sees the same corrupted images).",
        "",
        "¹ AE and DAE: a point-mass guide with a flat prior, so the 'ELBO' is log p(x | f(x)) "
        "alone — the prior is improper (log density 0) and a point mass has no entropy term: it "
        "is not a bound on log p(x), only comparable with the VAE's reconstruction term.",
        "² Sparse AE: log p(x | f(x)) + log Laplace(f(x); 0, b), the MAP objective at the "
        "code; again not a bound on log p(x).",
        "VAE: the ELBO (analytic KL) is a lower bound on log p(x); IS log p(x) is the "
        "importance-sampled estimate"
        + (
            f" with {iw['log_likelihood_samples']} samples on the first "
            f"{iw['log_likelihood_images']} test images."
            if iw
            else "."
        ),
        "PCA: same latent size, reconstructions clipped to [0, 1]; no likelihood.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors the user can act on print one clear line and exit with status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["benchmark"]:  # its own parser: ppl-vae benchmark --help
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return train_command(args)
        if args.command == "compare":
            return compare_command(args)
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


__all__ = ["COMPARE_MODELS", "MODEL_PRESETS", "build_parser", "compare_command", "main"]
