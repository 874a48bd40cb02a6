"""One comparison table of the point-mass family and the VAE, trained with the same options.

Not a numbered experiment: a thin wrapper that runs the ``ppl-vae compare`` command (as
``python -m ppl_vae compare``, so it depends on the command line only). It trains the AE,
the denoising AE (50% pixel dropout), the sparse AE (Laplace prior, λ = 1) and the VAE with the
same net, latent size, likelihood, data and budget, adds PCA of the same size, scores all on the
same clean and corrupted test images, and writes ``OUT/compare.md`` and ``OUT/compare.json``
(plus each model's run folder ``OUT/MODEL``). Every ``ppl-vae compare`` option passes through:

    python experiments/compare_models.py                        # quick: 10k images, 3 epochs
    python experiments/compare_models.py --train-size 0 --test-size 0 --epochs 20   # all of MNIST
    python experiments/compare_models.py --tiny                 # smoke test (seconds)

Runs are never overwritten: a second run into the same ``--out`` needs ``--resume`` (which
continues each model's checkpoint up to ``--epochs`` and re-scores it) or another ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TINY = [
    "--train-size", "256", "--test-size", "100", "--epochs", "1", "--hidden", "32",
    "--latent-dim", "4", "--iw-samples", "10", "--iw-images", "20", "--no-figures",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options are passed to `ppl-vae compare` (see `ppl-vae compare --help`).",
    )
    p.add_argument("--out", type=Path, default=Path("results/compare_models"))
    p.add_argument("--tiny", action="store_true", help="smoke test on 256 images")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args, rest = p.parse_known_args(argv)
    env = dict(os.environ)
    if args.threads:  # torch's thread pool reads it at start-up
        env["OMP_NUM_THREADS"] = str(args.threads)
    extra = [*TINY, "--quiet"] if args.tiny else []
    # the plain Trace_ELBO the committed table was produced with, unless --objective is given
    # (the library's default "auto" compiles it: the same objective, other float rounding)
    if not any(a == "--objective" or a.startswith("--objective=") for a in rest):
        extra += ["--objective", "trace"]
    cmd = [sys.executable, "-m", "ppl_vae", "compare", "--out", str(args.out), *extra, *rest]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
