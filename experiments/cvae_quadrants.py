"""Pyro's conditional VAE tutorial: MNIST quadrant completion, baseline NN vs CVAE.

Reproduces https://pyro.ai/examples/cvae.html (code: pyro-ppl/pyro, examples/cvae/) with
:mod:`ppl_vae.conditional`: for 1, 2 and 3 visible quadrants, train the baseline network (masked
BCE, Adam 1e-3), then the CVAE on top of it (SVI, Trace_ELBO, Adam 1e-3), both with early
stopping (patience 3, at most 50 epochs, validated on the test set as the tutorial does; use
``--holdout N`` to validate on the last N training images instead), and score the test set the
tutorial's way: the baseline's masked BCE and the CVAE's 10-particle negative ELBO per image,
means of batch-of-32 means. The CVAE's importance-sampled −log p(y | x) (K = ``--is-samples``,
recognition net as proposal) is reported beside it. Writes ``result.json``, ``table.md`` (beside
the tutorial's table) and one figure per setting (``cvae_q{n}.png``: inputs, truth, baseline,
CVAE samples) into ``--out``.

    python experiments/cvae_quadrants.py --threads 1                  # the tutorial's budget
    python experiments/cvae_quadrants.py --epochs 1 --threads 1       # one epoch per network
    python experiments/cvae_quadrants.py --minutes 5 --threads 1      # 5 min per network
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch

import ppl_vae
from ppl_vae import load_dataset
from ppl_vae.conditional import (
    CVAE,
    MASKED,
    VISIBLE_QUADRANTS,
    BaselineNet,
    ConditionalTrainConfig,
    complete,
    importance_nll,
    split_quadrants,
    train_baseline,
    train_cvae,
    tutorial_nll,
)
from ppl_vae.plots import save_image_rows

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (
    "Pyro tutorial 'Conditional Variational Auto-encoder', https://pyro.ai/examples/cvae.html "
    "(tutorial/source/cvae.ipynb, section 'Evaluating the results'; code examples/cvae/, "
    "pyro-ppl/pyro@ff6ae1c)"
)
#: Grey level that shows the hidden quadrants of an input in figures (the tutorial shows white,
#: which merges with the white frame between images).
HIDDEN_GREY = 0.35
#: The tutorial's table: negative conditional log-likelihood per test image (lower is better).
TUTORIAL = {
    "baseline": {1: 100.4, 2: 61.9, 3: 25.4},
    "cvae": {1: 71.8, 2: 51.0, 3: 24.2},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quadrants", default="1,2,3", help="visible quadrants to run (1, 2, 3)")
    p.add_argument("--epochs", type=int, default=50, help="epoch cap per network (tutorial: 50)")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience (0: off)")
    p.add_argument(
        "--minutes", type=float, default=0.0, help="wall-clock budget per network (0: none)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--train-size", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--test-size", type=int, default=0, help="first N test images (0: all)")
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="validate on the last N training images (0: on the test set, as the tutorial)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=200)
    p.add_argument("--hidden", default="500,500", help="hidden layer sizes of every network")
    p.add_argument("--particles", type=int, default=10, help="the tutorial metric's particles")
    p.add_argument("--is-samples", type=int, default=100, help="K of the IS estimate (0: skip)")
    p.add_argument("--images", type=int, default=10, help="test images in each figure")
    p.add_argument("--samples", type=int, default=5, help="CVAE samples per image in figures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-weights", action="store_true", help="write the networks' weights")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "cvae")
    args = p.parse_args(argv)
    try:
        args.quadrant_list = [int(q) for q in args.quadrants.split(",")]
        args.hidden_sizes = tuple(int(h) for h in args.hidden.split(","))
    except ValueError:
        p.error("--quadrants and --hidden take comma-separated integers")
    if any(q not in VISIBLE_QUADRANTS for q in args.quadrant_list):
        p.error(f"--quadrants must be among 1, 2, 3; got {args.quadrants}")
    for name in ("train_size", "test_size", "holdout", "is_samples"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.epochs < 1 or args.threads < 1 or args.images < 1 or args.samples < 1:
        p.error("--epochs, --threads, --images and --samples must be >= 1")
    if args.minutes < 0:
        p.error("--minutes must be >= 0")
    words = sys.argv[1:] if argv is None else argv
    args.command = "python experiments/cvae_quadrants.py " + shlex.join(words)
    return args


def save_figure(
    baseline: BaselineNet, cvae: CVAE, images: torch.Tensor, num_visible: int, args: Any
) -> Path:
    """The tutorial's figure: inputs (hidden quadrants grey), truth, baseline, CVAE samples.

    Completions keep the visible pixels of the input, as the tutorial's figure does."""
    xs, _ = split_quadrants(images, num_visible)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        samples = cvae.sample_completions(xs, args.samples)
    rows = [xs.masked_fill(xs == MASKED, HIDDEN_GREY), images, complete(xs, baseline.predict(xs))]
    rows += list(samples)
    labels = ["inputs\n(grey: hidden)", "truth", "NN"] + [
        f"CVAE {i + 1}" for i in range(args.samples)
    ]
    s = "" if num_visible == 1 else "s"
    title = f"{num_visible} quadrant{s} visible: baseline prediction and CVAE samples"
    return save_image_rows(rows, labels, args.out / f"cvae_q{num_visible}.png", title)


