"""M2 on the codes of Kingma et al.'s own M1: a diagnostic for the stacked M1+M2 with 100 labels.

Kingma et al. (2014) published the M1 their 100-label M1+M2 run used:
``models/mnist_z_x_50-500-500_longrun`` in https://github.com/dpkingma/nips14-ssl (MIT
licence; a 784-500-500-50 softplus VAE with a Bernoulli likelihood, trained for about 10 000
epochs). This script reads its encoder (``v.ndict.tar.gz``: a tar of ``arrays.npz``, read with
``allow_pickle=False``, and ``names.txt``) and its decoder (``w.ndict.tar.gz``, for the ELBO only),
and either

- ``probe``: prints its test ELBO and how much of the class its codes carry (logistic regression
  and 5-NN with all 50 000 labels, logistic regression and 1-NN with the 100 labels of seed 0),
  the same scores as ``../m1-probe/probe.py``; or
- ``m2``: runs ``experiments/ss_vae.py --features m1`` with this M1 in place of ours (the units
  kept are those whose posterior mean varies by more than ``--m1-active-threshold``, as Kingma et
  al.'s ``learn_yz_x_ss.py``: std > 0.1); every other argument is ss_vae.py's.

    git clone https://github.com/dpkingma/nips14-ssl /tmp/nips14-ssl
    python results/ssvae/kingma-m1/kingma_m1.py /tmp/nips14-ssl probe
    python results/ssvae/kingma-m1/kingma_m1.py /tmp/nips14-ssl m2 --features m1 --m1-inputs \
        sample --sup-num 100 --schedule joint --aux-loss-multiplier 460 --epochs 50 --out OUT

Not part of the library: the weights are not shipped with ppl_vae and CI does not run this.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
MODEL = Path("models/mnist_z_x_50-500-500_longrun")


def loadz(path: Path) -> dict[str, torch.Tensor]:
    """An anglepy ``.ndict.tar.gz``: arrays ``arr_i`` in ``arrays.npz``, their names in order."""
    with tarfile.open(path) as tar:
        arrays_member, names_member = tar.getmembers()[:2]
        arrays = np.load(io.BytesIO(tar.extractfile(arrays_member).read()), allow_pickle=False)
        names = tar.extractfile(names_member).read().decode().split()
    return {n: torch.from_numpy(arrays[f"arr_{i}"]).double() for i, n in enumerate(names)}


class KingmaM1:
    """q(z|x) and p(x|z) of the published M1 (column-vector weights, as anglepy stores them)."""

    def __init__(self, repo: Path) -> None:
        self.v = loadz(repo / MODEL / "v.ndict.tar.gz")
        self.w = loadz(repo / MODEL / "w.ndict.tar.gz")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, ``(N, 50)`` each."""
        v = self.v
        h = x.reshape(x.shape[0], -1).double()
        for i in range(2):
            h = F.softplus(h @ v[f"w{i}"].T + v[f"b{i}"].T)
        return h @ v["mean_w"].T + v["mean_b"].T, h @ v["logvar_w"].T + v["logvar_b"].T

    @torch.no_grad()
    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        w, h = self.w, z
        for i in range(2):
            h = F.softplus(h @ w[f"w{i}"].T + w[f"b{i}"].T)
        return h @ w["out_w"].T + w["out_b"].T

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, seed: int = 0) -> float:
        """One-draw ELBO per image (analytic KL), averaged."""
        x = x.reshape(x.shape[0], -1).double()
        mu, lv = self.encode(x)
        g = torch.Generator().manual_seed(seed)
        z = mu + (0.5 * lv).exp() * torch.randn(mu.shape, generator=g, dtype=mu.dtype)
        rec = -F.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="none")
        kl = 0.5 * (mu**2 + lv.exp() - 1 - lv).sum(1)
        return float((rec.sum(1) - kl).mean())


def probe(m1: KingmaM1) -> dict[str, float | int]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from ppl_vae import load_dataset
    from ppl_vae.semisupervised import active_units, split_labelled

    data = load_dataset("mnist", verbose=False)
    train_mu, _ = m1.encode(data.train_x[:50000])
    test_mu, _ = m1.encode(data.test_x)
    keep = active_units(train_mu.float())
    x_all, y_all = train_mu[:, keep].numpy(), data.train_y[:50000].numpy()
    x_test, y_test = test_mu[:, keep].numpy(), data.test_y.numpy()
    split = split_labelled(train_mu[:, keep].float(), data.train_y[:50000], 100, seed=0)
    x100, y100 = split.sup_x.numpy(), split.sup_y.numpy()
    test_bin = torch.bernoulli(data.test_x, generator=torch.Generator().manual_seed(0))
    return {
        "test_elbo_grey_levels": m1.elbo(data.test_x),
        "test_elbo_one_binarization": m1.elbo(test_bin),
        "active_units": int(keep.sum()),
        "logistic_all_labels": LogisticRegression(max_iter=2000)
        .fit(x_all, y_all)
        .score(x_test, y_test),
        "knn5_all_labels": KNeighborsClassifier(5).fit(x_all, y_all).score(x_test, y_test),
        "logistic_100_labels": LogisticRegression(max_iter=2000)
        .fit(x100, y100)
        .score(x_test, y_test),
        "knn1_100_labels": KNeighborsClassifier(1).fit(x100, y100).score(x_test, y_test),
    }


def run_m2(m1: KingmaM1, repo: str, argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("ss_vae", ROOT / "experiments" / "ss_vae.py")
    ss_vae = importlib.util.module_from_spec(spec)
    sys.modules["ss_vae"] = ss_vae
    spec.loader.exec_module(ss_vae)

    def m1_codes(args, train_x, test_x):  # replaces ss_vae.m1_codes: no M1 of ours is trained
        mu, log_var = m1.encode(train_x)
        test_mu, _ = m1.encode(test_x)
        n_fit = train_x.shape[0] - args.validation_num
        keep = mu[:n_fit].var(0) > args.m1_active_threshold
        print(f"Kingma et al.'s M1: {int(keep.sum())} of 50 units active; M2 reads those")
        codes = {"train": mu, "train_scale": (0.5 * log_var).exp(), "test": test_mu}
        info = {
            "label": "Kingma et al.'s M1",  # the table's name for it
            "model": "dpkingma/nips14-ssl " + str(MODEL),
            "active_units": int(keep.sum()),
        }
        return {k: c[:, keep].float().contiguous() for k, c in codes.items()}, info

    ss_vae.m1_codes = m1_codes
    ss_vae.main(argv, prog=f"python results/ssvae/kingma-m1/kingma_m1.py {repo} m2")


if __name__ == "__main__":
    repo, what, *rest = sys.argv[1:]
    torch.set_num_threads(1)
    m1 = KingmaM1(Path(repo))
    if what == "probe":
        print(json.dumps(probe(m1), indent=1))
    else:
        run_m2(m1, repo, rest)
