"""Training speed of ppl_vae against hand-written PyTorch, measured side by side in one run.

For each network (the PyTorch example's 784-400-20 MLP VAE and the convolutional VAE) and each
objective, trains the library's ``fit`` and a hand-written PyTorch loop of the identical network
and loss (:mod:`reference`) in alternating epochs, from the same initial weights, batch order and
noise, and reports seconds per epoch, the ratio library / hand-written, peak memory and both test
ELBOs (:mod:`timing` says how); then times the importance-sampled log-likelihood for each K.
Uses only ppl_vae's public API. Options: ``python benchmarks/benchmark.py --help``; e.g.::

    python benchmarks/benchmark.py --out results/benchmark.json
    python benchmarks/benchmark.py --nets mlp --objectives auto,trace --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from measure import PeakMemory, environment
from reference import ANALYTIC_KL
from timing import BenchConfig, time_log_likelihood, time_streaming, time_training, trained_mlp

from ppl_vae import VAE, load_dataset, resolve_device


# ----------------------------------------------------------------------------- the run
def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every requested measurement; returns the JSON-ready results (also written to
    ``config.out`` when set)."""
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, device=device, verbose=False)
    train_x = data.train_x if config.train_size is None else data.train_x[: config.train_size]
    test_x = data.test_x if config.test_size is None else data.test_x[: config.test_size]
    results: dict[str, Any] = {
        "config": asdict(config),
        "environment": environment(device),
        "memory_method": PeakMemory(device).method,
        "training": [],
        "log_likelihood": [],
    }
    log(f"benchmark on {device} ({torch.get_num_threads()} threads), {train_x.shape[0]} images")
    trained: VAE | None = None  # an MLP VAE trained by the library, for log p(x)
    for net in config.nets:
        for objective in config.objectives:
            row, model = time_training(net, objective, train_x, test_x, config, device, log)
            results["training"].append(row)
            log(_training_line(row))
            if net == "mlp" and trained is None:
                trained = model
    if config.iw_samples:
        if trained is None:
            trained = trained_mlp(train_x, config, device)
        trained.eval()
        xs = data.test_x if config.iw_images is None else data.test_x[: config.iw_images]
        for k in config.iw_samples:
            row = time_log_likelihood(trained, xs, k, config, device)
            results["log_likelihood"].append(row)
            log(
                f"log p(x), K={k}, {row['images']} images: {row['seconds']:.1f}s "
                f"({row['images_per_second']:.1f} images/s), mean {row['log_likelihood']:.2f} "
                f"nats, peak {row['peak_mib']:.0f} MiB ({row['above_start_mib']:+.0f} MiB)"
            )
    results["streaming"] = []
    for workers in (None, *config.stream_workers) if config.stream_workers else ():
        row = time_streaming(train_x, workers, config, device)
        results["streaming"].append(row)
        log(
            f"mlp, {row['path']}: {row['seconds']:.2f}s/epoch, "
            f"{row['images_per_second']:.0f} images/s (train loss {row['train_loss']:.3f})"
        )
    if config.out is not None:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {out}")
    log(markdown_table(results))
    return results


# ----------------------------------------------------------------------------- reporting
def _training_line(row: dict[str, Any]) -> str:
    lib, hand = row["library"], row["hand_written"]
    line = (
        f"{row['net']:4s} {_label(row):13s} library {lib['seconds_per_epoch']:.2f}s/epoch "
        f"({lib['images_per_second']:.0f} img/s)  hand-written {hand['seconds_per_epoch']:.2f}"
        f"s/epoch ({hand['images_per_second']:.0f} img/s)  ratio {row['ratio']:.3f} (CPU time "
        f"{row['cpu_ratio']:.3f})  test ELBO "
        f"{row['library_test_elbo']:.2f} vs {row['hand_written_test_elbo']:.2f}"
    )
    if "seed_reference_test_elbo" in row:
        line += f" (hand-written from another seed: {row['seed_reference_test_elbo']:.2f})"
    return line


def markdown_table(results: dict[str, Any]) -> str:
    """The README's performance table from a results dict."""
    lines: list[str] = []
    if results["training"]:
        lines += [
            "| net | objective | library s/epoch | hand-written s/epoch | ratio | ratio (CPU time) "
            "| library img/s | peak MiB (lib / hand) | test ELBO (lib / hand) | ELBO diff ± s.e. "
            "| seed-to-seed diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for row in results["training"]:
        lib, hand = row["library"], row["hand_written"]
        seed_diff = row.get("seed_to_seed_difference")
        lines.append(
            f"| {row['net']} | {_label(row)} | {lib['seconds_per_epoch']:.2f} "
            f"| {hand['seconds_per_epoch']:.2f} | {row['ratio']:.3f} | {row['cpu_ratio']:.3f} "
            f"| {lib['images_per_second']:.0f} "
            f"| {lib['peak_mib']:.0f} / {hand['peak_mib']:.0f} "
            f"| {row['library_test_elbo']:.2f} / {row['hand_written_test_elbo']:.2f} "
            f"| {row['test_elbo_difference']:+.2f} ± {row['test_elbo_difference_stderr']:.2f} "
            f"| {'–' if seed_diff is None else f'{seed_diff:+.2f}'} |"
        )
    if results["log_likelihood"]:
        lines += [
            *([""] if lines else []),
            "| log p(x) | images | seconds | images/s | peak MiB | above start MiB |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["log_likelihood"]:
            lines.append(
                f"| K={row['num_samples']} | {row['images']} | {row['seconds']:.1f} "
                f"| {row['images_per_second']:.1f} | {row['peak_mib']:.0f} "
                f"| {row['above_start_mib']:.0f} |"
            )
    return "\n".join(lines)


def _label(row: dict[str, Any]) -> str:
    """``auto → jit-trace`` for the default objective, else the objective's name."""
    objective, resolved = row["objective"], row.get("resolved_objective", row["objective"])
    return objective if objective == resolved else f"{objective} → {resolved}"


# ----------------------------------------------------------------------------- command line
def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(",") if v.strip())


def _names(s: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in s.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--nets", type=_names, default=d.nets, help="comma-separated: mlp,conv")
    p.add_argument(
        "--objectives",
        type=_names,
        default=d.objectives,
        help=f"comma-separated, from {', '.join(['auto', *ANALYTIC_KL])}",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="timed epochs per loop")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed epochs first")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--train-size", type=int, default=None, help="first N training images only")
    p.add_argument("--test-size", type=int, default=None, help="first N test images only")
    p.add_argument("--device", default=d.device, help="auto (CUDA if present), cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--iw-samples",
        type=_ints,
        default=d.iw_samples,
        help="K values for the log-likelihood timing, e.g. 1000,5000 ('' skips it)",
    )
    p.add_argument("--iw-images", type=int, default=None, help="first N test images (all)")
    p.add_argument("--iw-batch-size", type=int, default=d.iw_batch_size)
    p.add_argument("--iw-max-elements", type=int, default=d.iw_max_elements)
    p.add_argument(
        "--seed-reference",
        type=_names,
        default=d.seed_reference,
        help="nets for which an extra hand-written loop from seed+1 gives the "
        "seed-to-seed scatter of the test ELBO ('' skips it)",
    )
    p.add_argument(
        "--stream-workers",
        type=_ints,
        default=(),
        help="also time an epoch streamed from a Dataset with these DataLoader worker counts "
        "against the in-memory tensor, e.g. 0,2",
    )
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` into a :class:`BenchConfig`, run it, return an exit status."""
    config = BenchConfig(**vars(build_parser().parse_args(argv)))
    try:
        run_benchmark(config, log=lambda s: print(s, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
