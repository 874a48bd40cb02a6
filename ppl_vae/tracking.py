"""Experiment tracking: TensorBoard event files with a run's scalars, image grids and settings.

A tracker is a :func:`~ppl_vae.train.fit` callback (``tracker(epoch, history, program)`` after
each epoch) that also takes the final report, image grids and the hyper-parameters::

    from ppl_vae.tracking import TensorBoardLogger, log_model_images

    with TensorBoardLogger("runs/my-run/tensorboard", hparams={"lr": 1e-3}) as tb:
        history = fit(model, train_x, config, test_x=test_x, callbacks=(tb,))
        tb.log_metrics(evaluate(model, test_x))  # test/log_likelihood, test/bits_per_dim, ...
        log_model_images(tb, model, test_x)  # images/reconstructions, images/samples
        tb.log_hparams()  # the settings, next to the final metrics in the HPARAMS tab

:func:`make_tracker` gives the one a :class:`~ppl_vae.run.RunConfig` names, or a
:class:`NullTracker` that does nothing, so a workflow calls the same methods either way. Under
``torch.distributed`` only rank 0 writes: the other ranks' trackers do nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from .train import History

__all__ = [
    "METRIC_TAGS",
    "TRACKERS",
    "NullTracker",
    "TensorBoardLogger",
    "Tracker",
    "check_tracker",
    "flatten_hparams",
    "log_model_images",
    "make_tracker",
]

#: The names :class:`~ppl_vae.run.RunConfig` ``log`` accepts (None: no tracking).
TRACKERS = ("tensorboard",)

#: Entries of a run's metrics (:func:`~ppl_vae.evaluate.evaluate`,
#: :func:`~ppl_vae.evaluate.image_metrics`) that :meth:`TensorBoardLogger.log_metrics` writes, and
#: their tags. The final ELBO is not among them: ``test/elbo`` is already the per-epoch curve.
METRIC_TAGS = {
    "log_likelihood": "test/log_likelihood",
    "bits_per_dim": "test/bits_per_dim",
    "elbo_bits_per_dim": "test/elbo_bits_per_dim",
    "reconstruction_mse": "test/mse",
    "psnr": "test/psnr",
    "corrupted_reconstruction_mse": "test/corrupted_mse",
    "corrupted_psnr": "test/corrupted_psnr",
}


class Tracker(Protocol):
    """What a workflow calls on a tracker (:class:`TensorBoardLogger`, :class:`NullTracker`)."""

    #: False when the tracker writes nothing (a null tracker, a rank other than 0).
    active: bool

    def __call__(self, epoch: int, history: History, program: Any) -> None: ...

    def log_scalars(self, scalars: Mapping[str, Any], step: int | None = None) -> None: ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...

    def log_images(
        self, tag: str, images: torch.Tensor, step: int | None = None, nrow: int = 8
    ) -> bool: ...

    def log_hparams(self, hparams: Mapping[str, Any] | None = None) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """A tracker that records nothing."""

    active = False

    def __call__(self, epoch: int, history: History, program: Any) -> None:
        pass

    def log_scalars(self, scalars: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_images(
        self, tag: str, images: torch.Tensor, step: int | None = None, nrow: int = 8
    ) -> bool:
        return False

    def log_hparams(self, hparams: Mapping[str, Any] | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_writer_rank() -> bool:
    """Rank 0 of an initialised process group, or a process outside any group."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def _number(value: Any) -> float | None:
    """A finite real number as float, else None (bools, strings, NaN and ±inf are not metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def flatten_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings → ``{"model.latent_dim": 32, "model.hidden": "(512, 512)", ...}``.

    TensorBoard's hyper-parameters are numbers, strings or bools: nested mappings become dotted
    names, other values (tuples, paths, ...) their ``str``, and None is left out. Bools become
    ``"True"``/``"False"`` too: torch's writer would store them as the numbers 1 and 0.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}."))
        elif value is None:
            continue
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class TensorBoardLogger:
    """Writes a run's TensorBoard event file into ``log_dir``; open it with
    ``tensorboard --logdir DIR``.

    As a :func:`~ppl_vae.train.fit` callback it writes ``train/loss``, ``test/elbo`` (when ``fit``
    has test data) and ``time/seconds_per_epoch`` at step = epoch, and flushes, so a run that stops
    keeps its curves. ``hparams`` (any nested settings, see :func:`flatten_hparams`) are written by
    :meth:`log_hparams`, with the metrics logged so far as the HPARAMS tab's columns.
    """

    def __init__(self, log_dir: str | Path, hparams: Mapping[str, Any] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.hparams = dict(hparams or {})
        self.active = _is_writer_rank()
        self._writer = None
        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._step = 0
        # tag → last value of the scalars that describe the outcome (HPARAMS tab's columns)
        self._metrics: dict[str, float] = {}

    def __call__(self, epoch: int, history: History, program: Any) -> None:
        self._step = epoch
        outcome = {"train/loss": history.train_loss[-1], "test/elbo": history.test_elbo[-1]}
        self.log_scalars({**outcome, "time/seconds_per_epoch": history.seconds[-1]}, step=epoch)
        self._metrics.update({k: float(v) for k, v in outcome.items() if _number(v) is not None})
        if self._writer is not None:
            self._writer.flush()

    def log_scalars(self, scalars: Mapping[str, Any], step: int | None = None) -> None:
        """Write each finite number of ``{tag: value}`` (others are skipped) at ``step``
        (default: the last epoch seen)."""
        if self._writer is None:
            return
        step = self._step if step is None else step
        for tag, value in scalars.items():
            number = _number(value)
            if number is not None:
                self._writer.add_scalar(tag, number, step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Write a run's final report: the entries of :data:`METRIC_TAGS` that it holds as finite
        numbers, at ``step`` (default: the last epoch seen)."""
        scalars = {
            tag: metrics[key]
            for key, tag in METRIC_TAGS.items()
            if _number(metrics.get(key)) is not None
        }
        self.log_scalars(scalars, step)
        self._metrics.update({tag: float(v) for tag, v in scalars.items()})

    def log_images(
        self, tag: str, images: torch.Tensor, step: int | None = None, nrow: int = 8
    ) -> bool:
        """Write ``(N, C, H, W)`` images (C = 1 or 3, values clamped to [0, 1]) as one grid of
        ``nrow`` per row; return False, writing nothing, for data that are not images (a table
        ``(N, D)``, other channel counts) or when this tracker is not active."""
        if self._writer is None or images.dim() != 4 or images.shape[1] not in (1, 3):
            return False
        from torchvision.utils import make_grid

        grid = make_grid(
            images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1
        )
        self._writer.add_image(tag, grid, self._step if step is None else step)
        return True

    def log_hparams(self, hparams: Mapping[str, Any] | None = None) -> None:
        """Write the hyper-parameters (the constructor's, updated by ``hparams``) with the metrics
        logged so far, for TensorBoard's HPARAMS tab."""
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = flatten_hparams({**self.hparams, **(hparams or {})})
        # SummaryWriter.add_hparams would open a second run in a sub-folder and write the
        # metrics again; the three summaries go into this run's file instead, whose scalars
        # the HPARAMS tab reads by tag.
        for summary in hparams_summaries(values, dict(self._metrics)):
            self._writer.file_writer.add_summary(summary)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_tracker(
    kind: str | None, log_dir: str | Path, hparams: Mapping[str, Any] | None = None
) -> Tracker:
    """The tracker named ``kind`` (one of :data:`TRACKERS`) writing into ``log_dir``, or a
    :class:`NullTracker` for None."""
    check_tracker(kind)
    if kind is None:
        return NullTracker()
    return TensorBoardLogger(log_dir, hparams)


