"""IWAE (K = 5) with an exponential learning-rate schedule, interrupted and resumed exactly.

Three runs of the same model and seed: one uninterrupted run of E epochs, and one that stops
after E/2 epochs (its checkpoint holds parameters, Adam moments, the scheduler, history and every
random stream) and is resumed by a *fresh* model object with ``resume=True``. The resumed run
must end with bit-identical parameters and per-epoch losses; the script checks and prints it.

    .venv/bin/python examples/b_iwae_schedule_resume.py          # ~1-2 min on 2 CPU cores
    .venv/bin/python examples/b_iwae_schedule_resume.py --tiny   # seconds, for tests
"""

import argparse
import tempfile
from pathlib import Path

import pyro
import torch

import ppl_vae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="tiny data and budget (smoke test)")
args = parser.parse_args()
n_train, n_test, epochs = (300, 100, 2) if args.tiny else (4000, 500, 6)
data = ppl_vae.load_dataset("mnist", verbose=False).subset(n_train, n_test)
config = ppl_vae.ModelConfig(latent_dim=16, hidden=(256,))


def train(epochs, checkpoint=None, resume=False):
    """A fresh model and optimiser each time: what a new process would have."""
    pyro.clear_param_store()
    model = ppl_vae.build_model(config, data.image_shape, seed=0)
    schedule = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 2e-3}, "gamma": 0.8}
    )
    history = ppl_vae.fit(
        model,
        data.train_x,
        ppl_vae.TrainConfig(epochs=epochs, num_particles=5, device="cpu"),
        loss="iwae",
        optim=schedule,
        test_x=data.test_x,
        checkpoint_path=checkpoint,
        resume=resume,
        progress=False,
    )
    return model, history, schedule


straight, h_straight, _ = train(epochs)
with tempfile.TemporaryDirectory() as tmp:
    ckpt = Path(tmp) / "checkpoint.pt"
    train(epochs // 2, ckpt)  # "interrupted" after half the epochs
    resumed, h_resumed, schedule = train(epochs, ckpt, resume=True)

for e, loss, test in zip(h_resumed.epoch, h_resumed.train_loss, h_resumed.test_elbo):
    part = "first run" if e <= epochs // 2 else "resumed"
    print(f"epoch {e} ({part}): IWAE-5 train loss {loss:.3f}, test ELBO {test:.3f} nats/image")
lr = next(iter(schedule.get_state().values()))["scheduler"]["_last_lr"][0]
print(f"learning rate after {epochs} epochs: {lr:.6f} (= 2e-3 * 0.8^{epochs})")
a, b = straight.state_dict(), resumed.state_dict()
same_params = all(torch.equal(a[k], b[k]) for k in a)
same_losses = h_straight.train_loss == h_resumed.train_loss
same_losses &= h_straight.test_elbo == h_resumed.test_elbo
print(f"resumed == uninterrupted: parameters {same_params}, losses {same_losses}")
assert same_params and same_losses, "the resumed run differs from the uninterrupted one"
