"""How much of the digit class M1's codes carry: a throw-away diagnostic for the stacked M1+M2.

Trains M1 (``semisupervised.M1_CONFIG``, Adam 1e-3, batch 100, seed 0) on the 50 000 training
images, on grey levels or on a fresh binarization every epoch, or loads a trained M1, and scores
classifiers on the posterior means of its active units: logistic regression and 5-NN with all
50 000 labels, logistic regression and 1-NN with the 100 labels of ``split_labelled(seed=0)``.

    python results/ssvae/m1-probe/probe.py grey 20 OUT       # OUT.json, OUT.pt
    python results/ssvae/m1-probe/probe.py bin 20 OUT
    python results/ssvae/m1-probe/probe.py load results/ssvae/m1m2/m1-e100-s0/checkpoint.pt OUT
    python results/ssvae/m1-probe/probe.py grey 20 OUT '{"hidden": [200, 200], "activation":
        "tanh"}'                       # a 4th argument: JSON of ModelConfig / TrainConfig changes
    python results/ssvae/m1-probe/probe.py grey 10 OUT '{"objective": "iwae", "num_particles": 5}'
"""

import json
import sys
import time

import pyro
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from ppl_vae import ModelConfig, TrainConfig, build_model, fit, load_dataset, load_model
from ppl_vae.latent import encode_dataset
from ppl_vae.semisupervised import M1_CONFIG, active_units, split_labelled

mode, arg, out = sys.argv[1:4]
changes = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
train_keys = {"objective", "num_particles"}
model_changes = {k: v for k, v in changes.items() if k not in train_keys}
train_changes = {k: v for k, v in changes.items() if k in train_keys}
torch.set_num_threads(1)
data = load_dataset("mnist")
t0 = time.time()
res = {"mode": mode, "changes": changes}
if mode == "load":
    vae = load_model(arg)
    res["checkpoint"] = arg
else:
    config = ModelConfig(**{**M1_CONFIG, **model_changes})
    vae = build_model(config, tuple(data.train_x.shape[1:]), seed=0)
    pyro.clear_param_store()
    tc = TrainConfig(
        epochs=int(arg), batch_size=100, lr=1e-3, seed=0, binarize=mode == "bin", **train_changes
    )
    h = fit(vae, data.train_x[:50000], tc, test_x=data.test_x, checkpoint_path=out + ".pt")
    res |= {"epochs": int(arg), "test_elbo": h.test_elbo[-1]}
train, test = encode_dataset(vae, data.train_x), encode_dataset(vae, data.test_x)
active = active_units(train[:50000])
x_all, y_all = train[:50000, active].numpy(), data.train_y[:50000].numpy()
x_test, y_test = test[:, active].numpy(), data.test_y.numpy()
split = split_labelled(train[:, active], data.train_y, 100, seed=0)
x100, y100 = split.sup_x.numpy(), split.sup_y.numpy()
res["active_units"] = int(active.sum())
res["logistic_all_labels"] = (
    LogisticRegression(max_iter=2000).fit(x_all, y_all).score(x_test, y_test)
)
res["knn5_all_labels"] = KNeighborsClassifier(5).fit(x_all, y_all).score(x_test, y_test)
res["logistic_100_labels"] = LogisticRegression(max_iter=2000).fit(x100, y100).score(x_test, y_test)
res["knn1_100_labels"] = KNeighborsClassifier(1).fit(x100, y100).score(x_test, y_test)
res["minutes"] = (time.time() - t0) / 60
print(json.dumps(res))
with open(out + ".json", "w") as f:
    json.dump(res, f, indent=2)
