"""Command line: ``ppl-vae train | compare | evaluate | sample`` (also ``python -m ppl_vae``).

The CLI only parses: options become :class:`~ppl_vae.model.ModelConfig`,
:class:`~ppl_vae.train.TrainConfig` and :class:`~ppl_vae.run.RunConfig`, and the library does the
work (:func:`~ppl_vae.run.train_run`, :func:`~ppl_vae.compare.compare`,
:func:`~ppl_vae.run.evaluate_run`, :func:`~ppl_vae.run.sample_run`). ``--model`` picks a family
(AE, denoising AE, sparse AE, VAE, Gaussian-mixture VAE: one model/guide pair with different parts,
see :mod:`ppl_vae.model`); every other option means the same for all of them. Errors a user can act
on print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__, distributed
from .compare import COMPARE_MODELS, compare
from .corruptions import make_corruption
from .data import DatasetIntegrityError, DatasetNotFoundError
from .errors import CheckpointError, DataError, ProgramError, TrainingDivergedError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .literature import PROTOCOL
from .model import MODEL_PRESETS, ModelConfig, preset_config
from .nets import ACTIVATIONS, NETS
from .objectives import AUTO, OBJECTIVES
from .priors import PRIORS
from .run import RunConfig, evaluate_run, sample_run, train_run
from .tracking import TRACKERS
from .train import TrainConfig

__all__ = ["build_parser", "main"]


def _hidden(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip()) if s else ()


def _kv(s: str) -> dict[str, float | str]:
    """``a=1,b=identity`` → ``{"a": 1.0, "b": "identity"}`` (numbers where they parse)."""
    out: dict[str, float | str] = {}
    for item in filter(None, s.split(",")):
        k, _, v = item.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            out[k.strip()] = v.strip()
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
    t.add_argument(
        "--data",
        "--dataset",
        dest="dataset",
        default="mnist",
        help="a data set name (mnist, fashion-mnist, cifar10, kmnist, svhn, celeba, ...), a folder "
        "of images or a .npy/.npz/.pt/.csv file (default: mnist)",
    )
    t.add_argument("--image-size", type=int, default=None, help="resize images to this size")
    t.add_argument(
        "--data-root",
        default=None,
        help="data cache (default: $PPL_VAE_DATA or ~/.cache/ppl_vae/data)",
    )
    t.add_argument("--latent-dim", type=int, default=m.latent_dim)
    if not compare:  # compare takes guide and prior from each model's preset
        t.add_argument("--prior", choices=sorted(PRIORS), default=None)
        t.add_argument("--prior-kwargs", type=_kv, default={}, help="e.g. scale=0.5")
        t.add_argument("--guide", choices=sorted(GUIDES), default=None)
        t.add_argument("--guide-kwargs", type=_kv, default={}, help="e.g. rank=4 or num_flows=3")
    t.add_argument(
        "--likelihood",
        choices=sorted(LIKELIHOODS),
        default=None,
        help="default: from the data — bernoulli for images in [0, 1], gaussian with "
        "link=identity for tables and other data",
    )
    t.add_argument(
        "--likelihood-kwargs", type=_kv, default={}, help="e.g. variance=0.1 or link=identity"
    )
    t.add_argument("--net", choices=sorted(NETS), default=m.net)
    t.add_argument(
        "--activation", choices=sorted(ACTIVATIONS), default=m.activation, help="MLP nonlinearity"
    )
    t.add_argument(
        "--hidden", type=_hidden, default=m.hidden, help="MLP hidden sizes, e.g. 512,512"
    )
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
        choices=[AUTO, *OBJECTIVES],
        default=None,
        help="default: the model family's (iwae for iwae-5/iwae-50), else auto — TraceEnum_ELBO "
        "for enumerated latents, JitTrace_ELBO for the library's own models, else Trace_ELBO; "
        "iwae: the importance-weighted bound (--particles K)",
    )
    t.add_argument(
        "--particles", type=int, default=None, help="default: the model family's K, else 1"
    )
    t.add_argument("--beta", type=float, default=tc.beta, help="KL weight (beta-VAE)")
    t.add_argument("--warmup-epochs", type=float, default=tc.warmup_epochs, help="KL warm-up")
    t.add_argument("--binarize", action="store_true", help="dynamic binarization")
    t.add_argument(
        "--dequantize",
        choices=["auto", "on", "off"],
        default="auto",
        help="uniform dequantization (k + u)/256 of 8-bit images, in training and scoring; auto: "
        "on for continuous likelihoods (scores then also in bits/dim of the 8-bit data)",
    )
    t.add_argument(
        "--stream", action="store_true", help="read batches through a DataLoader (else: on device)"
    )
    t.add_argument("--workers", type=int, default=tc.num_workers, help="DataLoader workers")
    t.add_argument(
        "--precision",
        choices=["float32", "bf16"],
        default=tc.precision,
        help="bf16: bf16 autocast on CUDA (mixed precision)",
    )
    t.add_argument("--seed", type=int, default=tc.seed, help="fixes weights, batches and noise")
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
    t.add_argument(
        "--log",
        choices=TRACKERS,
        default=None,
        help="experiment tracking: TensorBoard event files in RUN/tensorboard/ (open them with "
        "tensorboard --logdir RUN)",
    )


def _add_protocol_options(t: argparse.ArgumentParser) -> None:
    t.add_argument(
        "--protocol",
        choices=[PROTOCOL],
        default=None,
        help="the literature's protocol: train on a fresh binarization of MNIST every epoch, "
        "score NLL by importance sampling on the fixed binarized test set (seed and md5 recorded)"
        ", with the ELBO and IWAE-5/-50 bounds",
    )
    t.add_argument(
        "--protocol-samples", type=int, default=5000, help="importance samples K for its NLL"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppl-vae", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"ppl_vae {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

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
    _add_protocol_options(t)

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
    c.add_argument("--out", type=Path, default=None, help="default: runs/compare-DATASET-TIMESTAMP")
    c.add_argument("--resume", action="store_true", help="continue the runs in OUT/MODEL")

    e = sub.add_parser("evaluate", help="reload a run's model and score it on its test set")
    e.add_argument("run", type=Path, help="a run folder written by ppl-vae train")
    e.add_argument("--iw-samples", type=int, default=1000)
    e.add_argument("--iw-images", type=int, default=None, help="default: all test images")
    e.add_argument("--data-root", default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true")
    _add_protocol_options(e)

    s = sub.add_parser("sample", help="reload a run's model and write a grid of samples")
    s.add_argument("run", type=Path, help="a run folder written by ppl-vae train")
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--draws", action="store_true", help="draws x ~ p(x|z) instead of means E[x|z]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--out", type=Path, default=None, help="PNG path (default: RUN/samples-SEED.png)"
    )
    s.add_argument("--device", default="auto")
    return p


def _configs(args: argparse.Namespace, family: str) -> tuple[ModelConfig, TrainConfig, RunConfig]:
    m_default = ModelConfig()
    base = ModelConfig(
        latent_dim=args.latent_dim,
        likelihood=args.likelihood or m_default.likelihood,
        net=args.net,
        hidden=tuple(args.hidden),
        activation=args.activation,
        prior_kwargs=dict(getattr(args, "prior_kwargs", None) or {}),
        likelihood_kwargs=args.likelihood_kwargs,
        guide_kwargs=dict(getattr(args, "guide_kwargs", None) or {}),
    )
    mc = preset_config(
        family,
        base,
        guide=getattr(args, "guide", None),
        prior=getattr(args, "prior", None),
        sparsity_lambda=args.sparsity_lambda if args.command == "train" else None,
    )
    # Build the parts now, so a typo in a name or a parameter fails before data is read.
    from .model import build_model

    build_model(mc, (1, 4, 4) if mc.net != "conv" else (1, 8, 8))
    preset = MODEL_PRESETS[family]
    protocol = getattr(args, "protocol", None)
    objective, particles = args.objective, args.particles
    if objective is None:  # the model family's own objective (the IWAE models'), else auto
        objective = preset.get("objective", AUTO)
        particles = preset.get("particles", 1) if particles is None else particles
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        objective=objective,
        num_particles=1 if particles is None else particles,
        beta=args.beta,
        warmup_epochs=args.warmup_epochs,
        binarize=args.binarize or protocol is not None,  # the protocol trains on fresh bits
        stream=args.stream,
        num_workers=args.workers,
        precision=args.precision,
        seed=args.seed,
        device=args.device,
    )
    tc.validate()
    rc = RunConfig(
        model_family=family,
        dataset=args.dataset,
        data_root=args.data_root,
        image_size=args.image_size,
        likelihood_from_data=args.likelihood is None,
        train_size=args.train_size or None,
        test_size=args.test_size or None,
        corruption=getattr(args, "corruption", None),
        eval_corruption=args.eval_corruption,
        iw_samples=args.iw_samples,
        iw_images=args.iw_images,
        figures=not args.no_figures,
        progress=not args.quiet,
        out=args.out,
        resume=args.resume,
        log=args.log,
        protocol=protocol,
        protocol_samples=getattr(args, "protocol_samples", 5000),
        dequantize=args.dequantize,
    )
    return mc, tc, rc


def _run(args: argparse.Namespace) -> None:
    if args.command == "train":
        # under torchrun: join the process group; each process trains on its own device
        args.device = distributed.init_from_env(args.device)
        try:
            train_run(*_configs(args, args.model))
        finally:
            distributed.shutdown()
    elif args.command == "compare":
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        mc, tc, rc = _configs(args, "vae")
        compare(
            models,
            mc,
            tc,
            rc,
            dae_corruption=args.dae_corruption,
            sparsity_lambda=args.sparsity_lambda,
        )
    elif args.command == "evaluate":
        metrics = evaluate_run(
            args.run,
            iw_samples=args.iw_samples,
            iw_images=args.iw_images,
            data_root=args.data_root,
            device=args.device,
            progress=not args.quiet,
            protocol=args.protocol,
            protocol_samples=args.protocol_samples,
        )
        print(json.dumps(metrics, indent=2))
        print(f"metrics: {args.run / 'evaluation.json'}")
    elif args.command == "sample":
        path = sample_run(
            args.run, args.n, out=args.out, mean=not args.draws, seed=args.seed, device=args.device
        )
        print(f"samples: {path}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors the user can act on print one clear line and exit with status 2."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        _run(args)
    except (
        DataError,
        CheckpointError,
        ProgramError,
        TrainingDivergedError,
        DatasetNotFoundError,
        DatasetIntegrityError,
        ValueError,
    ) as e:
        print(f"ppl-vae: error: {e}", file=sys.stderr)
        return 2
    return 0
