"""What ``fit`` and the evaluation functions accept: any Pyro ``model``/``guide`` pair.

Calling convention
------------------
A *program* is the library's :class:`~ppl_vae.model.VAE`, any object with ``model`` and
``guide`` methods, or a ``(model, guide)`` pair of plain functions. Both are called like Pyro's
``SVI`` calls them, with the same arguments::

    model(x, **extras)        guide(x, **extras)

``x`` is a mini-batch whose first dimension indexes data points. The extras are passed only to
programs that declare them (by name, or through ``**kwargs``), and model and guide must declare
the same ones:

``num_data``  the size of the whole data set. The mini-batch ELBO is unbiased only if the data
              plate is ``pyro.plate(name, num_data, subsample=…)`` (:func:`data_plate` builds it),
              so that Pyro scales the batch's log density by ``num_data / B``. ``fit`` checks the
              scaling on the first batch and refuses a program whose observations are not scaled
              to the data set (no plate over the batch, or a plate of another size).
``x_in``      the batch the guide's encoder sees: a corrupted copy for the denoising AE (the
              model still scores the clean ``x``), else ``x`` itself.
``beta``      a 0-dim tensor weighting the latent sites (β-VAE, KL warm-up).

Tensors go by position where the signature allows it (JIT-compiled ELBOs need tensors as
positional inputs); everything else by keyword.

Parameters are registered the Pyro way: ``pyro.module(name, module)`` for networks,
``pyro.param`` for anything else. An ``nn.Module`` that *owns* the program (the ``VAE``, or the
object whose methods ``model``/``guide`` are) is checkpointed whole, buffers included; any of its
parameters that no ``pyro.module``/``pyro.param`` call reaches is refused, since SVI would never
train it. A parameter that the loss does not depend on is refused on the first step, for the same
reason (typically a stale entry of Pyro's global param store left by an earlier model of the same
names).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch import nn

from .errors import DataError, ProgramError

__all__ = [
    "PARTICLES",
    "Program",
    "ProgramInfo",
    "StepArgs",
    "as_program",
    "data_plate",
    "find_data_plate",
    "inspect_program",
]

#: Name of the vectorised-particle plate (Pyro's own name for it in its ELBOs).
PARTICLES = "num_particles_vectorized"
#: The extras ``fit`` offers to a program, in the order it offers them by position.
EXTRAS = ("x_in", "beta", "num_data")


def data_plate(
    x: torch.Tensor | None,
    num_data: int | None = None,
    *,
    batch_size: int | None = None,
    name: str = "data",
    dim: int = -1,
) -> pyro.plate:
    """The data plate of a mini-batch: ``pyro.plate(name, num_data, subsample=arange(B))``.

    With ``num_data`` equal to the batch (or None) it is a plain plate of size B. ``x`` may be
    None when ``batch_size`` says how many data points to generate (prior predictive).
    """
    b = batch_size if x is None else x.shape[0]
    if b is None:
        raise ValueError("without data, pass batch_size: how many data points to generate")
    if num_data is None or num_data == b:
        return pyro.plate(name, b, dim=dim)
    device = None if x is None else x.device
    return pyro.plate(name, num_data, subsample=torch.arange(b, device=device), dim=dim)


def _accepted(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    params = inspect.signature(fn).parameters.values()
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return {p.name for p in params}, var_kw


def _owner(fn: Callable[..., Any]) -> nn.Module | None:
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


@dataclass(frozen=True)
class Program:
    """A model/guide pair with what ``fit`` needs to know about it (see the module docstring)."""

    model: Callable[..., Any]
    guide: Callable[..., Any]
    #: The module holding the program's networks, if any: checkpointed, moved to the device.
    owner: nn.Module | None = None
    #: The extras (``num_data``, ``x_in``, ``beta``) that model and guide both declare.
    accepts: frozenset[str] = field(default_factory=frozenset)
    #: The model's positional-or-keyword parameters after the data, in order.
    positional: tuple[str, ...] = ()

    def call_args(self, x: torch.Tensor, **offered: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for ``model``/``guide``: the offered extras this program declares,
        tensors by position where the signature allows (as far as no parameter is skipped)."""
        kwargs = {k: offered[k] for k in EXTRAS if k in self.accepts and k in offered}
        args = [x]
        for name in self.positional:
            if name not in kwargs:
                break
            args.append(kwargs.pop(name))
        return tuple(args), kwargs

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """The owner's own check (shape, support of its likelihood) or the generic one."""
        check = getattr(self.owner, "check_data", None)
        if check is not None:
            check(x, what)
            return
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DataError(f"{what} must be a floating-point tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise DataError(f"{what} is empty")
        if not torch.isfinite(x).all():
            raise DataError(f"{what} contains NaN/Inf values")

    def elements_per_particle(self, x: torch.Tensor) -> int:
        """About how many numbers one importance sample of batch ``x`` creates: the decoder
        output, plus what the prior's density needs per code (a VampPrior: K · latent_dim)."""
        k = getattr(getattr(self.owner, "likelihood", None), "params_per_pixel", 2)
        prior = getattr(getattr(self.owner, "prior", None), "elements_per_point", 0)
        return x.numel() * int(k) + x.shape[0] * int(prior)

    @property
    def has_density(self) -> bool | None:
        """False for a point-mass guide family, None when not known before tracing."""
        family = getattr(self.owner, "guide_family", None)
        return None if family is None else bool(family.has_density)


def as_program(obj: Any) -> Program:
    """Wrap a ``VAE``, an object with ``model``/``guide`` methods or a ``(model, guide)`` pair."""
    if isinstance(obj, Program):
        return obj
    if isinstance(obj, tuple | list) and len(obj) == 2 and all(map(callable, obj)):
        model, guide = obj
        owner = None
    elif callable(getattr(obj, "model", None)) and callable(getattr(obj, "guide", None)):
        model, guide = obj.model, obj.guide
        owner = obj if isinstance(obj, nn.Module) else None
    else:
        raise TypeError(
            "expected a Pyro program: a ppl_vae.VAE, an object with model and guide methods, or a "
            f"(model, guide) pair of callables; got {type(obj).__name__}"
        )
    if owner is None:
        owners = [m for m in (_owner(model), _owner(guide)) if m is not None]
        if len(owners) == 2 and owners[0] is not owners[1]:
            owner = nn.ModuleList(owners)
        elif owners:
            owner = owners[0]
    (m_names, m_any), (g_names, g_any) = _accepted(model), _accepted(guide)
    accepts = set()
    for name in EXTRAS:
        in_model, in_guide = name in m_names or m_any, name in g_names or g_any
        if in_model != in_guide:
            which, other = ("model", "guide") if in_model else ("guide", "model")
            raise ProgramError(
                f"the {which} takes {name!r} but the {other} does not: Pyro calls model and guide "
                "with the same arguments, so give both the same signature"
            )
        if in_model:
            accepts.add(name)
    # read once here, not at every step: which extras can go by position after the data
    after_data = list(inspect.signature(model).parameters.values())[1:]
    positional = tuple(p.name for p in after_data if p.kind is p.POSITIONAL_OR_KEYWORD)
    return Program(model, guide, owner, frozenset(accepts), positional)


class StepArgs:
    """The arguments of one training step: the batch and the extras the program takes —
    ``num_data``, ``x_in`` (the corrupted batch, or the batch), β with its linear warm-up over
    ``warmup_steps`` — tensors positional where the program allows."""

    def __init__(
        self,
        program: Program,
        num_data: int,
        device: torch.device,
        *,
        corruption: Callable[[torch.Tensor], torch.Tensor] | None = None,
        beta: float = 1.0,
        warmup_steps: float = 0.0,
    ) -> None:
        self.program, self.num_data, self.device = program, num_data, device
        self.corruption, self.beta, self.warmup_steps = corruption, beta, warmup_steps
        # β enters as a tensor (a JIT graph input) only when it is not 1 throughout: a JIT graph
        # cannot switch between a tensor and None, and β = 1 needs no scaling ops at all.
        self.weighted = beta != 1.0 or warmup_steps > 0
        for name, needed in (("x_in", corruption is not None), ("beta", self.weighted)):
            if needed and name not in program.accepts:
                what = "a corruption" if name == "x_in" else "beta or KL warm-up"
                raise ProgramError(
                    f"{what} needs a program whose model and guide take {name!r}; this one does "
                    "not (see ppl_vae.program for the calling convention)"
                )

    def __call__(
        self, x: torch.Tensor, global_step: int, corrupt: bool = True
    ) -> tuple[tuple, dict]:
        offered: dict[str, Any] = {"num_data": self.num_data}
        offered["x_in"] = self.corruption(x) if corrupt and self.corruption is not None else x
        if self.weighted:
            beta = self.beta
            if self.warmup_steps > 0:
                beta *= min(1.0, (global_step + 1) / self.warmup_steps)
            offered["beta"] = torch.tensor(beta, device=self.device)
        return self.program.call_args(x, **offered)


# ---------------------------------------------------------------------------------- inspection
@dataclass
class ProgramInfo:
    """What one traced run of the program on a batch shows (see :func:`inspect_program`)."""

    param_names: list[str]
    data_plate: CondIndepStackFrame
    max_plate_nesting: int
    #: Model latents the guide does not sample: ``{name: enumerable?}``.
    model_only: dict[str, bool]
    #: Guide sites without a reparameterised sampler (discrete, say).
    not_reparameterised: list[str]
    #: Guide sites that are point masses (no density to weight samples with).
    point_masses: list[str]
    #: Parameters of ``nn.Module`` s registered with ``pyro.module`` that the owner module does
    #: not hold (networks held by plain functions): ``fit(restart=True)`` cannot reset them.
    unowned_module_params: list[str] = field(default_factory=list)


def find_data_plate(
    model_trace: poutine.Trace, batch: int, num_data: int | None = None
) -> CondIndepStackFrame:
    """The plate over the observed sites that spans the batch, checked against ``num_data``.

    Raises :class:`ProgramError` when the model observes nothing, when no plate of its
    observations spans the ``batch`` data points, or when that plate is not ``num_data`` wide
    (the mini-batch log-likelihood would be scaled to the wrong data-set size).
    """
    observed = [s for s in model_trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    if not observed:
        raise ProgramError(
            "the model observes nothing: score the data with pyro.sample('x', ..., obs=x)"
        )
    frames = {
        f for s in observed for f in s["cond_indep_stack"] if f.vectorized and f.name != PARTICLES
    }
    spans = sorted((f for f in frames if f.size == batch), key=lambda f: (f.name != "data", f.dim))
    if not spans:
        raise ProgramError(
            f"no plate of the model's observed sites spans the batch of {batch} data points, so "
            "Pyro cannot scale the mini-batch to the data set: observe x inside "
            "pyro.plate('data', num_data, subsample=...) (ppl_vae.data_plate(x, num_data) builds "
            "it; fit passes num_data to programs that take it)"
        )
    if num_data is None:
        return spans[0]
    for f in spans:
        if (f.full_size or f.size) == num_data:
            return f
    f = spans[0]
    full = f.full_size or f.size
    raise ProgramError(
        f"the data plate {f.name!r} has size {full}, but the data set holds {num_data} data "
        f"points: the batch's log-likelihood would be scaled by {full}/{batch} instead of "
        f"{num_data}/{batch}, a mis-scaled ELBO. Declare a `num_data` argument in model and guide "
        f"and use pyro.plate({f.name!r}, num_data, subsample=...) (ppl_vae.data_plate)"
    )


class _BindModuleParams(Messenger):
    """Make the param store hold the very tensors the program's modules compute with.

    ``pyro.module(name, m)`` registers ``m``'s parameters under stable names but, if the store
    already holds a tensor of that name (an earlier model's, or one restored from a checkpoint),
    returns that one while ``m`` keeps computing with its own: SVI would then step tensors the loss
    never touches. With ``from_store`` False the store entry is replaced by the module's tensor;
    with True the stored values are first copied into it (resuming a checkpoint); with None
    nothing changes. The names registered from module parameters are recorded in all cases.
    """

    def __init__(self, from_store: bool | None) -> None:
        super().__init__()
        self.from_store = from_store
        self.module_params: set[str] = set()

    def _pyro_param(self, msg: dict[str, Any]) -> None:
        args = msg["args"]
        if len(args) < 2 or not isinstance(args[1], nn.Parameter):
            return
        name, tensor = args[0], args[1]
        self.module_params.add(name)
        store = pyro.get_param_store()
        # the store's own (unconstrained) tensor: a module parameter is registered unconstrained
        if self.from_store is None or name not in store or store._params[name] is tensor:
            return
        if self.from_store:
            held = store[name]
            if held.shape != tensor.shape:
                raise ProgramError(
                    f"parameter {name!r} has shape {tuple(tensor.shape)} in the program but "
                    f"{tuple(held.shape)} in the param store (checkpoint of another architecture?)"
                )
            with torch.no_grad():
                tensor.copy_(held)
        del store[name]


@contextmanager
def _rng_untouched(x: torch.Tensor) -> Iterator[None]:
    devices = [x.device.index or 0] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        yield


def inspect_program(
    program: Program,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    num_data: int | None = None,
    bind_from_store: bool | None = None,
) -> ProgramInfo:
    """Run the program once on a batch (guide, then model on the guide's draws) and check it.

    Leaves the random streams as they were. With ``bind_from_store`` not None, module parameters
    are (re)bound to the store first (:class:`_BindModuleParams`). Checks that the observed sites
    lie in a data plate scaled to ``num_data`` and that every parameter of the owner module is
    registered with Pyro; returns what the objectives and evaluation need to know.
    """
    x = args[0]
    binder = _BindModuleParams(bind_from_store)
    with _rng_untouched(x), poutine.trace(param_only=True) as params:
        with binder:
            guide_tr = poutine.trace(program.guide).get_trace(*args, **kwargs)
            model_tr = poutine.trace(poutine.replay(program.model, trace=guide_tr)).get_trace(
                *args, **kwargs
            )
    guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
    plate = find_data_plate(model_tr, x.shape[0], num_data)
    store = pyro.get_param_store()
    names = sorted(params.trace.nodes)
    owned = {id(p) for p in program.owner.parameters()} if program.owner is not None else set()
    if program.owner is not None:
        registered = {id(store._params[n]) for n in names if n in store}
        missing = [
            n
            for n, p in program.owner.named_parameters()
            if p.requires_grad and id(p) not in registered
        ]
        if missing:
            raise ProgramError(
                f"parameters {missing[:4]}{' ...' if len(missing) > 4 else ''} of "
                f"{type(program.owner).__name__} are not registered with Pyro in model or guide "
                "(pyro.module / pyro.param), so SVI would never train them: register the module "
                "that holds them with pyro.module(name, module)"
            )
    sites = [s for tr in (model_tr, guide_tr) for s in tr.nodes.values() if s["type"] == "sample"]
    nesting = max((-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized), default=0)
    guide_sites = {n: s for n, s in guide_tr.nodes.items() if s["type"] == "sample"}
    model_only = {
        n: bool(getattr(s["fn"], "has_enumerate_support", False))
        for n, s in model_tr.nodes.items()
        if s["type"] == "sample" and not s["is_observed"] and n not in guide_sites
    }
    return ProgramInfo(
        param_names=names,
        data_plate=plate,
        max_plate_nesting=nesting,
        model_only=model_only,
        not_reparameterised=[n for n, s in guide_sites.items() if not s["fn"].has_rsample],
        point_masses=[n for n, s in guide_sites.items() if _is_point_mass(s["fn"])],
        unowned_module_params=sorted(
            n for n in binder.module_params if id(store._params[n]) not in owned
        ),
    )


def _is_point_mass(fn: Any) -> bool:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, pyro.distributions.Delta)
