"""Per-data-point importance weights of any Pyro program: the one place the ELBO terms live.

For K draws z_k ~ q(z | x_b) of each data point b in a batch,

    log w_kb = log p(x_b, z_kb) − log q(z_kb | x_b),

read off Pyro traces: the guide runs inside a vectorised particle plate, the model is replayed on
its draws, and every sample site's log density is summed over all dimensions except the particle
and data-plate ones. Model latents the guide does not sample are summed out exactly when they are
discrete and enumerable (``log p(x, z) = log Σ_c p(x, z, c)``, by Pyro's parallel enumeration)
and refused otherwise — a prior draw standing in for a missing guide site would bias every
number computed from the weights.

From the weights: the ELBO of a point is ``mean_k log w``, the importance-sampled log p(x) and the
IWAE bound are ``logsumexp_k log w − log K`` (Burda et al., 2016).
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import config_enumerate
from pyro.poutine.util import prune_subsample_sites

from .errors import ProgramError
from .program import PARTICLES, find_data_plate

__all__ = ["iwae_bound", "log_weights"]


def log_weights(
    model: Any,
    guide: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    num_particles: int,
    nesting: int,
    *,
    require_reparam: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | float]:
    """``(log_w, data_scale)``: log weights of shape ``(num_particles, B)`` and the factor
    ``num_data / B`` by which the program's data plate scales the batch (1 without subsampling).

    ``nesting`` is the program's plate nesting (without the particle plate). Each site's own
    scale other than the data plate's (β on the latents, say) weights its log density inside
    ``log_w``; the data plate's subsampling factor is returned separately, so a bound over the
    batch is ``data_scale · Σ_b f(log_w[:, b])`` — the scale outside the log-sum-exp, where it
    belongs (Pyro's ``RenyiELBO`` applies it inside, which is wrong under subsampling).
    With ``require_reparam`` a guide site without a reparameterised sampler is refused (its
    gradient would need a score-function term).
    """
    particle_dim = -(nesting + 1)
    with pyro.plate(PARTICLES, num_particles, dim=particle_dim):
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        enumerated = poutine.enum(
            poutine.replay(config_enumerate(model, default="parallel"), trace=guide_tr),
            first_available_dim=particle_dim - 1,
        )
        model_tr = poutine.trace(enumerated).get_trace(*args, **kwargs)
    batch = args[0].shape[0]
    plate = find_data_plate(model_tr, batch)
    data_scale = (plate.full_size or plate.size) / plate.size
    guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    total: torch.Tensor | float = 0.0
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            _check_site(name, site, tr is model_tr, guide_tr, require_reparam)
            # the site's own scale (β) and mask, but not the data plate's subsampling factor
            lp = scale_and_mask(site["unscaled_log_prob"], site["scale"] / data_scale, site["mask"])
            frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLES]
            if plate not in frames:
                raise ProgramError(
                    f"site {name!r} lies outside the data plate {plate.name!r}: a global latent "
                    "couples the data points, so per-point weights (log p(x), IWAE) are not defined"
                )
            lp = _sum_plates_except(lp, nesting, plate.dim)
            total = total + sign * lp
    assert isinstance(total, torch.Tensor)
    # enumerated dims sit left of the particle dim: sum them out in probability space
    while total.dim() > nesting + 1:
        total = total.logsumexp(0)
    shape = [1] * (nesting + 1)
    shape[0], shape[plate.dim] = num_particles, batch
    return total.expand(shape).reshape(num_particles, batch), data_scale


def _check_site(
    name: str, site: dict, in_model: bool, guide_tr: Any, require_reparam: bool
) -> None:
    if in_model and not site["is_observed"] and name not in guide_tr.nodes:
        if site["infer"].get("_enumerate_dim") is None:
            raise ProgramError(
                f"latent {name!r} is sampled by the model but not by the guide and cannot be "
                "enumerated: a draw from its prior would stand in for q and bias the result. "
                "Sample it in the guide (or make it discrete with enumerable support)"
            )
    if not in_model and require_reparam and not site["fn"].has_rsample:
        raise ProgramError(
            f"guide site {name!r} has no reparameterised sampler: the importance-weighted bound "
            "needs reparameterised guide draws (sum discrete latents out in the model instead)"
        )


def _sum_plates_except(lp: torch.Tensor, nesting: int, keep: int) -> torch.Tensor:
    """Sum the plate dims (−nesting … −1) of ``lp`` except ``keep``, keeping them as size 1."""
    dims = [d for d in range(-nesting, 0) if d != keep and lp.dim() >= -d]
    return lp.sum(dim=dims, keepdim=True) if dims else lp


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """``logsumexp_k log w_kb − log K`` per data point: shape ``(B,)``."""
    return log_w.logsumexp(0) - math.log(log_w.shape[0])
