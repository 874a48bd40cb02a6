"""Your own Pyro model and guide, trained by ``ppl_vae.fit`` and scored by ``log_likelihood``.

The program below is two plain functions, as in Pyro's tutorials: ``pyro.module`` registers an
encoder and a decoder, ``pyro.param`` a learnable prior scale (positive constraint), and
``ppl_vae.data_plate(x, num_data)`` scales each mini-batch to the data set (``fit`` passes
``num_data`` because both functions declare it). No library class is involved.

    .venv/bin/python examples/a_own_model_guide.py          # ~1 min on 2 CPU cores
    .venv/bin/python examples/a_own_model_guide.py --tiny   # seconds, for tests
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn import functional as F

import ppl_vae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="tiny data and budget (smoke test)")
args = parser.parse_args()
n_train, n_test, epochs, k = (500, 50, 1, 20) if args.tiny else (10000, 500, 5, 500)

data = ppl_vae.load_dataset("mnist", verbose=False).subset(n_train, n_test)
D, LATENT = 28 * 28, 16
pyro.set_rng_seed(0)  # the networks' initial weights (fit seeds only what happens in training)
encoder = nn.Sequential(nn.Flatten(), nn.Linear(D, 256), nn.ReLU(), nn.Linear(256, 2 * LATENT))
decoder = nn.Sequential(nn.Linear(LATENT, 256), nn.ReLU(), nn.Linear(256, D))


def model(x, num_data=None):
    pyro.module("decoder", decoder)
    scale = pyro.param("prior_scale", torch.tensor(1.0), constraint=constraints.positive)
    with ppl_vae.data_plate(x, num_data):
        z = pyro.sample("z", dist.Normal(0.0, scale).expand([LATENT]).to_event(1))
        logits = decoder(z).reshape(*z.shape[:-1], *x.shape[1:])
        # Bernoulli cross-entropy on grey levels in [0, 1] (not binary): no support check
        pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(3), obs=x)


def guide(x, num_data=None):
    pyro.module("encoder", encoder)
    with ppl_vae.data_plate(x, num_data):
        z_loc, z_raw_scale = encoder(x).chunk(2, dim=-1)
        pyro.sample("z", dist.Normal(z_loc, F.softplus(z_raw_scale) + 1e-5).to_event(1))


history = ppl_vae.fit(
    (model, guide),
    data.train_x,
    ppl_vae.TrainConfig(epochs=epochs, device="cpu"),
    test_x=data.test_x,
    progress=False,
)
for epoch, loss, test in zip(history.epoch, history.train_loss, history.test_elbo):
    print(f"epoch {epoch}: train loss {loss:.2f}, test ELBO {test:.2f} nats/image")
print(f"learned prior scale: {pyro.param('prior_scale').item():.4f} (initial 1.0)")
log_px = ppl_vae.log_likelihood((model, guide), data.test_x, num_samples=k)
print(f"test log p(x) ≈ {log_px.mean():.2f} nats/image (importance sampling, K = {k})")
