"""Run folders: train a model and write everything about it; evaluate or sample a finished run.

A run folder holds::

    RUN/checkpoint.pt     parameters, optimiser state, history, config and the model's recipe
    RUN/config.json       the settings, for people
    RUN/metrics.json      test ELBO (and what it means), IS log p(x), MSE, PSNR, bits/dim,
                          per-epoch losses: the same for the same settings and seed, so two runs
                          can be compared byte for byte
    RUN/timing.json       seconds per epoch and for the whole invocation (machine-dependent)
    RUN/*.png             reconstructions, samples, ELBO curves (and corrupted inputs)
    RUN/tensorboard/      with ``log="tensorboard"``: TensorBoard event files (per-epoch loss and
                          test ELBO, final metrics, image grids, hyper-parameters)

:func:`train_run` is what ``ppl-vae train`` (and ``make run``) does; :func:`evaluate_run` and
:func:`sample_run` are ``ppl-vae evaluate RUN`` and ``ppl-vae sample RUN``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model
from .data import ImageData, check_8bit, default_likelihood, dequantize, load_dataset
from .errors import CheckpointError, DataError
from .evaluate import evaluate, image_metrics
from .literature import check_protocol, check_protocol_model, protocol_metrics
from .metrics import eval_mode
from .model import MODEL_PRESETS, ModelConfig, build_model
from .objectives import objective_name, resolve_objective
from .tracking import check_tracker, log_model_images, make_tracker
from .train import TrainConfig, fit, resolve_device

__all__ = ["RunConfig", "evaluate_run", "load_run_data", "sample_run", "train_run", "write_json"]


@dataclass
class RunConfig:
    """Everything about a run that is neither the model nor the optimisation."""

    #: A :data:`~ppl_vae.model.MODEL_PRESETS` name: what the run is called, and the default
    #: training corruption (the DAE's).
    model_family: str = "vae"
    #: What to train on: a data set name (``mnist``, ``cifar10``, …), a folder of images or a
    #: ``.npy``/``.npz``/``.pt``/``.csv`` file (:func:`~ppl_vae.data.load_dataset`).
    dataset: str = "mnist"
    data_root: str | None = None
    #: Resize images to this size (a folder of images of several sizes needs it).
    image_size: int | None = None
    #: Choose the likelihood from the data (:func:`~ppl_vae.data.default_likelihood`) instead of
    #: the model config's: Bernoulli for images in [0, 1], Gaussian with identity mean otherwise.
    likelihood_from_data: bool = False
    #: First N training / test images (None: all).
    train_size: int | None = None
    test_size: int | None = None
    #: What the guide's encoder sees in training (a corruption spec); None: the family's default.
    corruption: str | None = None
    #: Also score reconstructions of test images corrupted so; None: the training corruption.
    eval_corruption: str | None = None
    iw_samples: int = 1000
    iw_images: int | None = 1000
    figures: bool = True
    progress: bool = True
    #: The run folder; None: ``runs/FAMILY-DATASET-TIMESTAMP`` (never an existing one).
    out: Path | None = None
    resume: bool = False
    #: Experiment tracking into ``RUN/tensorboard/``: a :data:`~ppl_vae.tracking.TRACKERS` name
    #: (``"tensorboard"``) or None.
    log: str | None = None
    #: ``"binarized-mnist"``: the literature's protocol (:mod:`ppl_vae.literature`) — training on
    #: fresh bits every epoch, NLL with ``protocol_samples`` draws on the fixed test bits.
    protocol: str | None = None
    protocol_samples: int = 5000
    #: Uniform dequantization of 8-bit images for continuous likelihoods (``"auto"``: on when
    #: the likelihood is not Bernoulli and the data are 8-bit images; ``"on"``; ``"off"``).
    dequantize: str = "auto"

    def __post_init__(self) -> None:
        check_tracker(self.log)
        check_protocol(self.protocol, self.dataset)

    def corruptions(self) -> tuple[str | None, str | None]:
        """(training, evaluation) corruption specs; ``none`` and absent both give None."""
        train = self.corruption
        if train is None:
            train = MODEL_PRESETS[self.model_family].get("corruption")
        train = _spec(train)
        evaluation = _spec(self.eval_corruption) if self.eval_corruption is not None else train
        return train, evaluation


def preset_objective(family: str, tc: TrainConfig) -> TrainConfig:
    """``tc`` with the model family's own objective (the IWAE models') when it asks for ``auto``."""
    preset = MODEL_PRESETS.get(family, {})
    if tc.objective != "auto" or "objective" not in preset:
        return tc
    particles = preset.get("particles", 1) if tc.num_particles == 1 else tc.num_particles
    return replace(tc, objective=preset["objective"], num_particles=particles)


def _dequantize(setting: str, likelihood: str, binarize: bool, data: ImageData) -> bool:
    """Whether this run trains and scores on dequantized images (see :class:`RunConfig`)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"dequantize must be 'auto', 'on' or 'off', got {setting!r}")
    if setting == "off" or binarize:
        return False
    if setting == "on":
        if likelihood == "bernoulli":
            raise ValueError(
                "dequantize='on' is for continuous likelihoods; the Bernoulli likelihood is not a "
                "density on [0, 1] (use --binarize for binary data, or another likelihood)"
            )
        return True
    if likelihood == "bernoulli" or len(data.image_shape) != 3:
        return False
    try:
        check_8bit(
            data.test_x[:1000] if isinstance(data.test_x, torch.Tensor) else data.train_x[:1]
        )
    except (DataError, TypeError):
        return False
    return True


