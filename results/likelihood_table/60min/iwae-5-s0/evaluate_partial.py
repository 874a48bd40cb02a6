import json, torch, pyro, sys, time
sys.path.insert(0, "experiments")
from likelihood_table import model_config
from ppl_vae import build_model, load_dataset
from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.literature import binarize_fixed, density_report
torch.set_num_threads(1)
d = load_dataset("mnist", verbose=False)
bits = binarize_fixed(d.test_x)[:2000]
ck = load_checkpoint("results/likelihood_table/60min/iwae-5-s0/checkpoint.pt")
m = build_model(model_config("iwae-5"), (1, 28, 28), seed=0)
m.load_state_dict(ck["model_state"])
pyro.set_rng_seed(0)
r = density_report(m, bits, num_samples=5000, bounds=(5, 50))
h = ck["history"]
out = {"model": "iwae-5", "seed": 0, "status": "stopped at epoch %d of the 335 planned (60-minute budget calibrated on an idle core); the learning rate had decayed to %.2e of the planned 1e-4 end" % (h["epoch"][-1], 3e-3 * (1e-4/3e-3) ** ((h["epoch"][-1]-1)/334)),
       "epochs": h["epoch"][-1], "train_seconds": sum(h["seconds"]), "monitor_test_elbo_last": h["test_elbo"][-1], "test": r,
       "command": "python experiments/likelihood_table.py --minutes 60 --seeds 0 --models iwae-5 --threads 1 (stopped), then density_report on the first 2000 test bits from the checkpoint (/tmp/iwae5_eval.py, recorded here)"}
open("results/likelihood_table/60min/iwae-5-s0/partial_result.json", "w").write(json.dumps(out, indent=2) + "\n")
print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})
