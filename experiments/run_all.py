"""Run every experiment (quick mode by default) and build ``<out>/REPORT.md``.

    python experiments/run_all.py                        # all twelve, quick mode, then the report
    python experiments/run_all.py --full --only 1,5,7    # long runs of some experiments
    python experiments/run_all.py --report-only          # rebuild the report from the JSONs

Each script runs in its own subprocess (a failure is recorded and the others still run); models
shared between experiments are trained once thanks to the cache in ``runs/experiment_cache``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import resolve_device
from report import build_report

HERE = Path(__file__).resolve().parent
#: (number, script) in an order that lets later scripts reuse cached models of earlier ones.
SCRIPTS = (
    (1, "ae_vs_pca.py"),
    (7, "vae_samples.py"),
    (8, "vae_manifold.py"),
    (2, "interpolation.py"),
    (3, "generation.py"),
    (5, "denoising.py"),
    (6, "inpainting_posterior.py"),
    (4, "toy_denoising.py"),
    (9, "swap_parts.py"),
    (10, "sparse_ae.py"),
    (11, "dae_vs_ae.py"),
    (12, "linear_ae_pca.py"),
)


def main(argv: list[str] | None = None) -> int:
    """Run the selected scripts, write ``run_all.json`` and the report; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true")
    mode.add_argument("--tiny", action="store_true", help="smoke-test budget")
    p.add_argument("--out", default="results")
    p.add_argument("--only", default="", help="comma-separated experiment numbers, e.g. 1,5,7")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.report_only:
        mode_name = "full" if args.full else "tiny" if args.tiny else "quick"
        only = {int(s) for s in args.only.split(",") if s.strip()}
        flags = ["--out", str(out), "--device", args.device, "--threads", str(args.threads)]
        flags += ["--full"] if args.full else ["--tiny"] if args.tiny else []
        results, t0 = [], time.perf_counter()
        for number, script in SCRIPTS:
            if only and number not in only:
                continue
            cmd = [sys.executable, str(HERE / script), *flags]
            print(f"[{number}] {script}", flush=True)
            t = time.perf_counter()
            rc = subprocess.call(cmd)
            results.append(
                {
                    "number": number,
                    "script": script,
                    "returncode": rc,
                    "seconds": round(time.perf_counter() - t, 1),
                }
            )
            print(f"[{number}] {script}: rc={rc} in {results[-1]['seconds']} s", flush=True)
        summary = {
            "command": "python experiments/run_all.py "
            + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
            "mode": mode_name,
            "device": str(resolve_device(args.device)),
            "threads": args.threads,
            "total_seconds": round(time.perf_counter() - t0, 1),
            "scripts": results,
            "note": "timings include training any model not already in the cache; the machine "
            "was shared with other jobs",
        }
        (out / mode_name).mkdir(parents=True, exist_ok=True)
        (out / mode_name / "run_all.json").write_text(json.dumps(summary, indent=2) + "\n")
        failed = [r["script"] for r in results if r["returncode"] != 0]
    else:
        failed = []
    print(f"wrote {build_report(out)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
