"""Smoke tests: every script of ``examples/`` runs with ``--tiny`` and prints what it shows.

Each script runs as a user would run it (``python examples/NAME.py --tiny``, repository root as
the working directory) in its own subprocess. The subprocesses start together when the first test
asks for them, two at a time (one per core, one torch thread each: on a shared 2-core machine a
second thread per process makes these tiny networks several times slower), so the file takes about
half the sum of the scripts' times. Each test checks its script's exit status and the line of
output that carries the script's claim (the scripts assert their claims themselves, too). The
numbers are meaningless at this budget. Scripts that read MNIST are skipped when it is not
available offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 300

#: script → (needs MNIST, extra arguments, regular expressions its output must match).
#: Listed longest first, so the two workers finish at about the same time.
SCRIPTS: dict[str, tuple[bool, list[str], list[str]]] = {
    "f_cli_reload.py": (
        True,
        [],
        [r"reconstruction MSE: .* equal: True", r"equal within Monte Carlo error .*: True"],
    ),
    "b_iwae_schedule_resume.py": (
        True,
        [],
        [r"learning rate after 2 epochs", r"uninterrupted: parameters True, losses True"],
    ),
    "d_gaussian_mixture_vae.py": (
        True,
        ["--out", "{tmp}"],
        [r"objective: auto -> enum \(TraceEnum_ELBO\)", r"mixture weights π: ", r"figure: "],
    ),
    "c_iaf_guide.py": (
        True,
        [],
        [r"training changed the flow", r"trained flow after resume: True", r"gap -?\d"],
    ),
    "a_own_model_guide.py": (
        True,
        [],
        [r"learned prior scale: \d", r"test log p\(x\) ≈ -\d"],
    ),
    "e_table_circle.py": (
        False,
        [],
        [r"sigmoid link refused: DataError: .*link", r"mean radii agree within [\d.]+: True"],
    ),
}


def _mnist_available(request: pytest.FixtureRequest) -> bool:
    try:
        request.getfixturevalue("mnist")  # conftest: skips when MNIST is not available offline
    except pytest.skip.Exception:
        return False
    return True


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--tiny", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``{script: Future of its CompletedProcess}``, for every script that can run here."""
    have_mnist = _mnist_available(request)
    pool = ThreadPoolExecutor(max_workers=2)
    futures: dict[str, Future] = {}
    for script, (needs_mnist, args, _) in SCRIPTS.items():
        if have_mnist or not needs_mnist:
            tmp = tmp_path_factory.mktemp(script.removesuffix(".py"))
            args = [a.format(tmp=tmp) for a in args]
            futures[script] = pool.submit(_run, script, args)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_example_runs(script: str, runs: dict[str, Future], request: pytest.FixtureRequest):
    needs_mnist, _, expected = SCRIPTS[script]
    if needs_mnist:
        request.getfixturevalue("mnist")  # skip without MNIST
    result = runs[script].result()
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script} failed:\n{output[-4000:]}"
    for pattern in expected:
        assert re.search(pattern, result.stdout), f"{script}: no match for {pattern!r}:\n{output}"
    if script == "d_gaussian_mixture_vae.py":
        png = Path(re.search(r"figure: (\S+)", result.stdout).group(1))
        assert png.suffix == ".png" and png.stat().st_size > 1000


def test_every_example_is_tested_and_listed():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(SCRIPTS)
    readme = (EXAMPLES / "README.md").read_text()
    for script in scripts:
        source = (EXAMPLES / script).read_text()
        assert source.startswith('"""') and "--tiny" in source, script
        assert f"examples/{script}" in readme, f"{script} missing from examples/README.md"
