"""Semi-supervised VAE M2 on MNIST beside Pyro's published test accuracies.

Trains :class:`ppl_vae.semisupervised.SSVAE` (Kingma et al. 2014, model M2, as Pyro's example
``examples/vae/ss_vae_M2.py``: enumeration of the label plus the auxiliary loss with α' = 46) on
MNIST with ``--sup-num`` labelled training images (balanced across classes, drawn with the
seed), the last 10 000 training images held out for validation, and the rest unlabelled. Grey
levels in [0, 1] are scored with the Bernoulli cross-entropy, as in Pyro's example.

Each run writes ``<out>/sup<N>-s<seed>/result.json`` as soon as it finishes (test accuracy at the
end and at the epoch of best validation accuracy, the per-epoch validation and test accuracies and
losses, epochs, times, settings, the command, torch/Pyro versions), and ``<out>/table.md`` sets
every finished run beside Pyro's published table. A checkpoint after every epoch makes an
interrupted run resume where it stopped (same settings required); a finished run is not redone.

    python experiments/ss_vae.py --sup-num 3000 --epochs 50 --threads 1   # Pyro's recipe
    python experiments/ss_vae.py --sup-num 100 --schedule joint --aux-loss-multiplier 46000 \
        --epochs 50 --threads 1 --out results/ssvae/joint-alpha46000
    python experiments/ss_vae.py --sup-num 100 --minutes 60 --seed 1
    python experiments/ss_vae.py --sup-num 100 --features m1 --m1-epochs 100 --schedule joint \
        --aux-loss-multiplier 460 --epochs 50 --threads 1 --out results/ssvae/m1m2   # M1+M2
    python experiments/ss_vae.py --table-only

``--schedule pyro`` (default) is Pyro's: a labelled batch every N / sup_num batches. With 100
labels it lets the decoder stop using y; ``--schedule joint`` puts a labelled batch in every step
and keeps it (see :mod:`ppl_vae.semisupervised`). Each result also records whether the decoder
uses the label (:func:`label_check`).

``--features m1`` is Kingma et al.'s stacked M1+M2: an unsupervised VAE (M1, 784-600-600-50)
is trained first on the training images (no labels; kept in ``<out>/m1-e<E>-s<seed>/``, shared by
every draw of the labels) and M2 reads the posterior means of its active units instead of pixels;
with ``--m1-inputs sample`` M2 trains on a fresh draw z1 ~ q(z1 | x) per batch, as Kingma et al. do.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from ppl_vae import (
    DataError,
    ModelConfig,
    TrainConfig,
    build_model,
    fit,
    load_dataset,
    load_model,
)
from ppl_vae.latent import encode_dataset, posterior_moments
from ppl_vae.likelihoods import GaussianLearnedVariance
from ppl_vae.semisupervised import (
    M1_CONFIG,
    M1_CONV_CONFIG,
    OUTPUT_INITS,
    PYRO_EXAMPLE,
    PYRO_PUBLISHED,
    SCHEDULES,
    SSVAE,
    SSTrainConfig,
    accuracy,
    active_units,
    fit_ssvae,
    label_elbos,
    load_trained,
    split_labelled,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (
    'Pyro tutorial "The Semi-Supervised VAE", Table 1, third variant (enumeration + auxiliary '
    "loss), mean (95% CI) over five random draws of the labelled images: "
    "https://pyro.ai/examples/ss-vae.html (pyro-ppl/pyro, tutorial/source/ss-vae.ipynb)"
)


def settings(args: argparse.Namespace, sup_num: int) -> dict[str, Any]:
    """Everything that determines a run (a resumed run must match it)."""
    return {
        "sup_num": sup_num,
        "seed": args.seed,
        "epochs": args.epochs,
        "minutes": args.minutes,
        "schedule": args.schedule,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "beta1": args.beta1,
        "aux_loss_multiplier": args.aux_loss_multiplier,
        "z_dim": args.z_dim,
        "hidden": list(args.hidden),
        "validation_num": args.validation_num,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "device": args.device,
        # M1+M2 only (older results, all on pixels, have no such keys)
        **(
            {
                "features": "m1",
                "m1_epochs": args.m1_epochs,
                "m1_seed": args.m1_seed,
                "m1_active_threshold": args.m1_active_threshold,
            }
            if args.features == "m1"
            else {}
        ),
        # M1's networks, when not the MLP (older M1+M2 results: the MLP, no such key)
        **({"m1_net": args.m1_net} if args.features == "m1" and args.m1_net != "mlp" else {}),
        # M2 on fresh draws of M1's codes (older M1+M2 results read the means: no such key)
        **({"m1_inputs": "sample"} if args.features == "m1" and args.m1_inputs == "sample" else {}),
        # labelled images per joint step, when set (older results took min(batch, labelled))
        **({"sup_batch_size": args.sup_batch_size} if args.sup_batch_size is not None else {}),
        # output layers' initial weights, when not the default (older results: "normal")
        **({"output_init": args.output_init} if args.output_init != "normal" else {}),
    }


#: Settings that only say how long to train: a run may be continued with other values.
BUDGET = ("epochs", "minutes")


def _identity(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k not in BUDGET}


def build_m2(args: argparse.Namespace, inputs: Inputs) -> SSVAE:
    """M2 with the command line's sizes, its initial weights drawn from ``--seed``: on pixels
    with Pyro's Bernoulli likelihood, on M1 codes with a Gaussian of learned variance."""
    return SSVAE(
        tuple(inputs.train_x.shape[1:]),
        z_dim=args.z_dim,
        hidden=args.hidden,
        aux_loss_multiplier=args.aux_loss_multiplier,
        seed=args.seed,
        likelihood=GaussianLearnedVariance(link="identity") if args.features == "m1" else None,
        output_init=args.output_init,
    )


