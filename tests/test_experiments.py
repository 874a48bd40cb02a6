"""Smoke tests: every experiment script runs end to end in a subprocess on a tiny budget.

Each script is run with ``--tiny`` (a few hundred images, one epoch) into a temporary results
folder; the test checks the exit code, that ``metrics.json`` lists figures that exist as PNG files
with captions and verdicts, and finally that the report builder embeds them all. The numbers are
meaningless at this budget. Models shared between scripts are trained once through a shared cache,
so the order of ``SCRIPTS`` matters for speed only. Skipped when MNIST is not available offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

from run_all import SCRIPTS  # noqa: E402


def _mnist_available() -> bool:
    try:
        from ppl_vae import load_dataset

        load_dataset("mnist", download=False, verbose=False)
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(not _mnist_available(), reason="MNIST not available offline")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("experiments")


def _run(script: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}
    cmd = [
        sys.executable,
        str(EXPERIMENTS / script),
        "--tiny",
        "--device",
        "cpu",
        "--out",
        str(workdir / "results"),
        "--cache",
        str(workdir / "cache"),
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.parametrize(("number", "script"), SCRIPTS, ids=[s for _, s in SCRIPTS])
def test_script_runs_on_tiny_budget(number: int, script: str, workdir: Path) -> None:
    proc = _run(script, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = [p.parent for p in (workdir / "results" / "tiny").glob("*/metrics.json")]
    blobs = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    blob = next(b for b in blobs if b["number"] == number)
    assert blob["mode"] == "tiny"
    assert blob["figures"], "every experiment writes at least one figure"
    for fig in blob["figures"]:
        png = workdir / "results" / "tiny" / blob["name"] / fig["file"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert fig["caption"] and fig["verdict"]
        assert fig["agrees"] in (True, False, None)
    assert blob["tables"] and all(t["rows"] for t in blob["tables"])
    json.dumps(blob)  # plain JSON, no NaN-only junk types


def test_report_embeds_every_figure(workdir: Path) -> None:
    from report import build_report

    results = workdir / "results"
    if not (results / "tiny").exists():
        pytest.skip("no script ran")
    report = build_report(results).read_text()
    for path in (results / "tiny").glob("*/*.png"):
        assert f"({path.relative_to(results).as_posix()})" in report
    assert "Agrees with the lecture?" in report


def test_scripts_use_only_the_public_api() -> None:
    # The library never imports the experiments, and scripts do not reach into private names.
    for path in (ROOT / "ppl_vae").glob("*.py"):
        text = path.read_text()
        assert "from experiments" not in text and "import experiments" not in text
        assert "from common import" not in text
    for path in EXPERIMENTS.glob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("from ppl_vae", "import ppl_vae")):
                assert "._" not in line and " _" not in line, f"{path.name}: {line}"
