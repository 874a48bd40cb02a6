"""Train with the command line, reload the run in Python, sample and score it.

``python -m ppl_vae train`` (the ``ppl-vae`` command) writes a run folder with ``checkpoint.pt``
and ``metrics.json``; ``ppl_vae.load_model(RUN)`` rebuilds the model from the checkpoint's recipe.
The reloaded model must score the CLI's test images as the CLI did: the reconstruction error is
deterministic and must be equal, the test ELBO is a Monte Carlo estimate (one draw of z per image)
and must agree within its sampling error, measured here by repeating it.

    .venv/bin/python examples/f_cli_reload.py [--out RUN]   # ~1 min on 2 CPU cores
    .venv/bin/python examples/f_cli_reload.py --tiny        # seconds, for tests
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import ppl_vae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="tiny data and budget (smoke test)")
parser.add_argument("--out", type=Path, help="run folder to create (default: a temporary one)")
args = parser.parse_args()
n_train, n_test, epochs, k = (300, 100, 1, 20) if args.tiny else (10000, 1000, 3, 500)
tmp = tempfile.TemporaryDirectory()
run = args.out or Path(tmp.name) / "run"

options = f"--epochs {epochs} --train-size {n_train} --test-size {n_test} --iw-samples 0"
cmd = [sys.executable, "-m", "ppl_vae", "train", "--out", str(run), *options.split()]
cmd += ["--no-figures", "--quiet"]
print("$", " ".join(["python", *cmd[1:]]))
cli = subprocess.run(cmd, capture_output=True, text=True)
if cli.returncode != 0:
    sys.exit(f"the CLI failed (exit {cli.returncode}):\n{cli.stderr}")
saved = json.loads((run / "metrics.json").read_text())

model = ppl_vae.load_model(run)
test_x = ppl_vae.load_dataset("mnist", verbose=False).subset(0, n_test).test_x  # the CLI's images
with torch.no_grad():
    samples = model.sample(16)
    mse = ppl_vae.reconstruction_error(model, test_x)
    repeats = []
    for seed in range(5):
        torch.manual_seed(seed)
        repeats.append(ppl_vae.elbo(model, test_x))
    log_px = ppl_vae.log_likelihood(model, test_x[:200], num_samples=k).mean().item()
tmp.cleanup()
print(
    f"reloaded {type(model).__name__} (latent {model.latent_dim}); 16 samples of shape "
    f"{tuple(samples.shape[1:])}, pixel means in [{samples.min():.2f}, {samples.max():.2f}]"
)
print(
    f"reconstruction MSE: metrics.json {saved['reconstruction_mse']:.6f}, reloaded {mse:.6f}, "
    f"equal: {mse == saved['reconstruction_mse']}"
)
mean, sd = sum(repeats) / len(repeats), torch.tensor(repeats).std().item()
tol = 4 * sd * math.sqrt(1 + 1 / len(repeats))  # a single draw vs the mean of 5, at 4 sigma
agree = abs(saved["elbo"] - mean) <= tol
print(
    f"test ELBO: metrics.json {saved['elbo']:.3f}, reloaded {mean:.3f} ± {sd:.3f} (5 draws); "
    f"equal within Monte Carlo error (|Δ| ≤ {tol:.3f}): {agree}"
)
print(f"IS log p(x), K = {k}, {len(test_x[:200])} test images: {log_px:.2f} nats/image")
assert mse == saved["reconstruction_mse"] and agree
