"""ppl_vae: auto-encoders and variational auto-encoders as Pyro probabilistic programs.

A model is a Pyro ``model``/``guide`` pair: the library's :class:`VAE` builds one from swappable
parts — a prior, a likelihood, encoder/decoder networks and a guide family — and :func:`fit`
trains any pair (a user's own functions too) with any Pyro ELBO and optimiser on one SVI path;
:func:`elbo` and :func:`log_likelihood` score any pair from its traces. See the README for the
calling convention and the protocols to plug in your own parts.
"""

__version__ = "0.2.0"

from . import (
    completion,
    conditional,
    corruptions,
    distributed,
    guides,
    latent,
    likelihoods,
    nets,
    objectives,
    pca,
    priors,
    semisupervised,
    sources,
    tracking,
)
from .batching import EpochBatches
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .data import DatasetNotFoundError, ImageData, default_likelihood, load_dataset
from .errors import CheckpointError, DataError, ProgramError, TrainingDivergedError
from .evaluate import elbo, elbo_per_image, evaluate, image_metrics, log_likelihood
from .guides import GUIDES, IAFGuide, LowRankNormalGuide, NormalGuide, PointMassGuide
from .metrics import bits_per_dim, psnr, reconstruction_error, reconstruction_psnr
from .model import (
    MODEL_PRESETS,
    VAE,
    ModelConfig,
    build_model,
    preset_config,
    reset_parameters,
)
from .objectives import IWAE_ELBO, OBJECTIVES, make_elbo, register_objective, resolve_objective
from .optim import MultiTensorAdam
from .program import Program, as_program, data_plate
from .train import History, TrainConfig, fit, resolve_device

__all__ = [
    "GUIDES",
    "IWAE_ELBO",
    "MODEL_PRESETS",
    "OBJECTIVES",
    "VAE",
    "CheckpointError",
    "DataError",
    "DatasetNotFoundError",
    "EpochBatches",
    "History",
    "IAFGuide",
    "ImageData",
    "LowRankNormalGuide",
    "ModelConfig",
    "MultiTensorAdam",
    "NormalGuide",
    "PointMassGuide",
    "Program",
    "ProgramError",
    "TrainConfig",
    "TrainingDivergedError",
    "as_program",
    "bits_per_dim",
    "build_model",
    "completion",
    "conditional",
    "corruptions",
    "data_plate",
    "default_likelihood",
    "distributed",
    "elbo",
    "elbo_per_image",
    "evaluate",
    "fit",
    "guides",
    "image_metrics",
    "latent",
    "likelihoods",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "log_likelihood",
    "make_elbo",
    "nets",
    "objectives",
    "pca",
    "preset_config",
    "priors",
    "psnr",
    "reconstruction_error",
    "reconstruction_psnr",
    "register_objective",
    "reset_parameters",
    "resolve_device",
    "resolve_objective",
    "save_checkpoint",
    "semisupervised",
    "sources",
    "tracking",
]