def check_tracker(kind: str | None) -> None:
    """Refuse a tracker name that is not None or one of :data:`TRACKERS`."""
    if kind is not None and kind not in TRACKERS:
        raise ValueError(f"unknown tracker {kind!r}; choose one of {list(TRACKERS)} (or none)")


@torch.no_grad()
def log_model_images(
    tracker: Tracker,
    model: Any,
    test_x: torch.Tensor,
    *,
    step: int | None = None,
    seed: int = 0,
    n: int = 16,
    num_samples: int = 64,
) -> list[str]:
    """Image grids of a model: the first ``n`` test images above their reconstructions
    (``images/reconstructions``) and ``num_samples`` decoded prior draws E[x | z]
    (``images/samples``) when the prior can be sampled. Draws are seeded by ``seed`` without
    touching the caller's random streams. Returns the tags written (none for non-image data)."""
    if not tracker.active or test_x.dim() != 4:
        return []
    from .metrics import eval_mode

    tags = []
    x = test_x[:n]
    with eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(model, "reconstruct"):
            pair = torch.cat([x, model.reconstruct(x)])
            if tracker.log_images("images/reconstructions", pair, step, nrow=x.shape[0]):
                tags.append("images/reconstructions")
        if getattr(model, "can_sample", False):
            samples = model.sample(num_samples)
            nrow = max(1, math.isqrt(num_samples))
            if tracker.log_images("images/samples", samples, step, nrow=nrow):
                tags.append("images/samples")
    return tags