def _spec(spec: str | None) -> str | None:
    return None if spec is None or spec.strip().lower() in ("", "none") else spec


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def load_run_data(
    dataset: str,
    root: str | None,
    train_size: int | None,
    test_size: int | None,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    seed: int = 0,
) -> ImageData:
    """The data set of a run: the first ``train_size``/``test_size`` points (None or 0: all)."""
    data = load_dataset(dataset, root, device=device, image_size=image_size, split_seed=seed)
    return data.subset(train_size or None, test_size or None)


def _run_folder(rc: RunConfig) -> Path:
    if rc.resume and rc.out is None:
        raise ValueError("--resume needs --out RUN_FOLDER (the run to continue)")
    if rc.out is not None:
        return Path(rc.out)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(rc.dataset).stem or "data")
    out = Path("runs") / f"{rc.model_family}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return out.with_name(f"{out.name}-{os.getpid()}") if out.exists() else out


def _check_resumable(ckpt: Path, saved: dict[str, Any], run_config: dict[str, Any]) -> None:
    """A run resumes only with the settings that made it (``saved``, the checkpoint's config):
    same model, data and corruption."""
    saved = dict(saved)
    if isinstance(saved.get("model"), dict):  # settings added later take their defaults
        saved["model"] = {**asdict(ModelConfig()), **saved["model"]}
    for key, value in run_config.items():
        if key not in saved and not value:  # a setting added later, off in the saved run
            continue
        if _jsonable(saved.get(key)) != _jsonable(value):
            what = "model settings " if key == "model" else f"{key}="
            raise CheckpointError(
                f"{ckpt} was trained with {what}{saved.get(key)!r}, not {value!r}; pass the same "
                "options to resume it"
            )


def _jsonable(obj: Any) -> Any:
    """Normalise tuples to lists etc. so configs compare equal however they were stored."""
    return json.loads(json.dumps(obj))


