"""A VAE on a table: 2-D points on a noisy circle of radius 3, with a Gaussian likelihood whose
mean has the identity link (``likelihood_kwargs={"link": "identity", "variance": σ²}``).

The data are generated here (radius 3 plus N(0, 0.1²) radial noise, uniform angle), shape
``(N, 2)``: the MLP encoder/decoder take any data shape. Draws ``model.sample(n, mean=False)``
(z from the prior, then x with its Gaussian noise) come back on the circle: their mean radius must
match the data's within a stated tolerance. The default sigmoid link would squash the mean into
[0, 1]: the library refuses such data before training, and the script shows the error.

    .venv/bin/python examples/e_table_circle.py          # ~1 min on 2 CPU cores
    .venv/bin/python examples/e_table_circle.py --tiny   # seconds, for tests
"""

import argparse
import math

import torch

import ppl_vae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="tiny budget (smoke test)")
args = parser.parse_args()
tiny, full = (1000, 20, 1e-2, 64, 0.3), (5000, 60, 3e-3, 128, 0.1)
n, epochs, lr, batch, tolerance = tiny if args.tiny else full
torch.set_num_threads(1)  # networks this small run faster on one thread than on several

g = torch.Generator().manual_seed(0)
angle = 2 * math.pi * torch.rand(n, generator=g)
radius = 3.0 + 0.1 * torch.randn(n, generator=g)
x = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)  # (n, 2)
train_x, test_x = x[: n * 4 // 5], x[n * 4 // 5 :]

try:  # the default link: a sigmoid mean in [0, 1] cannot reach points at radius 3
    sigmoid = ppl_vae.build_model(ppl_vae.ModelConfig(likelihood="gaussian"), (2,))
    ppl_vae.fit(sigmoid, train_x, ppl_vae.TrainConfig(epochs=1), progress=False)
except ppl_vae.DataError as e:
    print(f"sigmoid link refused: DataError: {e}")

# the circle is a 1-D manifold: a 1-D code, which the decoder wraps around it (with 2-D codes,
# prior draws near the origin, where no data point is encoded, decode to points inside the ring)
config = ppl_vae.ModelConfig(
    latent_dim=1,
    hidden=(64, 64),
    likelihood="gaussian",
    likelihood_kwargs={"link": "identity", "variance": 0.01},
)
model = ppl_vae.build_model(config, (2,), seed=0)
train = ppl_vae.TrainConfig(epochs=epochs, lr=lr, batch_size=batch, device="cpu")
history = ppl_vae.fit(model, train_x, train, test_x=test_x, progress=False)
print(f"test ELBO after {epochs} epochs: {history.test_elbo[-1]:.3f} nats/point")

with torch.no_grad():
    samples = model.sample(4000, mean=False)  # (4000, 2): x ~ p(x | z), z ~ p(z)
r_data, r_samples = x.norm(dim=1), samples.norm(dim=1)
print(f"radius of data:    mean {r_data.mean():.3f}, std {r_data.std():.3f}")
print(f"radius of samples: mean {r_samples.mean():.3f}, std {r_samples.std():.3f}")
gap = abs(r_samples.mean() - r_data.mean()).item()
print(f"mean radii agree within {tolerance}: {gap < tolerance} (|Δ| = {gap:.3f})")
assert gap < tolerance, f"sample radius off by {gap:.3f} (tolerance {tolerance})"
