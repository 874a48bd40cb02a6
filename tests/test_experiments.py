"""Smoke tests: every numbered experiment script runs end to end on a tiny budget.

All scripts of ``run_all.SCRIPTS`` run with ``--tiny`` (a few hundred images, one epoch) into a
temporary results folder, one after another in *one* subprocess, each as ``python script.py``
would run it (``runpy`` with ``__main__`` and its own ``sys.argv``): torch, Pyro and MNIST are
loaded once instead of once per script, which halves the time of this file. Each test then checks
its script's exit status, that ``metrics.json`` lists figures that exist as PNG files with
captions and verdicts, and finally that the report builder embeds them all. The numbers are
meaningless at this budget. Models shared between scripts are trained once through a shared
cache, so the order of ``SCRIPTS`` matters for speed only. Static tests check that every script
is numbered and imports only the public API of ``ppl_vae``. Skipped when MNIST is not available
offline.
"""

from __future__ import annotations

import ast
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

#: Scripts in experiments/ that are not numbered experiments.
NOT_NUMBERED = {
    "common.py",
    "run_all.py",
    "report.py",
    "compare_models.py",
    "likelihood_table.py",
    "ss_vae.py",
    "cvae_quadrants.py",
}

#: What scripts may import from ppl_vae: module → names (None: any public name).
PUBLIC_API: dict[str, set[str] | None] = {
    "ppl_vae": {
        "VAE",
        "ImageData",
        "ModelConfig",
        "TrainConfig",
        "History",
        "build_model",
        "preset_config",
        "MODEL_PRESETS",
        "fit",
        "load_dataset",
        "elbo",
        "elbo_per_image",
        "log_likelihood",
        "reconstruction_error",
        "evaluate",
        "bits_per_dim",
        "resolve_device",
        "load_model",  # reloads a trained model from its run folder (M1 of the stacked M1+M2)
        "DataError",
        "PointMassGuide",
        "NormalGuide",
        "__version__",  # keys the model cache: a new release retrains
        # the public modules
        "priors",
        "likelihoods",
        "nets",
        "corruptions",
        "latent",
        "pca",
        "plots",
    },
    "ppl_vae.priors": None,
    "ppl_vae.likelihoods": None,
    "ppl_vae.nets": None,
    "ppl_vae.corruptions": {"make_corruption", "corrupt", "psnr", "reconstruction_psnr"},
    "ppl_vae.latent": {
        "GaussianDensity",
        "GMMDensity",
        "PriorDensity",
        "encode_dataset",
        "posterior_moments",
        "sample_images",
    },
    "ppl_vae.pca": {"PCA", "principal_angles", "linear_autoencoder", "decoder_basis"},
    "ppl_vae.plots": {"image_grid", "save_image_rows", "save_grid", "save_elbo_curves"},
    "ppl_vae.literature": None,
    "ppl_vae.semisupervised": None,
    "ppl_vae.conditional": None,
    "ppl_vae.completion": None,
}

#: Runs each script given on the command line like ``python script.py --tiny ...`` and writes
#: {script: {"error": traceback or None, "seconds": ...}} to a JSON file.
DRIVER = """
import json, runpy, sys, time, traceback
from pathlib import Path

experiments, out, cache, status_file, *scripts = sys.argv[1:]
sys.path[0] = experiments  # what `python experiments/x.py` puts first (not the working directory)
status = {}
for script in scripts:
    sys.argv = [str(Path(experiments) / script), "--tiny", "--device", "cpu", "--out", out,
                "--cache", cache]
    t0 = time.perf_counter()
    error = None
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (None, 0):
            error = f"SystemExit({e.code!r})"
    except BaseException:
        error = traceback.format_exc()
    status[script] = {"error": error, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{script}: {'ok' if error is None else 'FAILED'} in {status[script]['seconds']} s",
          flush=True)
Path(status_file).write_text(json.dumps(status))
"""


def _mnist_available() -> bool:
    try:
        from ppl_vae import load_dataset

        load_dataset("mnist", download=False, verbose=False)
    except Exception:
        return False
    return True