@dataclass
class Inputs:
    """What M2 sees: the training and test inputs (images, or M1's codes) and their labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    likelihood: str
    m1: dict[str, Any] | None = None
    train_scale: torch.Tensor | None = None  # M1's posterior standard deviations (--m1-inputs)


def prepare_inputs(args: argparse.Namespace, data: Any) -> Inputs:
    """The images themselves (``--features pixels``), or the codes of M1 (``--features m1``)."""
    train_x, train_y = data.train_x, data.train_y
    if args.n_train:
        train_x, train_y = train_x[: args.n_train], train_y[: args.n_train]
    test_x, test_y = data.test_x, data.test_y
    if args.n_test:
        test_x, test_y = test_x[: args.n_test], test_y[: args.n_test]
    if args.features == "pixels":
        return Inputs(
            train_x,
            train_y,
            test_x,
            test_y,
            "Bernoulli cross-entropy on grey levels in [0, 1] (not binarised)",
        )
    codes, m1 = m1_codes(args, train_x, test_x)
    sample = args.m1_inputs == "sample"
    return Inputs(
        codes["train"],
        train_y,
        codes["test"],
        test_y,
        "Gaussian with learned variance on the active units of M1's "
        + ("codes, a fresh draw z1 ~ q(z1 | x) per batch" if sample else "posterior means"),
        m1,
        codes["train_scale"] if sample else None,
    )


def m1_codes(
    args: argparse.Namespace, train_x: torch.Tensor, test_x: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train (or reload) M1, the unsupervised VAE of Kingma et al.'s stacked M1+M2, on the
    training images outside the validation set (no labels), and encode every image.

    M1 is :data:`~ppl_vae.semisupervised.M1_CONFIG` (784-600-600-50 softplus, Bernoulli on grey
    levels; ``--m1-net conv``: :data:`~ppl_vae.semisupervised.M1_CONV_CONFIG`), Adam lr 1e-3,
    batch 100, ``--m1-epochs`` epochs, seeded by ``--m1-seed`` (so the draws of the labels,
    ``--seed``, share one M1); it is trained once per (network, epochs, seed, training images)
    and kept in ``<out>/m1-[conv-]e<E>-s<m1 seed>[-n<N>-v<V>]/``, resumable.
    The codes are q's means on the units M1 uses (:func:`active_units`); ``train_scale`` holds
    q's standard deviations of the training images on those units.
    """
    net = "" if args.m1_net == "mlp" else f"{args.m1_net}-"
    tag = f"m1-{net}e{args.m1_epochs}-s{args.m1_seed}"
    if args.n_train or args.validation_num != PYRO_EXAMPLE["validation_num"]:
        tag += f"-n{args.n_train}-v{args.validation_num}"  # M1 saw other images
    folder = args.out / tag
    folder.mkdir(parents=True, exist_ok=True)
    ckpt, info_path = folder / "checkpoint.pt", folder / "m1.json"
    fit_x = train_x[: train_x.shape[0] - args.validation_num]
    config = ModelConfig(**(M1_CONFIG if args.m1_net == "mlp" else M1_CONV_CONFIG))
    if info_path.exists() and ckpt.exists():  # a fresh clone has m1.json, not the weights
        vae = load_model(ckpt, device=args.device)
        info = json.loads(info_path.read_text())
    else:
        vae = build_model(config, tuple(train_x.shape[1:]), seed=args.m1_seed)
        pyro.clear_param_store()
        print(f"M1: {config} on {fit_x.shape[0]} training images, {args.m1_epochs} epochs")
        history = fit(
            vae,
            fit_x,
            TrainConfig(
                epochs=args.m1_epochs,
                batch_size=100,
                lr=1e-3,
                seed=args.m1_seed,
                device=args.device,
            ),
            test_x=test_x,
            checkpoint_path=ckpt,
            resume=ckpt.exists(),
        )
        info = {
            "model": asdict(config),
            "epochs": args.m1_epochs,
            "seed": args.m1_seed,
            "images": fit_x.shape[0],
            "test_elbo_per_epoch": history.test_elbo,
            "train_seconds": sum(history.seconds),
        }
    train_loc, train_scale = posterior_moments(vae, train_x)
    codes = {"train": train_loc, "train_scale": train_scale, "test": encode_dataset(vae, test_x)}
    active = active_units(codes["train"][: fit_x.shape[0]], args.m1_active_threshold)
    info["active_units"] = int(active.sum())
    info["active_threshold"] = args.m1_active_threshold
    _write_json(info_path, info)
    print(f"M1: {info['active_units']} of {active.numel()} units active; M2 reads those")
    return {k: v[:, active].contiguous() for k, v in codes.items()}, info


