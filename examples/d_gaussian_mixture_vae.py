"""A Gaussian-mixture VAE: c ~ Categorical(π), z | c ~ N(μ_c, σ_c²), x | z ~ decoder(z).

The component ``c`` is a discrete latent that the guide does not sample: the ``auto`` objective
sees it and trains with ``TraceEnum_ELBO``, which sums it out exactly. The script prints the
objective used, the test ELBO, the importance-sampled log p(x) (``c`` is summed out there too)
and the learned mixture weights; with ``--out DIR`` it also writes a PNG with one row of decoded
samples per component.

    .venv/bin/python examples/d_gaussian_mixture_vae.py --out /tmp/gmvae   # ~1-2 min, 2 cores
    .venv/bin/python examples/d_gaussian_mixture_vae.py --tiny             # seconds, for tests
"""

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

import ppl_vae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="tiny data and budget (smoke test)")
parser.add_argument("--out", type=Path, help="folder for gmvae_samples.png (optional)")
args = parser.parse_args()
n_train, n_test, epochs, k = (300, 50, 1, 20) if args.tiny else (10000, 1000, 5, 500)
data = ppl_vae.load_dataset("mnist", verbose=False).subset(n_train, n_test)

config = ppl_vae.ModelConfig(
    latent_dim=16, hidden=(256,), prior="gmm", prior_kwargs={"n_components": 10}
)
model = ppl_vae.build_model(config, data.image_shape, seed=0)
objective = ppl_vae.resolve_objective("auto", model, "cpu")  # what fit does with the default
print(f"objective: auto -> {objective} ({type(ppl_vae.make_elbo(objective)).__name__})")
history = ppl_vae.fit(
    model,
    data.train_x,
    ppl_vae.TrainConfig(epochs=epochs, device="cpu"),
    test_x=data.test_x,
    progress=False,
)
print("test ELBO per epoch:", [round(v, 2) for v in history.test_elbo])

with torch.no_grad():
    test_elbo = ppl_vae.elbo(model, data.test_x)
    log_px = ppl_vae.log_likelihood(model, data.test_x[:500], num_samples=k).mean().item()
    weights = F.softmax(model.prior.logits, dim=0)
print(
    f"test ELBO {test_elbo:.2f} nats/image; IS log p(x) (K = {k}, "
    f"{min(500, n_test)} images) {log_px:.2f}"
)
print("mixture weights π:", " ".join(f"{w:.3f}" for w in weights.tolist()))

if args.out:
    import ppl_vae.plots

    with torch.no_grad():  # 8 draws z ~ N(μ_c, σ_c²) per component c, decoded to mean images
        scales = F.softplus(model.prior.raw_scales)
        noise = torch.randn(len(weights), 8, config.latent_dim)
        z = model.prior.locs[:, None] + scales[:, None] * noise  # (components, 8, latent_dim)
        rows = list(model.decode(z))  # one (8, 1, 28, 28) tensor per component
    labels = [f"c={c}, π={w:.2f}" for c, w in enumerate(weights.tolist())]
    args.out.mkdir(parents=True, exist_ok=True)
    path = ppl_vae.plots.save_image_rows(
        rows, labels, args.out / "gmvae_samples.png", "GMVAE: samples per mixture component"
    )
    print(f"figure: {path}")
