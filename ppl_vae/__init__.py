"""ppl_vae: auto-encoders and variational auto-encoders as Pyro probabilistic programs.

Every model is one Pyro ``model``/``guide`` pair (:class:`VAE`) built from swappable parts — a
prior, a likelihood, encoder/decoder networks and a guide family — and trained by one SVI loop
(:func:`fit`). See the README for the protocol to plug in your own prior or likelihood.
"""

__version__ = "0.1.0"

from . import corruptions, latent, likelihoods, nets, pca, priors
from .checkpoint import load_checkpoint, save_checkpoint
from .data import ImageData, load_dataset
from .errors import CheckpointError, DataError, TrainingDivergedError
from .evaluate import (
    bits_per_dim,
    elbo,
    elbo_per_image,
    evaluate,
    log_likelihood,
    reconstruction_error,
)
from .model import GUIDES, VAE, ModelConfig, NormalGuide, PointMassGuide, build_model
from .train import History, Objective, TrainConfig, fit, make_elbo, resolve_objective

__all__ = [
    "GUIDES",
    "VAE",
    "CheckpointError",
    "DataError",
    "History",
    "ImageData",
    "ModelConfig",
    "NormalGuide",
    "Objective",
    "PointMassGuide",
    "TrainConfig",
    "TrainingDivergedError",
    "bits_per_dim",
    "build_model",
    "corruptions",
    "elbo",
    "elbo_per_image",
    "evaluate",
    "fit",
    "latent",
    "likelihoods",
    "load_checkpoint",
    "load_dataset",
    "log_likelihood",
    "make_elbo",
    "nets",
    "pca",
    "priors",
    "reconstruction_error",
    "resolve_objective",
    "save_checkpoint",
]