def run_one(
    sup_num: int, args: argparse.Namespace, get_inputs: Callable[[], Inputs]
) -> dict[str, Any]:
    """Train (or continue, or only report) one run; ``get_inputs`` builds M2's inputs when a
    run needs them (a finished run does not: M1 is not retrained to report it)."""
    folder = args.out / f"sup{sup_num}-s{args.seed}"
    result_path, plan_path = folder / "result.json", folder / "settings.json"
    ckpt = folder / "checkpoint.pt"
    want = settings(args, sup_num)
    for path in (result_path, plan_path):
        if path.exists():
            before = json.loads(path.read_text())
            before = before.get("settings", before)
            if _identity(before) != _identity(want):
                raise SystemExit(
                    f"{folder} was run with {before}, not {want}: continue it with those "
                    "settings (only --epochs and --minutes may change), or choose another --out"
                )
    if result_path.exists():
        done = json.loads(result_path.read_text())
        if done["settings"] == want or not ckpt.exists():
            print(f"sup_num {sup_num} seed {args.seed}: done before ({result_path})")
            if "label_check" not in done and ckpt.exists():  # a result of an older script
                inputs = get_inputs()
                model = load_trained(ckpt, build_m2(args, inputs))
                done["label_check"] = label_check(model, inputs.test_x, inputs.test_y)
                _write_json(result_path, done)
            return done
        # a longer budget continues the finished run; its earlier result is kept beside it
        result_path.replace(folder / f"result-{done['epochs']}epochs.json")
    folder.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(want, indent=2) + "\n")

    inputs = get_inputs()
    test_x, test_y = inputs.test_x, inputs.test_y
    split = split_labelled(
        inputs.train_x,
        inputs.train_y,
        sup_num,
        validation_num=args.validation_num,
        seed=args.seed,
        scale=inputs.train_scale,
    )
    model = build_m2(args, inputs)
    config = SSTrainConfig(
        epochs=args.epochs,
        schedule=args.schedule,
        batch_size=args.batch_size,
        sup_batch_size=args.sup_batch_size,
        lr=args.lr,
        beta1=args.beta1,
        seed=args.seed,
        max_seconds=None if args.minutes is None else args.minutes * 60,
    )
    resume = ckpt.exists()
    print(
        f"sup_num {sup_num} seed {args.seed}: {split.sup_x.shape[0]} labelled, "
        f"{split.unsup_x.shape[0]} unlabelled, {split.valid_x.shape[0]} validation, "
        f"{test_x.shape[0]} test images" + ("; resuming" if resume else ""),
        flush=True,
    )
    pyro.clear_param_store()
    t0 = time.perf_counter()
    history = fit_ssvae(
        model, split, config, test=(test_x, test_y), checkpoint_path=ckpt, resume=resume
    )
    wall = time.perf_counter() - t0
    best = history.best()
    final_test = accuracy(model, test_x, test_y) if history.epoch else float("nan")
    result = {
        "sup_num": sup_num,
        "seed": args.seed,
        "test_accuracy": final_test,
        "test_accuracy_at_best_valid": None if best is None else history.test_accuracy[best],
        "best_valid_accuracy": None if best is None else history.valid_accuracy[best],
        "best_epoch": None if best is None else history.epoch[best],
        "epochs": len(history.epoch),
        "valid_accuracy_per_epoch": history.valid_accuracy,
        "test_accuracy_per_epoch": history.test_accuracy,
        "loss_per_epoch": {
            "labelled": history.sup_loss,
            "unlabelled": history.unsup_loss,
            "aux": history.aux_loss,
            "objective": history.objective,
        },
        "seconds_per_epoch": history.seconds,
        "train_seconds": sum(history.seconds),  # every epoch, also those before a resume
        "wall_seconds_this_invocation": wall,
        "num_images": {
            "labelled": split.sup_x.shape[0],
            "unlabelled": split.unsup_x.shape[0],
            "validation": split.valid_x.shape[0],
            "test": test_x.shape[0],
        },
        "label_check": label_check(model, test_x, test_y),
        "labelled_index_md5": hashlib.md5(split.sup_index.numpy().tobytes()).hexdigest(),
        "likelihood": inputs.likelihood,
        "m1": inputs.m1,
        "settings": want,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "command": args.command,
    }
    _write_json(result_path, result)
    print(
        f"sup_num {sup_num} seed {args.seed}: test accuracy {final_test:.4f} after "
        f"{result['epochs']} epochs ({result['train_seconds'] / 60:.1f} min); "
        f"best validation {result['best_valid_accuracy']} at epoch {result['best_epoch']}",
        flush=True,
    )
    return result


