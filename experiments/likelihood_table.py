"""Density models against the literature: test NLL on dynamically binarized MNIST.

Trains the papers' models (:data:`ppl_vae.literature.MODELS`: VAE, IWAE k = 5 and 50, VampPrior,
IAF guide, Gaussian-mixture VAE) at one common budget of wall-clock minutes each, on Burda et
al.'s architecture (784-200-200-50 MLP, tanh), every epoch on a fresh binarization of the 60 000
training images, and scores them with the protocol of :mod:`ppl_vae.literature`: NLL by
importance sampling with K = 5000 on the fixed binarized test set (seed and md5 recorded), the
ELBO and the IWAE-5/-50 bounds. It writes one ``result.json`` per model and seed as soon as that
run finishes (so results can be committed as they come), and a table beside the published rows.

The budget is wall time: a short timed calibration (50 steps of the same model) gives the step
time, hence the number of epochs that fit the budget; the learning rate decays exponentially from
``--lr`` to ``--lr-end`` over those epochs (Adam, eps 1e-4 as Burda et al.).

    # the common budget, two seeds, two single-threaded runs side by side on 2 cores
    python experiments/likelihood_table.py --minutes 15 --seeds 0 --threads 1 &
    python experiments/likelihood_table.py --minutes 15 --seeds 1 --threads 1
    python experiments/likelihood_table.py --minutes 15 --table-only   # the table of both
    # long-run mode (GPU or unattended): more minutes, all test images, e.g.
    python experiments/likelihood_table.py --minutes 120 --device cuda --tag long
    # re-score finished runs (e.g. on a GPU: K = 5000 on all 10 000 images)
    python experiments/likelihood_table.py --minutes 15 --rescore --eval-images 10000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyro
import pyro.optim
import torch

from ppl_vae import (
    MODEL_PRESETS,
    ModelConfig,
    TrainConfig,
    build_model,
    fit,
    load_dataset,
    preset_config,
)
from ppl_vae.literature import (
    MODELS,
    PUBLISHED,
    TEST_BITS_MD5,
    TEST_BITS_SEED,
    binarize_fixed,
    density_report,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "likelihood_table"
#: Burda et al.'s one-stochastic-layer architecture.
ARCH = {"hidden": (200, 200), "latent_dim": 50, "activation": "tanh"}


def model_config(name: str) -> ModelConfig:
    """The model ``name`` of :data:`MODELS` on Burda et al.'s architecture (784-200-200-50; the
    nonlinearity and guide arguments the model names)."""
    m = MODELS[name]
    base = ModelConfig(**ARCH | {"activation": m.activation}, guide_kwargs=dict(m.guide_kwargs))
    return preset_config(m.family, base)


def architecture(name: str) -> str:
    """The row's network, in words."""
    m = MODELS[name]
    who = " (Burda et al.)" if m.activation == "tanh" else ""
    extra = "".join(f", {k}={v}" for k, v in m.guide_kwargs)
    return f"784-200-200-50 MLP, {m.activation}{who}{extra}"


def train_config(name: str, args: argparse.Namespace, epochs: int, seed: int) -> TrainConfig:
    preset = MODEL_PRESETS[MODELS[name].family]  # the IWAE models bring their objective
    return TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        objective=preset.get("objective", "auto"),
        num_particles=preset.get("particles", 1),
        binarize=True,  # a fresh binarization of the training images every epoch
        seed=seed,
        device=args.device,
    )


def make_optim(args: argparse.Namespace, epochs: int) -> pyro.optim.PyroOptim:
    """Adam, its rate decaying exponentially from lr to lr_end over the run (stepped per epoch)."""
    gamma = (args.lr_end / args.lr) ** (1.0 / max(1, epochs - 1))
    return pyro.optim.ExponentialLR(
        {
            "optimizer": torch.optim.Adam,
            "optim_args": {"lr": args.lr, "eps": 1e-4},
            "gamma": gamma,
        }
    )


