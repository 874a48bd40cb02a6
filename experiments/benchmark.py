"""Training speed of ppl_vae against hand-written PyTorch, side by side in one run.

Thin wrapper around :func:`ppl_vae.bench.main` (also ``ppl-vae benchmark``)::

    python experiments/benchmark.py --out results/benchmark.json
    python experiments/benchmark.py --nets mlp --objectives jit-meanfield --epochs 3 --threads 1

See ``ppl_vae/bench.py`` for what is measured and how.
"""

from __future__ import annotations

import sys

from ppl_vae.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="experiments/benchmark.py"))