def _write_json(path: Path, blob: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(blob, indent=2) + "\n")
    tmp.replace(path)


#: Test images and draws of z per label for :func:`label_check`.
CHECK_IMAGES, CHECK_SAMPLES = 2000, 8


def label_check(model: SSVAE, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Does the decoder use the label? On the first test images: the accuracy of the generative
    model's own classifier argmax_y L(x, y) (:func:`label_elbos`) beside q(y|x)'s, and the
    median spread max_y L - min_y L in nats (near 0: the label channel has collapsed and the
    unlabelled images cannot teach q(y|x))."""
    model.eval()
    x, y = x[:CHECK_IMAGES], y[:CHECK_IMAGES]
    elbos = label_elbos(model, x, CHECK_SAMPLES)
    spread = elbos.max(-1).values - elbos.min(-1).values
    generative, q = elbos.argmax(-1), model.predict(x)
    return {
        "images": x.shape[0],
        "samples_per_label": CHECK_SAMPLES,
        "generative_accuracy": float((generative == y).float().mean()),
        "q_accuracy": float((q == y).float().mean()),
        "median_elbo_spread_over_labels": float(spread.median()),
        "agreement_q_and_generative": float((generative == q).float().mean()),
    }


def _check_text(c: dict[str, Any] | None) -> str:
    """A result's label check as the table shows it: generative accuracy / spread."""
    if not c:
        return "–"
    return f"{c['generative_accuracy']:.3f} / {c['median_elbo_spread_over_labels']:.1f}"


def _draw_means(results: list[dict[str, Any]]) -> list[str]:
    """Lines giving, for every recipe run on two or more draws of the labelled images (runs
    whose settings and M1 differ only in ``--seed``), the mean test accuracy over the draws with
    its 95% half-width 1.96·s/√n — the form of Pyro's table (five draws there). Runs on another
    M1 (a wrapper's, named by ``m1["label"]``) are another recipe, and a seed counts once: a
    second run of the same seed (another folder) is the same draw, not another."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        key = {k: v for k, v in _identity(r["settings"]).items() if k != "seed"}
        key["m1_label"] = (r.get("m1") or {}).get("label")
        runs = groups.setdefault(json.dumps(key, sort_keys=True), [])
        if all(run["seed"] != r["seed"] for run in runs):
            runs.append(r)
    lines = []
    for runs in groups.values():
        if len(runs) < 2:
            continue
        r0 = runs[0]
        parts = []
        for label, field in (
            ("last epoch", "test_accuracy"),
            ("best validation epoch", "test_accuracy_at_best_valid"),
        ):
            acc = np.array([r[field] for r in runs if r[field] is not None], dtype=float)
            if len(acc) < 2:
                continue
            half = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc))
            parts.append(f"{acc.mean():.4f} ± {half:.4f} at the {label}")
        lines.append(
            f"- {r0['sup_num']} labels, {_schedule_text(r0['settings'])} schedule, "
            f"inputs {_inputs_text(r0)}, α' {r0['settings']['aux_loss_multiplier']:g}, "
            f"{len(runs)} draws (seeds {', '.join(str(r['seed']) for r in runs)}): test accuracy "
            + "; ".join(parts)
        )
    if lines:
        lines = [
            "",
            "Mean over draws of the labelled images (95% half-width 1.96·s/√n):",
            "",
            *lines,
        ]
    return lines


def _inputs_text(r: dict[str, Any]) -> str:
    """What M2 read: ``pixels``, or ``M1 e<epochs> (<k> units)`` for the stacked M1+M2 (``,
    draws`` when it trained on fresh draws z1 ~ q(z1 | x) rather than the means)."""
    if r["settings"].get("features", "pixels") == "pixels":
        return "pixels"
    draws = ", draws" if r["settings"].get("m1_inputs") == "sample" else ""
    net = "conv " if r["settings"].get("m1_net") == "conv" else ""
    name = r["m1"].get("label", f"{net}M1 e{r['settings']['m1_epochs']}")  # a wrapper's own M1
    return f"{name} ({r['m1']['active_units']} units{draws})"


def _fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def write_table(folder: Path) -> Path:
    """``table.md``: every ``result.json`` under ``folder`` beside Pyro's published rows."""
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("**/result.json"))]
    results.sort(key=lambda r: (r["sup_num"], r["seed"], r["settings"].get("schedule", "pyro")))
    lines = [
        "# Semi-supervised VAE (M2) on MNIST: test accuracy of q(y|x)",
        "",
        "Ours: `experiments/ss_vae.py` (Pyro's `ss_vae_M2.py` model: 784-500-50 softplus MLPs, "
        "enumerated label, auxiliary loss weighted α' per labelled image, Adam, grey levels "
        "with a Bernoulli likelihood; validation = last 10 000 training images). *inputs* "
        "`pixels`: M2 on the images (Pyro's example); `M1 e<E> (k units)`: Kingma et al.'s "
        "stacked M1+M2, M2 (Gaussian likelihood, learned variance) on the posterior means of "
        "the k active units of an unsupervised 784-600-600-50 VAE trained E epochs (`conv M1`: "
        "the library's convolutional VAE with 50 latent units, `--m1-net conv`), or of the M1 "
        "named (`draws`: "
        "trained on a fresh draw z1 ~ q(z1 | x) per batch, as Kingma et al.; evaluated on the "
        "means). *schedule* "
        "`joint`: a labelled batch in every step; `pyro`: Pyro's, a labelled batch every "
        "N / labelled batches; in brackets the network and Adam settings that differ from "
        "Pyro's (every run draws all initial weights from N(0, 0.001²) unless `output init "
        "torch`, which draws the output layers as nn.Linear does: Pyro's own initialisation). "
        "*batch*: images per step (`joint`: per unlabelled batch, with a labelled batch of "
        "the same size, or of all the labelled images when fewer, or of k with `/k`). *test acc* "
        "is after the last epoch, "
        "*at best valid* is at the epoch of best validation accuracy.",
        "",
        "| labelled | seed | schedule | inputs | α' | epochs | train min | batch "
        "| best valid acc (epoch) "
        "| test acc | test acc at best valid | Pyro published | gap (test acc − published) "
        "| generative acc / L spread (nats) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pub = PYRO_PUBLISHED.get(r["sup_num"])
        published = f"{pub[0]:.4f} ± {pub[1]:.4f}" if pub else "–"
        gap = f"{r['test_accuracy'] - pub[0]:+.4f}" if pub and r["epochs"] else "–"
        tiny = " (subset)" if r["settings"]["n_train"] or r["settings"]["n_test"] else ""
        check = _check_text(r.get("label_check"))
        lines.append(
            f"| {r['sup_num']}{tiny} | {r['seed']} | {_schedule_text(r['settings'])} | "
            f"{_inputs_text(r)} | "
            f"{r['settings']['aux_loss_multiplier']:g} | {r['epochs']} | "
            f"{r['train_seconds'] / 60:.1f} | {_batch(r['settings'])} | "
            f"{_fmt(r['best_valid_accuracy'])} ({r['best_epoch']}) | {_fmt(r['test_accuracy'])} | "
            f"{_fmt(r['test_accuracy_at_best_valid'])} | {published} | {gap} | {check} |"
        )
    lines += _draw_means(results)
    stopped = [json.loads(p.read_text()) for p in sorted(folder.glob("**/history.json"))]
    if stopped:
        lines += ["", "Stopped runs (their record is `history.json`: no final result):", ""]
    for r in stopped:
        h, st, c = r["history"], r["settings"], r.get("label_check")
        best = max(range(len(h["valid_accuracy"])), key=lambda i: h["valid_accuracy"][i])
        lines.append(
            f"- {st['sup_num']} labels, seed {st['seed']}, schedule {st['schedule']}, α' "
            f"{st['aux_loss_multiplier']:g}: stopped after {r['epochs']} epochs; best validation "
            f"accuracy {h['valid_accuracy'][best]:.4f} (epoch {best + 1}), last "
            f"{h['valid_accuracy'][-1]:.4f}, last test accuracy {h['test_accuracy'][-1]:.4f}"
            + (f"; generative acc / L spread {_check_text(c)}" if c else "")
            + f". {r['note']}"
        )
    lines += [
        "",
        f"Published ({SOURCE}):",
        "",
        "| labelled | M2 (enumeration + aux loss) | baseline classifier (labelled images only) |",
        "|---|---|---|",
    ]
    for n, (acc, ci, base, base_ci) in sorted(PYRO_PUBLISHED.items()):
        lines.append(f"| {n} | {acc:.4f} ({ci:.4f}) | {base:.4f} ({base_ci:.4f}) |")
    lines += [
        "",
        "The tutorial does not state the number of epochs; Pyro's script defaults to 50 "
        f"(`-n`), its example command uses lr {PYRO_EXAMPLE['lr']}, β1 {PYRO_EXAMPLE['beta1']} "
        f"and batch {PYRO_EXAMPLE['batch_size']} with α' = {PYRO_EXAMPLE['aux_loss_multiplier']:g};"
        " the tutorial chose α' by validation accuracy. The script requires the batch size to "
        "divide the number of labelled images, so the 100-label row used a smaller batch than "
        "200; ours takes all 100 labelled images as one batch (see ppl_vae.semisupervised).",
        "",
        f"*generative acc / L spread*: on the first {CHECK_IMAGES} test images, the accuracy of "
        "the generative model's own classifier argmax_y L(x, y) and the median spread "
        "max_y L − min_y L of the label ELBOs (`ppl_vae.semisupervised.label_elbos`, "
        f"{CHECK_SAMPLES} draws of z per label): near 0 the decoder ignores y, and the "
        "unlabelled images cannot teach q(y|x).",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _schedule_text(s: dict[str, Any]) -> str:
    """The table's *schedule*, with the network and Adam settings that differ from Pyro's
    example (the legend states those), so a row is never read as Pyro's recipe when it is not."""
    changed = []
    if list(s["hidden"]) != list(PYRO_EXAMPLE["hidden"]):
        changed.append(f"hidden {'-'.join(str(h) for h in s['hidden'])}")
    if s["z_dim"] != PYRO_EXAMPLE["z_dim"]:
        changed.append(f"z {s['z_dim']}")
    if s["lr"] != PYRO_EXAMPLE["lr"]:
        changed.append(f"lr {s['lr']:g}")
    if s["beta1"] != PYRO_EXAMPLE["beta1"]:
        changed.append(f"β1 {s['beta1']:g}")
    if s.get("output_init", "normal") != "normal":
        changed.append(f"output init {s['output_init']}")
    name = s.get("schedule", "pyro")
    return name + (f" ({', '.join(changed)})" if changed else "")


def _batch(s: dict[str, Any]) -> str:
    """The table's *batch*: unlabelled images per step, and ``/labelled`` when that was set."""
    return f"{s['batch_size']}" + (f"/{s['sup_batch_size']}" if "sup_batch_size" in s else "")


def main(argv: list[str] | None = None, prog: str = "python experiments/ss_vae.py") -> None:
    """Run the script; ``prog`` is how the recorded command starts (a wrapper that replaces
    a part, such as ``results/ssvae/kingma-m1/kingma_m1.py``, names itself there)."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sup-num", type=int, nargs="+", default=[100, 3000], help="labelled images")
    p.add_argument("--epochs", type=int, default=PYRO_EXAMPLE["epochs"])
    p.add_argument("--minutes", type=float, default=None, help="training budget per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="pyro",
        help="pyro: a labelled batch every N/sup_num batches (Pyro's example); joint: a labelled "
        "batch in every step (Kingma's recipe; keeps the label channel with 100 labels)",
    )
    p.add_argument("--batch-size", type=int, default=PYRO_EXAMPLE["batch_size"])
    p.add_argument(
        "--sup-batch-size",
        type=int,
        default=None,
        help="joint schedule: labelled images per step (default: min(batch size, labelled))",
    )
    p.add_argument("--lr", type=float, default=PYRO_EXAMPLE["lr"])
    p.add_argument("--beta1", type=float, default=PYRO_EXAMPLE["beta1"])
    p.add_argument("--aux-loss-multiplier", type=float, default=PYRO_EXAMPLE["aux_loss_multiplier"])
    p.add_argument("--z-dim", type=int, default=PYRO_EXAMPLE["z_dim"])
    p.add_argument("--hidden", type=int, nargs="+", default=list(PYRO_EXAMPLE["hidden"]))
    p.add_argument(
        "--output-init",
        choices=OUTPUT_INITS,
        default="normal",
        help="output layers' initial weights: N(0, 0.001²) like the hidden layers (normal), or "
        "nn.Linear's default U(±1/√fan_in) (torch: Pyro's example exactly)",
    )
    p.add_argument(
        "--features",
        choices=("pixels", "m1"),
        default="pixels",
        help="pixels: M2 on the images (Pyro's example); m1: Kingma et al.'s stacked M1+M2, M2 on "
        "the codes of an unsupervised VAE (M1) trained first",
    )
    p.add_argument("--m1-epochs", type=int, default=20, help="M1's training epochs (--features m1)")
    p.add_argument("--m1-seed", type=int, default=0, help="M1's seed (--features m1)")
    p.add_argument(
        "--m1-net",
        choices=("mlp", "conv"),
        default="mlp",
        help="M1's networks: Kingma et al.'s 784-600-600-50 softplus MLP, or the library's "
        "convolutional pair (two stride-2 convolutions, 50 latent units) (--features m1)",
    )
    p.add_argument(
        "--m1-active-threshold",
        type=float,
        default=0.01,
        help="M2 reads the M1 units whose posterior mean varies over the images by more than "
        "this (Burda et al.'s active units)",
    )
    p.add_argument(
        "--m1-inputs",
        choices=("mean", "sample"),
        default="mean",
        help="M2's training inputs: M1's posterior means, or a fresh draw z1 ~ q(z1 | x) for every "
        "batch (Kingma et al.); validation and test read the means (--features m1)",
    )
    p.add_argument("--validation-num", type=int, default=PYRO_EXAMPLE["validation_num"])
    p.add_argument("--n-train", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--n-test", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "ssvae")
    p.add_argument("--table-only", action="store_true", help="only rewrite table.md")
    args = p.parse_args(argv)
    args.command = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    if not args.table_only:

        @functools.cache
        def get_inputs() -> Inputs:
            data = load_dataset("mnist", device=args.device, verbose=False)
            try:
                return prepare_inputs(args, data)
            except DataError as e:
                raise SystemExit(f"error: {e}") from e

        for sup_num in args.sup_num:
            run_one(sup_num, args, get_inputs)
            write_table(args.out)  # after every run: finished results are never lost
    print(f"table: {write_table(args.out)}")


if __name__ == "__main__":
    main()
