"""Evaluation of any Pyro program: ELBO, importance-sampled log-likelihood, the standard report.

All numbers are per data point, in nats unless said otherwise, computed from Pyro traces in
batches so memory stays bounded, for the library's models and a user's ``model``/``guide`` pair
alike (:mod:`ppl_vae.program`). Importance sampling uses the guide as proposal (Burda et al.,
2016)::

    log p(x) ≈ logsumexp_k [log p(x, z_k) − log q(z_k | x)] − log K,   z_k ~ q(z | x),

a lower bound in expectation that tightens to log p(x) as K grows. The weights come from
:func:`~ppl_vae.importance.log_weights`: a model latent the guide does not sample is summed out
when it is discrete and enumerable and refused otherwise, never silently biased. The K particles
are a vectorised plate, processed in chunks merged with a running log-sum-exp, so K = 5000 needs
no more memory than one chunk.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.infer import TraceMeanField_ELBO
from torch.utils.data import Dataset

from . import distributed
from .batching import dataset_size, stack
from .corruptions import corrupt, make_corruption
from .data import check_8bit
from .data import dequantize as dequantize_
from .importance import log_weights
from .metrics import bits_per_dim, eval_mode, psnr, reconstruction_error, reconstruction_psnr
from .program import Program, ProgramInfo, as_program, inspect_program

#: Largest chunk (in numbers) that :func:`log_likelihood` uses on CPU. glibc serves allocations
#: above its mmap threshold (32 MiB at most) with fresh pages that are faulted in and zeroed on
#: every use; chunks of 2**22 numbers (16 MiB per float32 tensor) are recycled from the heap
#: instead. Measured on a 2-core CPU: 2**21–2**22 takes 0.6x the CPU time of 2**25.
CPU_MAX_ELEMENTS = 2**22

__all__ = [
    "elbo",
    "elbo_note",
    "elbo_per_image",
    "evaluate",
    "image_metrics",
    "log_likelihood",
    "sharded_elbo",
]


def _setup(program: Any, x: torch.Tensor, batch_size: int) -> tuple[Program, ProgramInfo]:
    """The program, its data checked, and what a traced run on the first batch shows."""
    prog = as_program(program)
    prog.check_data(x)
    args, kwargs = _call(prog, x[:batch_size])
    # modules own their weights: stale store entries of the same names give way to them
    return prog, inspect_program(prog, args, kwargs, bind_from_store=False)


def _call(prog: Program, xb: torch.Tensor) -> tuple[tuple, dict]:
    # the batch is the whole data set of this evaluation: no subsampling scale
    return prog.call_args(xb, num_data=xb.shape[0], x_in=xb)


def _weights(prog: Program, info: ProgramInfo, xb: torch.Tensor, k: int) -> torch.Tensor:
    args, kwargs = _call(prog, xb)
    return log_weights(prog.model, prog.guide, args, kwargs, k, info.max_plate_nesting)[0]


@torch.no_grad()
def elbo_per_image(
    program: Any, x: torch.Tensor, *, num_particles: int = 1, batch_size: int = 1000
) -> torch.Tensor:
    """Monte Carlo ELBO of each data point, averaged over ``num_particles`` draws: shape (N,).

    With a point-mass guide one draw is exact: log p(x | f(x)) + log p(f(x)).
    """
    prog, info = _setup(program, x, batch_size)
    k = 1 if info.point_masses else num_particles
    return torch.cat([_weights(prog, info, xb, k).mean(0) for xb in x.split(batch_size)])


@torch.no_grad()
def elbo(
    program: Any,
    x: torch.Tensor,
    *,
    num_particles: int = 1,
    batch_size: int = 1000,
    analytic_kl: bool = True,
) -> float:
    """Mean ELBO per data point (nats). With ``analytic_kl`` the KL term is computed exactly where
    Pyro knows it (``TraceMeanField_ELBO``) and estimated by Monte Carlo elsewhere; programs
    whose model has latents the guide lacks are scored from the (enumerated) weights instead."""
    prog, info = _setup(program, x, batch_size)
    if not analytic_kl or info.model_only or info.point_masses:
        return float(
            elbo_per_image(prog, x, num_particles=num_particles, batch_size=batch_size).mean()
        )
    loss_fn = TraceMeanField_ELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=info.max_plate_nesting,
    )
    total = 0.0
    for xb in x.split(batch_size):
        args, kwargs = _call(prog, xb)
        total += loss_fn.loss(prog.model, prog.guide, *args, **kwargs)
    return -total / x.shape[0]


@torch.no_grad()
def log_likelihood(
    program: Any,
    x: torch.Tensor,
    *,
    num_samples: int = 1000,
    batch_size: int = 100,
    max_elements: int = 2**25,
    progress: bool = False,
) -> torch.Tensor:
    """Importance-sampled log p(x) per data point with ``num_samples`` draws from q: shape (N,).

    Particles are processed in chunks of at most ``max_elements / (numbers per particle)`` so the
    largest decoder output stays under ``max_elements`` numbers whatever ``num_samples`` is: the
    peak memory does not grow with ``num_samples``. On CPU the chunk is further capped at
    :data:`CPU_MAX_ELEMENTS` numbers, which is faster there; on GPUs the larger the better.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    prog, info = _setup(program, x, batch_size)
    prior = getattr(prog.owner, "prior", None)
    if info.point_masses or (prior is not None and not getattr(prior, "can_sample", True)):
        raise ValueError(
            "importance-sampled log p(x) needs a guide with a density and a proper prior; the "
            f"point-mass guide of the AE family has no density (sites {info.point_masses}) and a "
            "flat prior no normaliser. Use a Normal (or richer) guide and a proper prior."
        )
    if x.device.type == "cpu":
        max_elements = min(max_elements, CPU_MAX_ELEMENTS)
    chunk = max(1, min(num_samples, max_elements // prog.elements_per_particle(x[:batch_size])))
    out = []
    batches = x.split(batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"log p(x), K={num_samples}", unit="batch", leave=False)
    for xb in batches:
        acc = torch.full((xb.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            acc = torch.logaddexp(acc, _weights(prog, info, xb, k).logsumexp(0))
            done += k
        out.append(acc - math.log(num_samples))
    return torch.cat(out)


NOTE_BOUND = "ELBO: a lower bound on log p(x)"
NOTE_FLAT = "log p(x | f(x)) only: flat (improper) prior, point-mass guide; not a bound"
NOTE_MAP = "log p(x | f(x)) + log p(f(x)) at the point-mass code (MAP objective); not a bound"


@torch.no_grad()
def sharded_elbo(program: Any, x: torch.Tensor | Dataset, *, batch_size: int = 1000) -> float:
    """Mean ELBO per data point of a tensor or a ``Dataset``, read in batches; in a distributed
    run each rank scores its contiguous share and the sums are reduced over the ranks."""
    rank, world = distributed.rank(), distributed.world_size()
    n = dataset_size(x)
    lo, hi = n * rank // world, n * (rank + 1) // world
    device = _device_of(program, x)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(lo, hi, batch_size):
        stop = min(hi, start + batch_size)
        xb = x[start:stop] if isinstance(x, torch.Tensor) else stack(x, range(start, stop))
        total[0] += elbo(program, xb.to(device), batch_size=batch_size) * (stop - start)
        total[1] += stop - start
    distributed.sum_(total)
    return float(total[0] / total[1])


def _device_of(program: Any, x: Any) -> torch.device:
    if isinstance(x, torch.Tensor):
        return x.device
    owner = as_program(program).owner
    param = None if owner is None else next(owner.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def elbo_note(model: Any) -> str:
    """What the number reported as 'ELBO' means for this model's guide and prior."""
    family = getattr(model, "guide_family", None)
    if family is None or family.has_density:
        return NOTE_BOUND
    return NOTE_FLAT if not getattr(model.prior, "can_sample", True) else NOTE_MAP


@torch.no_grad()
def image_metrics(
    model: Any, x: torch.Tensor | Dataset, corruption: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """PSNR of clean reconstructions and, with a ``corruption`` spec, of reconstructions from x̃
    scored against the clean images. x̃ comes from a generator seeded by ``seed`` alone, so every
    model scored with the same seed sees the same corrupted images."""
    if not isinstance(x, torch.Tensor):
        return _over_chunks(image_metrics, model, x, corruption=corruption, seed=seed)
    metrics: dict[str, Any] = {"psnr": reconstruction_psnr(model, x)}
    if corruption is not None:
        x_t = corrupt(x, make_corruption(corruption), seed=seed)
        metrics.update(
            {
                "eval_corruption": corruption,
                "corrupted_input_psnr": float(psnr(x_t.clamp(0, 1), x).mean()),
                "corrupted_reconstruction_mse": reconstruction_error(model, x, x_t),
                "corrupted_psnr": reconstruction_psnr(model, x, x_t),
            }
        )
    return metrics


@torch.no_grad()
def evaluate(
    model: Any,
    x: torch.Tensor | Dataset,
    *,
    iw_samples: int = 1000,
    iw_images: int | None = None,
    progress: bool = False,
    dequantize: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The standard report: ELBO (and what it means), IS log p(x) on the first ``iw_images``,
    reconstruction MSE, bits per dimension. A ``Dataset`` (data larger than memory) is scored
    in chunks of :data:`CHUNK` points, the importance-sampled log p(x) on the first chunk's
    first ``iw_images`` at most.

    With ``dequantize`` (8-bit images, continuous likelihoods) the densities are those of the
    dequantized images (k + u)/256, u drawn once from ``seed``; ``*_bits_per_dim_8bit`` then
    convert them to bits per dimension of the 8-bit data, −(log p − D log 256)/(D log 2): an
    upper bound on the discrete data's code length, comparable between likelihoods."""
    if not isinstance(x, torch.Tensor):
        return _over_chunks(
            evaluate,
            model,
            x,
            iw_samples=iw_samples,
            iw_images=iw_images,
            progress=progress,
            dequantize=dequantize,
            seed=seed,
        )
    d = math.prod(x.shape[1:])
    metrics: dict[str, Any] = {"num_images": x.shape[0]}
    if dequantize:
        check_8bit(x, "test data")
        x = dequantize_(x, torch.Generator(device=x.device).manual_seed(seed))
        metrics["dequantized"] = True
    with eval_mode(model):
        metrics["elbo"] = elbo(model, x)
        metrics["elbo_note"] = elbo_note(model)
        metrics["elbo_bits_per_dim"] = bits_per_dim(metrics["elbo"], d)
        if hasattr(model, "reconstruct"):
            metrics["reconstruction_mse"] = reconstruction_error(model, x)
        family = getattr(model, "guide_family", None)
        proper = getattr(getattr(model, "prior", None), "can_sample", True)
        if (family is None or family.has_density) and proper and iw_samples > 0 and iw_images != 0:
            xs = x if iw_images is None else x[:iw_images]
            ll = log_likelihood(model, xs, num_samples=iw_samples, progress=progress)
            metrics["log_likelihood"] = float(ll.mean())
            metrics["log_likelihood_samples"] = iw_samples
            metrics["log_likelihood_images"] = xs.shape[0]
            metrics["bits_per_dim"] = bits_per_dim(metrics["log_likelihood"], d)
            metrics["elbo_same_images"] = elbo(model, xs)
        if dequantize:
            shift = d * math.log(256)  # density on [0, 1]^D → probability of the 8-bit image
            metrics["elbo_bits_per_dim_8bit"] = bits_per_dim(metrics["elbo"] - shift, d)
            if "log_likelihood" in metrics:
                metrics["bits_per_dim_8bit"] = bits_per_dim(metrics["log_likelihood"] - shift, d)
    return metrics


#: Data points read at a time when a metric is computed over a ``Dataset``.
CHUNK = 5000
#: Metrics that are not means over all the points (they are kept from the first chunk).
_FIRST_CHUNK_ONLY = {
    "log_likelihood",
    "log_likelihood_samples",
    "log_likelihood_images",
    "bits_per_dim",
    "bits_per_dim_8bit",
    "elbo_same_images",
    "elbo_note",
    "eval_corruption",
}


def _over_chunks(fn: Any, model: Any, x: Dataset, **kwargs: Any) -> dict[str, Any]:
    """``fn``'s per-point means over a Dataset read in chunks, weighted by chunk size; what is
    computed on a prefix (the IS log p(x)) comes from the first chunk."""
    n = dataset_size(x)
    parts = []
    for start in range(0, n, CHUNK):
        xb = stack(x, range(start, min(n, start + CHUNK))).to(_device_of(model, x))
        if start > 0 and "iw_samples" in kwargs:
            kwargs = {**kwargs, "iw_samples": 0}
        parts.append((len(xb), fn(model, xb, **kwargs)))
    out = dict(parts[0][1])
    for key, value in out.items():
        if key not in _FIRST_CHUNK_ONLY and isinstance(value, float):
            out[key] = sum(m * p[key] for m, p in parts) / n
    if "num_images" in out:
        out["num_images"] = n
    if "elbo" in out:
        out["elbo_bits_per_dim"] = bits_per_dim(out["elbo"], math.prod(xb.shape[1:]))
    return out