def run_setting(num_visible: int, data: Any, val_x: torch.Tensor, args: Any) -> dict[str, Any]:
    """Train and score the baseline and the CVAE for one number of visible quadrants."""
    s = "" if num_visible == 1 else "s"
    print(f"== {num_visible} quadrant{s} visible", flush=True)
    config = ConditionalTrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_seconds=args.minutes * 60 or None,
        progress=not args.quiet,
    )
    shape = data.train_x.shape[1:]
    baseline = BaselineNet(shape, args.hidden_sizes, seed=args.seed)
    base_log = train_baseline(baseline, data.train_x, num_visible, config, val_x)
    # the CVAE's networks are seeded apart from the baseline's (same first-layer shape)
    cvae = CVAE(baseline, args.z_dim, args.hidden_sizes, seed=args.seed + 1)
    cvae_log = train_cvae(cvae, data.train_x, num_visible, config, val_x)

    t0 = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    nll = tutorial_nll(baseline, cvae, data.test_x, num_visible, num_particles=args.particles)
    is_nll = None
    if args.is_samples:
        pyro.set_rng_seed(args.seed)
        is_nll = float(
            importance_nll(cvae, data.test_x, num_visible, num_samples=args.is_samples).mean()
        )
    eval_seconds = time.perf_counter() - t0
    figure = save_figure(baseline, cvae, data.test_x[: args.images], num_visible, args)
    if args.save_weights:
        torch.save(baseline.state_dict(), args.out / f"baseline_q{num_visible}.pt")
        torch.save(cvae.trainable.state_dict(), args.out / f"cvae_q{num_visible}.pt")
    print(
        f"   test NLL ({data.test_x.shape[0]} images): baseline {nll['baseline']:.2f} "
        f"(tutorial {TUTORIAL['baseline'][num_visible]}), CVAE −ELBO {nll['cvae']:.2f} "
        f"(tutorial {TUTORIAL['cvae'][num_visible]})"
        + (f", CVAE IS (K={args.is_samples}) {is_nll:.2f}" if is_nll is not None else ""),
        flush=True,
    )

    def training(log: Any) -> dict[str, Any]:
        return {
            "epochs": len(log.epoch),
            "best_epoch": log.best_epoch,
            "stopped_by": log.stopped_by,
            "train_seconds": sum(log.seconds),
            "seconds_per_epoch": sum(log.seconds) / max(1, len(log.seconds)),
            "log": log.to_dict(),
        }

    return {
        "visible_quadrants": list(VISIBLE_QUADRANTS[num_visible]),
        "baseline": {
            "nll_tutorial": nll["baseline"],
            "nll_per_image_mean": nll["baseline_per_image"],
            "tutorial": TUTORIAL["baseline"][num_visible],
            "training": training(base_log),
        },
        "cvae": {
            "nll_tutorial": nll["cvae"],
            "nll_tutorial_means": "negative ELBO (recognition net as guide), "
            f"{args.particles} particles: an upper bound on -log p(y|x)",
            "nll_importance_sampled": is_nll,
            "is_samples": args.is_samples,
            "tutorial": TUTORIAL["cvae"][num_visible],
            "training": training(cvae_log),
        },
        "eval_seconds": eval_seconds,
        "figure": figure.name,
    }