def train_run(
    mc: ModelConfig, tc: TrainConfig, rc: RunConfig, data: ImageData | None = None
) -> dict[str, Any]:
    """Train, evaluate and write one run folder (see the module docstring); return the metrics."""
    train_spec, eval_spec = rc.corruptions()
    main = distributed.is_main()  # under torchrun, rank 0 alone prints, evaluates and writes
    say = print if main else _quiet
    out = distributed.agree(_run_folder(rc))
    ckpt = out / CHECKPOINT_NAME
    device = resolve_device(tc.device)
    if data is None:
        data = load_run_data(
            rc.dataset, rc.data_root, rc.train_size, rc.test_size, device, rc.image_size, tc.seed
        )
    if rc.likelihood_from_data:
        name, kwargs = default_likelihood(data)
        mc = replace(mc, likelihood=name, likelihood_kwargs={**kwargs, **mc.likelihood_kwargs})
    tc = preset_objective(rc.model_family, tc)
    saved = load_checkpoint(ckpt)["config"] if rc.resume and ckpt.exists() else None
    setting = rc.dequantize
    if saved is not None and setting == "auto":  # a run resumes as it was trained
        setting = "on" if saved.get("dequantize") else "off"
    deq = _dequantize(setting, mc.likelihood, tc.binarize, data)
    tc = replace(tc, dequantize=deq)
    if rc.protocol is not None:
        check_protocol_model(mc.likelihood, data.test_x)
    run_config = {
        "model": asdict(mc),
        "model_family": rc.model_family,
        "corruption": train_spec,
        "dataset": rc.dataset,
        "image_size": rc.image_size,
        "train_size": rc.train_size,
        "test_size": rc.test_size,
        "dequantize": deq,
    }
    if rc.resume:
        if saved is None:
            load_checkpoint(ckpt)  # raises the error that names the missing checkpoint
        _check_resumable(ckpt, saved, run_config)
    elif ckpt.exists():
        raise CheckpointError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    distributed.barrier()  # every rank checked the folder before rank 0 writes into it
    if main:
        out.mkdir(parents=True, exist_ok=True)
    say(f"ppl-vae: {rc.model_family} on {rc.dataset}, device {device}, run folder {out}")
    model = build_model(mc, data.image_shape, seed=tc.seed)
    n_params = sum(p.numel() for p in model.parameters())
    objective = resolve_objective(tc.objective, model, device)
    if tc.precision == "bf16" and objective == "jit-trace":
        objective = "trace"  # what fit runs under autocast
    say(
        f"model: {mc.net} encoder/decoder, latent {mc.latent_dim}, prior {mc.prior}, "
        f"likelihood {mc.likelihood}, guide {mc.guide}"
        + (f", corruption {train_spec}" if train_spec else "")
        + f"; {n_params:,} parameters; objective {objective}"
        + (" (auto)" if tc.objective == "auto" else "")
    )
    if main:
        write_json(out / "config.json", {**run_config, "train": asdict(tc)})
    tracker = make_tracker(rc.log, out / "tensorboard", {**run_config, "train": asdict(tc)})
    # The corruption's own generator is seeded, so a fresh run is reproducible; on resume fit
    # continues it from the state saved in the checkpoint.
    from .corruptions import make_corruption

    corruption = make_corruption(train_spec, seed=tc.seed) if train_spec else None
    t0 = time.perf_counter()
    monitor_x = data.test_x
    if deq and isinstance(monitor_x, torch.Tensor):  # the per-epoch test ELBO on the same scale
        monitor_x = dequantize(monitor_x, torch.Generator(device=monitor_x.device).manual_seed(0))
    history = fit(
        model,
        data.train_x,
        tc,
        test_x=monitor_x,
        corruption=corruption,
        checkpoint_path=ckpt,
        resume=rc.resume,
        extra_state=run_config,
        progress=rc.progress,
        callbacks=(tracker,),
    )
    train_seconds = time.perf_counter() - t0
    if not main:
        distributed.barrier()  # rank 0 evaluates and writes the files
        return {}
    print("evaluating on the test set ...")
    metrics = evaluate(
        model,
        data.test_x,
        iw_samples=rc.iw_samples,
        iw_images=rc.iw_images,
        progress=rc.progress,
        dequantize=deq,
    )
    with eval_mode(model):
        if len(data.image_shape) == 3:  # PSNR and corrupted inputs are image metrics
            metrics.update(image_metrics(model, data.test_x, eval_spec, tc.seed))
    metrics.update(
        protocol_metrics(model, data.test_x, rc.protocol, rc.protocol_samples, rc.progress)
    )
    step = len(history.epoch)  # also when a resumed run had no epochs left to train
    tracker.log_metrics(metrics, step)
    log_model_images(tracker, model, data.test_x, step=step, seed=tc.seed)
    tracker.log_hparams()
    tracker.close()
    history_record = {k: v for k, v in history.to_dict().items() if k != "seconds"}
    metrics.update(
        {
            "dataset": rc.dataset,
            "model_family": rc.model_family,
            "corruption": train_spec,
            "num_parameters": n_params,
            "objective": objective if isinstance(objective, str) else objective_name(objective),
            "epochs": len(history.epoch),
            "device": str(device),
            "torch": torch.__version__,
            "history": history_record,
        }
    )
    write_json(out / "metrics.json", metrics)
    write_json(
        out / "timing.json",
        {
            "train_seconds_this_invocation": train_seconds,
            "seconds_per_epoch": history.seconds,
        },
    )
    if rc.figures:
        from .plots import save_run_figures

        for path in save_run_figures(
            model,
            data.test_x,
            history,
            out,
            train_x=data.train_x,
            corruption=eval_spec,
            seed=tc.seed,
        ):
            print(f"figure: {path}")
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    print(f"metrics: {out / 'metrics.json'}")
    distributed.barrier()
    return {**metrics, "train_seconds_this_invocation": train_seconds}


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``print`` for ranks other than 0."""


def _run_settings(run: Path) -> dict[str, Any]:
    return load_checkpoint(run)["config"]


def evaluate_run(
    run: str | Path,
    *,
    iw_samples: int = 1000,
    iw_images: int | None = None,
    data_root: str | None = None,
    device: str = "auto",
    progress: bool = True,
    protocol: str | None = None,
    protocol_samples: int = 5000,
) -> dict[str, Any]:
    """Reload a run's model and score it on its test set; writes ``RUN/evaluation.json``. With
    ``protocol="binarized-mnist"`` also the literature's NLL report (:mod:`ppl_vae.literature`)."""
    run = Path(run)
    dev = resolve_device(device)
    model = load_model(run, device=dev)
    saved = _run_settings(run)
    check_protocol(protocol, saved["dataset"])
    data = load_run_data(
        saved["dataset"],
        data_root,
        saved.get("train_size"),
        saved.get("test_size"),
        dev,
        saved.get("image_size"),
        saved.get("train", {}).get("seed", 0),
    )
    if protocol is not None:
        check_protocol_model(saved["model"]["likelihood"], data.test_x)
    metrics = evaluate(
        model,
        data.test_x,
        iw_samples=iw_samples,
        iw_images=iw_images,
        progress=progress,
        dequantize=bool(saved.get("dequantize", False)),
    )
    if len(data.image_shape) == 3:
        metrics.update(image_metrics(model, data.test_x, saved.get("corruption"), seed=0))
    metrics.update(protocol_metrics(model, data.test_x, protocol, protocol_samples, progress))
    write_json(run / "evaluation.json", metrics)
    return metrics


def sample_run(
    run: str | Path,
    n: int = 64,
    *,
    out: str | Path | None = None,
    mean: bool = True,
    seed: int = 0,
    device: str = "auto",
) -> Path:
    """Reload a run's model and write a grid of ``n`` samples (means E[x|z], or draws x ~ p(x|z)
    with ``mean=False``) to ``out`` (default ``RUN/samples-SEED.png``)."""
    from .plots import save_grid

    run = Path(run)
    model = load_model(run, device=resolve_device(device))
    if len(model.image_shape) != 3:
        raise ValueError(
            f"sample grids need image data; this run's data have shape {model.image_shape}"
        )
    path = Path(out) if out is not None else run / f"samples-{seed}.png"
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        images = model.sample(n, mean=mean)
    kind = "means E[x | z]" if mean else "draws x ~ p(x | z)"
    return save_grid(images, max(1, int(n**0.5)), path, f"{n} samples ({kind}), z ~ p(z)")
