"""Several model families trained with the same settings and scored on the same test images.

:func:`compare` is what ``ppl-vae compare`` does: each family (AE, DAE, sparse AE, VAE, …: one
model/guide pair with different parts) is trained by :func:`~ppl_vae.run.train_run` into
``OUT/FAMILY``, PCA of the same latent size is fitted as the linear baseline, and one table is
written (``OUT/compare.md``, ``OUT/compare.json``).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .evaluate import NOTE_FLAT, NOTE_MAP, image_metrics
from .metrics import reconstruction_error
from .model import MODEL_PRESETS, ModelConfig, preset_config
from .run import RunConfig, load_run_data, train_run, write_json
from .train import TrainConfig, resolve_device

__all__ = ["COMPARE_MODELS", "compare", "compare_markdown"]

#: Families compared by default ("pca" is the linear baseline, fitted rather than trained).
COMPARE_MODELS = ("ae", "dae", "sparse-ae", "vae", "pca")


class _ClippedPCA:
    """PCA whose reconstructions are clipped to [0, 1], the images' range (PCA's affine
    reconstructions leave it; clipping only brings them closer to the data)."""

    training = False

    def __init__(self, pca: Any) -> None:
        self.pca = pca

    def reconstruct(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        return self.pca.reconstruct(x, x_in).clamp(0, 1)


def _pca_row(latent_dim: int, data: Any, eval_spec: str | None, seed: int) -> dict[str, Any]:
    from .pca import PCA

    t0 = time.perf_counter()
    pca = PCA(latent_dim).fit(data.train_x)
    seconds = time.perf_counter() - t0
    clipped = _ClippedPCA(pca)
    return {
        "model": "pca",
        "guide": "—",
        "prior": "—",
        "model_family": "pca",
        "reconstruction_mse": reconstruction_error(clipped, data.test_x),
        "train_seconds_this_invocation": seconds,
        "explained_variance_ratio": float(pca.explained_variance_ratio.sum()),
        "elbo_note": "no likelihood: reconstruction metrics only",
        **image_metrics(clipped, data.test_x, eval_spec, seed),
    }


def compare(
    models: list[str],
    mc: ModelConfig,
    tc: TrainConfig,
    rc: RunConfig,
    *,
    dae_corruption: str | None = None,
    sparsity_lambda: float | None = None,
) -> dict[str, Any]:
    """Train each family of ``models`` with the same settings; write and return the table."""
    known = [*MODEL_PRESETS, "pca"]
    for name in models:
        if name not in known:
            raise ValueError(f"unknown model {name!r}; choose from {sorted(known)}")
    if not models:
        raise ValueError("no models to compare")
    out = Path(rc.out or Path("runs") / f"compare-{rc.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    eval_spec = rc.eval_corruption if rc.eval_corruption not in (None, "none") else None
    device = resolve_device(tc.device)
    data = load_run_data(
        rc.dataset, rc.data_root, rc.train_size, rc.test_size, device, rc.image_size, tc.seed
    )
    rows: list[dict[str, Any]] = []
    for name in models:
        if name == "pca":
            rows.append(_pca_row(mc.latent_dim, data, eval_spec, tc.seed))
            continue
        lam = sparsity_lambda if name == "sparse-ae" else None
        config = preset_config(name, mc, sparsity_lambda=lam)
        run = replace(
            rc,
            model_family=name,
            corruption=(dae_corruption or MODEL_PRESETS["dae"]["corruption"])
            if name == "dae"
            else "none",
            out=out / name,
            resume=rc.resume and (out / name / "checkpoint.pt").exists(),
        )
        metrics = train_run(config, tc, run, data)
        kw = ", ".join(f"{k}={v:g}" for k, v in config.prior_kwargs.items())
        prior = config.prior + (f"({kw})" if kw else "")
        rows.append({"model": name, "guide": config.guide, "prior": prior, **metrics})
    settings = {
        "dataset": rc.dataset,
        "train_images": int(data.train_x.shape[0]),
        "test_images": int(data.test_x.shape[0]),
        "epochs": tc.epochs,
        "batch_size": tc.batch_size,
        "lr": tc.lr,
        "latent_dim": mc.latent_dim,
        "net": mc.net,
        "hidden": list(mc.hidden),
        "likelihood": mc.likelihood,
        "likelihood_kwargs": mc.likelihood_kwargs,
        "eval_corruption": eval_spec,
        "seed": tc.seed,
        "device": str(device),
    }
    table = [{k: v for k, v in r.items() if k != "history"} for r in rows]
    write_json(out / "compare.json", {"settings": settings, "models": table})
    md = compare_markdown(settings, table)
    (out / "compare.md").write_text(md)
    print(md)
    print(f"table: {out / 'compare.md'}, {out / 'compare.json'}")
    return {"settings": settings, "models": table, "out": str(out)}


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def compare_markdown(settings: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The comparison table with notes on what each column means for each family."""
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
        mark = {NOTE_FLAT: " ¹", NOTE_MAP: " ²"}.get(r.get("elbo_note", ""), "")
        lines.append(
            f"| {r['model']} | {r['guide']} | {r['prior']} | {r.get('corruption') or '—'} | "
            f"{_fmt(r.get('reconstruction_mse'), '.5f')} | {_fmt(r.get('psnr'), '.2f')} | "
            f"{_fmt(r.get('corrupted_psnr'), '.2f')} | {_fmt(r.get('elbo'), '.2f')}{mark} "
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