def write_table(result: dict[str, Any], path: Path) -> Path:
    """``table.md``: our numbers under the tutorial's, per number of visible quadrants."""
    qs = [int(q) for q in result["results"]]
    res = result["results"]
    k = result["settings"]["is_samples"]

    def row(label: str, values: list[Any]) -> str:
        cells = [v if isinstance(v, str) else "–" if v is None else f"{v:.1f}" for v in values]
        return f"| {label} | " + " | ".join(cells) + " |"

    def ours(model: str, key: str) -> list[Any]:
        return [res[str(q)][model][key] for q in qs]

    def tut(model: str) -> list[float]:
        return [TUTORIAL[model][q] for q in qs]

    def gap(a: list[Any], b: list[Any]) -> list[Any]:
        return [None if x is None or y is None else x - y for x, y in zip(a, b)]

    s = result["settings"]
    lines = [
        "# CVAE quadrant completion on MNIST: negative conditional log-likelihood per test image",
        "",
        f"Tutorial: {SOURCE}. Lower is better; nats per image, the Bernoulli cross-entropy of "
        "the hidden pixels' grey levels (not a normalised density). 'Tutorial metric' is "
        "util.py's `generate_table`: the baseline's masked BCE (its exact −log p(y|x)) and the "
        f"CVAE's {s['particles']}-particle **negative ELBO** (an upper bound on −log p(y|x)), "
        "means of batch-of-32 means over the test set.",
        "",
        "| | " + " | ".join(f"{q} quadrant{'s' if q > 1 else ''}" for q in qs) + " |",
        "|---|" + "---|" * len(qs),
        row("NN (baseline), tutorial", tut("baseline")),
        row("NN (baseline), ours", ours("baseline", "nll_tutorial")),
        row("CVAE (Monte Carlo), tutorial", tut("cvae")),
        row("CVAE, ours, tutorial metric (−ELBO)", ours("cvae", "nll_tutorial")),
        row(
            f"CVAE, ours, importance-sampled −log p(y|x), K={k}",
            ours("cvae", "nll_importance_sampled"),
        ),
        row("performance gap (NN − CVAE), tutorial", gap(tut("baseline"), tut("cvae"))),
        row(
            "performance gap, ours (tutorial metric)",
            gap(ours("baseline", "nll_tutorial"), ours("cvae", "nll_tutorial")),
        ),
        row(
            "epochs run (best) NN / CVAE",
            [
                f"{r['baseline']['training']['epochs']} ({r['baseline']['training']['best_epoch']})"
                f" / {r['cvae']['training']['epochs']} ({r['cvae']['training']['best_epoch']})"
                for r in (res[str(q)] for q in qs)
            ],
        ),
        row(
            "seconds per epoch NN / CVAE",
            [
                f"{r['baseline']['training']['seconds_per_epoch']:.1f} / "
                f"{r['cvae']['training']['seconds_per_epoch']:.1f}"
                for r in (res[str(q)] for q in qs)
            ],
        ),
        "",
        f"Budget: at most {s['epochs']} epochs per network, early-stopping patience "
        f"{s['patience']}, {s['minutes'] or 'no'} minutes' cap per network; "
        f"{s['train_images']} training images, {s['test_images']} test images, validation on "
        f"{s['validation']}; seed {s['seed']}; {result['threads']} thread(s) on "
        f"{result['device']}; {result['wall_seconds'] / 60:.1f} min in all. The tutorial trained "
        "up to 50 epochs with patience 3 on the full data set, validating on the test set.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    lines += [f"![{q} quadrant(s)]({res[str(q)]['figure']})" for q in qs]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist", device=args.device, verbose=False)
    n_train = args.train_size or data.train_x.shape[0]
    data = data.subset(n_train, args.test_size or None)
    if args.holdout:
        if args.holdout >= data.train_x.shape[0]:
            raise SystemExit(f"--holdout {args.holdout} leaves no training images")
        val_x = data.train_x[-args.holdout :]
        data = data.subset(data.train_x.shape[0] - args.holdout, None)
        validation = f"the last {args.holdout} training images (held out)"
    else:
        val_x = data.test_x
        validation = "the test set (as the tutorial)"
    results: dict[str, Any] = {}
    for q in args.quadrant_list:  # written after every setting: a stopped run keeps the others
        results[str(q)] = run_setting(q, data, val_x, args)
        result = _record(args, data, validation, results, t0)
        (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        table = write_table(result, args.out / "table.md")
    print(f"wrote {args.out / 'result.json'} and {table}", flush=True)
    return result


def _record(
    args: argparse.Namespace, data: Any, validation: str, results: dict[str, Any], t0: float
) -> dict[str, Any]:
    """The run's ``result.json``: settings, the results so far, versions, the command."""
    return {
        "title": "CVAE quadrant completion on MNIST (Pyro tutorial reproduction)",
        "tutorial": {"source": SOURCE, "table": TUTORIAL},
        "metric": (
            "negative conditional log-likelihood per test image, nats (Bernoulli cross-entropy "
            "of grey levels of the hidden pixels); tutorial metric = util.generate_table: "
            "baseline masked BCE, CVAE Trace_ELBO(num_particles) loss, mean of batch-of-32 means"
        ),
        "settings": {
            "quadrants": args.quadrant_list,
            "epochs": args.epochs,
            "patience": args.patience,
            "minutes": args.minutes,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "z_dim": args.z_dim,
            "hidden": list(args.hidden_sizes),
            "particles": args.particles,
            "is_samples": args.is_samples,
            "train_images": data.train_x.shape[0],
            "test_images": data.test_x.shape[0],
            "validation": validation,
            "pixels": "grey levels in [0, 1] (bytes / 255), not binarized",
        },
        "results": results,
        "complete": len(results) == len(args.quadrant_list),
        "wall_seconds": time.perf_counter() - t0,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "command": args.command,
        "versions": {
            "ppl_vae": ppl_vae.__version__,
            "torch": torch.__version__,
            "pyro": pyro.__version__,
            "python": platform.python_version(),
        },
    }


if __name__ == "__main__":
    main()