def seconds_per_step(name: str, args: argparse.Namespace, train_x: torch.Tensor) -> float:
    """The marginal time of a training step: ``fit`` over 60 and over 10 batches of a throw-away
    copy of the model (after an untimed compile), the difference divided by 50 — so ``fit``'s
    fixed set-up cost does not count as training time."""
    steps = max(2, min(60, len(train_x) // args.batch_size))
    few = max(1, steps // 6)
    model = build_model(model_config(name), train_x.shape[1:], seed=12345)
    pyro.clear_param_store()
    cfg = train_config(name, args, 1, 12345)
    fit(model, train_x[: args.batch_size * few], cfg, progress=False)  # compile, warm up
    times = []
    for n in (few, steps):
        t0 = time.perf_counter()
        fit(model, train_x[: args.batch_size * n], cfg, progress=False)
        times.append(time.perf_counter() - t0)
    pyro.clear_param_store()
    return max(times[1] - times[0], 1e-6) / (steps - few)


def run_one(name: str, seed: int, args: argparse.Namespace, data: Any, bits: torch.Tensor) -> dict:
    folder = args.out / args.tag / f"{name}-s{seed}"
    result_path = folder / "result.json"
    if result_path.exists() and not args.rescore:
        print(f"{name} seed {seed}: done before ({result_path})")
        return json.loads(result_path.read_text())
    if args.rescore and not result_path.exists():
        print(f"{name} seed {seed}: not finished, nothing to rescore")
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    mc = model_config(name)
    weights = folder / "model.pt"
    if args.rescore:
        saved = json.loads(result_path.read_text())
        model = build_model(mc, data.train_x.shape[1:], seed=seed).to(args.device)
        model.load_state_dict(torch.load(weights, map_location=args.device, weights_only=True))
        train = saved["training"]
    else:
        plan_path = folder / "plan.json"  # an interrupted run resumes with its own plan
        settings = {"minutes": args.minutes, "max_epochs": args.max_epochs}
        settings |= {"batch_size": args.batch_size, "lr": args.lr, "lr_end": args.lr_end}
        if plan_path.exists():
            plan = json.loads(plan_path.read_text())
            step_s, epochs = plan["seconds_per_step"], plan["epochs"]
            if plan.get("settings", settings) != settings:
                raise SystemExit(
                    f"{folder} was started with {plan['settings']}, not {settings}: resume it "
                    "with those settings, or use another --tag"
                )
        else:
            steps_per_epoch = math.ceil(len(data.train_x) / args.batch_size)
            step_s = seconds_per_step(name, args, data.train_x)
            epochs = max(1, int(args.minutes * 60 / (step_s * steps_per_epoch)))
            if args.max_epochs:
                epochs = min(epochs, args.max_epochs)
            plan = {"seconds_per_step": step_s, "epochs": epochs, "settings": settings}
            plan_path.write_text(json.dumps(plan))
        print(f"{name} seed {seed}: {step_s * 1e3:.1f} ms/step → {epochs} epochs in the budget")
        model = build_model(mc, data.train_x.shape[1:], seed=seed)
        pyro.clear_param_store()
        t0 = time.perf_counter()
        history = fit(
            model,
            data.train_x,
            train_config(name, args, epochs, seed),
            optim=make_optim(args, epochs),
            test_x=bits[: args.monitor_images],
            checkpoint_path=folder / "checkpoint.pt",
            resume=(folder / "checkpoint.pt").exists(),
            progress=args.progress,
        )
        train = {
            "epochs": len(history.epoch),
            "train_seconds": sum(history.seconds),  # every epoch, also those before a resume
            "wall_seconds_this_invocation": time.perf_counter() - t0,
            "seconds_per_step_calibrated": step_s,
            "final_train_loss": history.train_loss[-1],
            "test_elbo_per_epoch_monitor": history.test_elbo,
            "objective": history.objective,
        }
        torch.save(model.state_dict(), weights)
    eval_bits = bits[: args.eval_images]
    report = density_report(
        model, eval_bits, num_samples=args.k, bounds=(5, 50), progress=args.progress
    )
    result = {
        "model": name,
        "seed": seed,
        "description": MODELS[name].note,
        "architecture": architecture(name),
        "model_config": asdict(mc),
        "objective": train_config(name, args, 1, seed).objective,
        "particles": train_config(name, args, 1, seed).num_particles,
        "budget_minutes": args.minutes,
        "batch_size": args.batch_size,
        "lr": f"{args.lr} → {args.lr_end} (exponential, per epoch)",
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "training": train,
        "test": report,
        "command": args.command,
    }
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{name} seed {seed}: NLL {report['nll']:.2f} (K={args.k}, {report['num_images']} images)"
        f", ELBO {report['elbo']:.2f}, IWAE-5 {report['iwae_5']:.2f}, "
        f"IWAE-50 {report['iwae_50']:.2f}; {train['epochs']} epochs, "
        f"{train['train_seconds'] / 60:.1f} min"
    )
    return result


def write_table(folder: Path) -> Path:
    """``table.md`` of every ``result.json`` under ``folder``, beside the published rows."""
    rows: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*/result.json")):
        r = json.loads(path.read_text())
        rows.setdefault(r["model"], []).append(r)
    best_paper = {m: min(v for _, mm, v, _ in PUBLISHED if mm == m) for _, m, _, _ in PUBLISHED}
    lines = [
        f"# Test NLL on dynamically binarized MNIST ({folder.name})",
        "",
        f"Fixed test binarization: seed {TEST_BITS_SEED}; md5 of all 10 000 test images' bits "
        f"{TEST_BITS_MD5} (rows marked * score a prefix of them, whose md5 is in result.json). "
        "NLL = −log p(x) by importance sampling; ELBO and IWAE-k bounds in nats per image "
        "(lower NLL is better; bounds are log-likelihoods, higher is better).",
        "",
        "| model | net | seed | NLL | ± s.e. | bits/dim | ELBO | IWAE-5 | IWAE-50 | ELBO gap"
        " | K / images | epochs | train min | device | paper (best) | gap to paper |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [m for m in MODELS if m in rows]:
        for r in sorted(rows[name], key=lambda r: r["seed"]):
            t, tr = r["test"], r["training"]
            paper = best_paper.get(name)
            gap = f"{t['nll'] - paper:+.2f}" if paper is not None else "–"
            net = r["model_config"]["activation"]
            lines.append(
                f"| {name} | {net}"
                f" | {r['seed']} | {t['nll']:.2f} | {t['nll_standard_error']:.2f} | "
                f"{t['nll_bits_per_dim']:.4f} | {t['elbo']:.2f} | {t['iwae_5']:.2f} | "
                f"{t['iwae_50']:.2f} | {-t['elbo'] - t['nll']:.2f} | "
                f"{t['nll_samples']} / {t['num_images']}"
                f"{'' if t['bits_md5'] == TEST_BITS_MD5 else '*'} | {tr['epochs']} | "
                f"{tr['train_seconds'] / 60:.1f} | {r['device']}, {r['threads']} thr | "
                f"{paper if paper is not None else '–'} | {gap} |"
            )
    lines += ["", "Published (dynamically binarized MNIST, test NLL in nats):", ""]
    lines += ["| source | model | NLL | setting | our best | gap |", "|---|---|---|---|---|---|"]
    for source, name, nll, setting in PUBLISHED:
        ours = [r["test"]["nll"] for r in rows.get(name, [])]
        best = min(ours) if ours else None
        lines.append(
            f"| {source} | {name} | {nll:.2f} | {setting} | "
            + (f"{best:.2f} | {best - nll:+.2f} |" if best is not None else "– | – |")
        )
    path = folder / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vae,iwae-5,iwae-50,vampprior,iaf")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model")
    p.add_argument("--max-epochs", type=int, default=0, help="cap the epochs (0: none)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-end", type=float, default=1e-4, help="the rate of the last epoch")
    p.add_argument("--k", type=int, default=5000, help="importance samples for the NLL")
    p.add_argument("--eval-images", type=int, default=10_000, help="first N test images")
    p.add_argument("--monitor-images", type=int, default=1000, help="per-epoch test ELBO on")
    p.add_argument("--train-size", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tag", default=None, help="results folder name (default: the budget)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--rescore", action="store_true", help="re-evaluate finished runs")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    args.command = "python experiments/likelihood_table.py " + " ".join(argv or os.sys.argv[1:])
    args.tag = args.tag or f"{args.minutes:g}min"
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    if not args.table_only:
        data = load_dataset("mnist", device=args.device, verbose=False)
        if args.train_size:
            data = data.subset(args.train_size, None)
        bits = binarize_fixed(data.test_x.cpu()).to(args.device)
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in args.models.split(","):
                run_one(name, seed, args, data, bits)
    print(f"table: {write_table(args.out / args.tag)}")


if __name__ == "__main__":
    main()
