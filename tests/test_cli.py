"""The command line, run as users run it: in a subprocess, on a small slice of MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ppl_vae.checkpoint import load_checkpoint

TINY = [
    "--train-size",
    "512",
    "--test-size",
    "200",
    "--iw-samples",
    "20",
    "--iw-images",
    "50",
    "--quiet",
    "--hidden",
    "64",
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ppl_vae", *args], capture_output=True, text=True, timeout=300
    )


def test_train_writes_run_folder_and_resumes(mnist, tmp_path: Path):
    out = tmp_path / "run"
    r = _cli("train", "--epochs", "1", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("elbo", "log_likelihood", "bits_per_dim", "reconstruction_mse", "history"):
        assert key in metrics
    assert metrics["log_likelihood"] >= metrics["elbo_same_images"] - 1.0  # IS bound is tighter
    for png in ("reconstructions.png", "samples.png", "elbo_curves.png"):
        assert (out / png).stat().st_size > 1000
    assert json.loads((out / "config.json").read_text())["model"]["latent_dim"] == 32

    # running again into the same folder without --resume must not clobber the run
    r = _cli("train", "--epochs", "2", "--out", str(out), *TINY)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1

    r = _cli("train", "--epochs", "2", "--out", str(out), "--resume", *TINY)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "metrics.json").read_text())["history"]["epoch"] == [1, 2]

    # resuming with other model settings is refused with a message
    r = _cli("train", "--epochs", "3", "--out", str(out), "--resume", *TINY[:-1], "32")
    assert r.returncode == 2 and "model settings" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "0"], "learning rate"),
        (["--latent-dim", "0"], "latent_dim"),
        (["--prior", "cauchy"], "invalid choice"),
        (["--likelihood", "poisson"], "invalid choice"),
        (["--prior-kwargs", "foo=1"], "bad parameters"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_cli_bad_options_fail_clearly(tmp_path: Path, args, message):
    out = [] if "--resume" in args else ["--out", str(tmp_path / "x")]
    r = _cli("train", *out, *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