needs_mnist = pytest.mark.skipif(not _mnist_available(), reason="MNIST not available offline")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """Run every script once; returns the results folder, the status per script and the log."""
    work = tmp_path_factory.mktemp("experiments")
    status_file = work / "status.json"
    env = {**os.environ, "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-c", DRIVER, str(EXPERIMENTS), str(work / "results")]
    cmd += [str(work / "cache"), str(status_file), *(script for _, script in SCRIPTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and status_file.exists(), log
    return work / "results", json.loads(status_file.read_text()), log


@needs_mnist
@pytest.mark.parametrize(("number", "script"), SCRIPTS, ids=[s for _, s in SCRIPTS])
def test_script_runs_on_tiny_budget(number: int, script: str, tiny_runs) -> None:
    results, status, log = tiny_runs
    assert status[script]["error"] is None, status[script]["error"][-3000:] + "\n" + log
    blobs = [json.loads(p.read_text()) for p in (results / "tiny").glob("*/metrics.json")]
    blob = next(b for b in blobs if b["number"] == number)
    assert blob["mode"] == "tiny"
    assert blob["command"].startswith(f"python experiments/{script} --tiny")
    assert blob["figures"], "every experiment writes at least one figure"
    for fig in blob["figures"]:
        png = results / "tiny" / blob["name"] / fig["file"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert fig["caption"] and fig["verdict"]
        assert fig["agrees"] in (True, False, None)
    assert blob["tables"] and all(t["rows"] for t in blob["tables"])
    json.dumps(blob)  # plain JSON, no NaN-only junk types


@needs_mnist
def test_report_embeds_every_figure(tiny_runs) -> None:
    from report import build_report

    results, _, _ = tiny_runs
    report = build_report(results).read_text()
    pngs = list((results / "tiny").glob("*/*.png"))
    assert pngs
    for path in pngs:
        assert f"({path.relative_to(results).as_posix()})" in report
    for number, _ in SCRIPTS:
        assert f"\n## {number}. " in report
    assert "Agrees with the lecture?" in report


def test_report_lists_pyro_script_runs(tmp_path: Path) -> None:
    """The report sets each kept log of Pyro's own ss_vae_M2.py beside Pyro's published row; a
    log that did not finish, or whose label count has no row, is left out."""
    from report import _pyro_script_runs

    (tmp_path / "sup100-bs100-s0.log").write_text(
        "0 epoch: avg losses 1.0 2.0 validation accuracy 0.5 test accuracy 0.4\n"
        "best validation accuracy 0.6344 corresponding testing accuracy 0.6248 "
        "last testing accuracy 0.5706\n"
    )
    (tmp_path / "sup3000-bs200-s0.log").write_text("0 epoch: stopped early\n")
    (tmp_path / "sup7-bs7-s0.log").write_text(
        "best validation accuracy 0.1 corresponding testing accuracy 0.1 "
        "last testing accuracy 0.1\n"
    )
    lines = _pyro_script_runs(tmp_path)
    assert len(lines) == 1 and "100 labels" in lines[0]
    assert "0.5706 after its last epoch, 0.6248 at its best validation epoch" in lines[0]
    assert "against the 0.9319 its tutorial publishes" in lines[0]
    assert _pyro_script_runs(tmp_path / "absent") == []


def _parse_args_number(tree: ast.Module) -> int | None:
    """The ``number=`` passed to ``parse_args`` in a script, or None."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "parse_args"
        ):
            for kw in node.keywords:
                if kw.arg == "number" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
    return None


def test_every_experiment_is_numbered_and_run() -> None:
    numbers = [n for n, _ in SCRIPTS]
    assert sorted(numbers) == list(range(1, len(SCRIPTS) + 1)), "numbered 1..N, no gaps"
    listed = {script: n for n, script in SCRIPTS}
    for path in sorted(EXPERIMENTS.glob("*.py")):
        if path.name in NOT_NUMBERED:
            continue
        assert path.name in listed, f"{path.name} is not in run_all.SCRIPTS"
        number = _parse_args_number(ast.parse(path.read_text()))
        assert number == listed[path.name], f"{path.name}: parse_args(number={number})"


def _ppl_vae_imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(module, name, line) for every import from ppl_vae and every ``ppl_vae.attr`` use."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ppl_vae":
            found += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ppl_vae":
                    module, _, name = a.name.rpartition(".")
                    found.append((module or a.name, name if module else "", node.lineno))
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "ppl_vae"
        ):
            found.append(("ppl_vae", node.attr, node.lineno))
    return found


def test_scripts_use_only_the_public_api() -> None:
    # The library never imports the experiments.
    for path in (ROOT / "ppl_vae").glob("*.py"):
        text = path.read_text()
        assert "from experiments" not in text and "import experiments" not in text
        assert "from common import" not in text
    # Scripts import only the names the library guarantees to keep.
    for path in sorted(EXPERIMENTS.glob("*.py")):
        for module, name, line in _ppl_vae_imports(ast.parse(path.read_text())):
            where = f"{path.name}:{line}: {module}.{name}"
            assert module in PUBLIC_API, f"{where}: {module} is not a public module"
            allowed = PUBLIC_API[module]
            if name == "":  # import ppl_vae.module
                continue
            if allowed is None:
                assert not name.startswith("_"), f"{where}: private name"
            else:
                assert name in allowed, f"{where}: not in the public API"
