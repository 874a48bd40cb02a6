"""Build ``REPORT.md`` from the ``metrics.json`` files the experiment scripts wrote.

    python experiments/report.py --out results

Reads ``<out>/<mode>/<experiment>/metrics.json`` for the modes ``full`` and ``quick`` (and
``tiny`` only if nothing else is there) plus ``<out>/<mode>/run_all.json``, and writes one
Markdown file with relative image links: a summary of verdicts, then per experiment its settings,
command, figures with captions and "agrees with the lecture?" verdicts, and tables.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

MODES = ("full", "quick", "tiny")
MODE_TEXT = {
    "full": "full mode",
    "quick": "quick mode",
    "tiny": "tiny smoke-test mode (numbers meaningless)",
}
MARK = {True: "✅ agrees", False: "❌ disagrees", None: "➖ qualitative only"}
ICON = {True: "✅", False: "❌", None: "➖"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        if abs(v) >= 1000 or v == 0:
            return f"{v:.1f}" if abs(v) >= 1000 else "0"
        if abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def table_md(t: dict[str, Any]) -> str:
    """A Markdown table with a bold title line."""
    lines = [f"**{t['title']}**", ""]
    lines.append("| " + " | ".join(_fmt(c) for c in t["columns"]) + " |")
    lines.append("|" + "---|" * len(t["columns"]))
    for row in t["rows"]:
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _settings_md(settings: dict[str, Any]) -> str:
    lines = []
    for k, v in settings.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items())
        lines.append(f"- **{k}**: {v}")
    return "\n".join(lines)


def load_results(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{mode: {experiment number: metrics.json contents}}`` for every mode present."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for mode in MODES:
        for path in sorted((out / mode).glob("*/metrics.json")):
            blob = json.loads(path.read_text())
            blob["_dir"] = path.parent.relative_to(out).as_posix()
            found.setdefault(mode, {})[blob["number"]] = blob
    if len(found) > 1:
        found.pop("tiny", None)
    return found


def experiment_md(blob: dict[str, Any], fig_counter: list[int]) -> str:
    """One experiment run: command, settings, figures with verdicts, tables, notes."""
    parts = [
        f"_{MODE_TEXT[blob['mode']]}_ · command: `{blob['command']}` · device {blob['device']} · "
        f"seed {blob['seed']} · {blob['runtime_seconds']:.0f} s",
        "",
        "<details><summary>settings</summary>",
        "",
        _settings_md(blob["settings"]),
        "",
        "</details>",
        "",
    ]
    for fig in blob["figures"]:
        fig_counter[0] += 1
        n = fig_counter[0]
        parts += [
            f"![Figure {n}: {fig['caption']}]({blob['_dir']}/{fig['file']})",
            "",
            f"*Figure {n} ({blob['mode']}).* {fig['caption']}",
            "",
            f"**Agrees with the lecture?** {ICON[fig['agrees']]} {fig['verdict']}",
            "",
        ]
    for t in blob["tables"]:
        parts += [table_md(t), ""]
    for note in blob.get("notes", []):
        parts += [f"> Note: {note}", ""]
    return "\n".join(parts)


def build_report(out: Path) -> Path:
    """Write ``<out>/REPORT.md`` and return its path."""
    found = load_results(out)
    numbers = sorted({n for runs in found.values() for n in runs})
    runs_info = {}
    for mode in found:
        p = out / mode / "run_all.json"
        if p.exists():
            runs_info[mode] = json.loads(p.read_text())
    any_blob = next(iter(next(iter(found.values())).values())) if found else {}
    lines = [
        "# ppl_vae experiments: the lecture's MNIST results, reproduced",
        "",
        f"Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `experiments/report.py` "
        f"from the `metrics.json` files under `{out.name}/` (torch {any_blob.get('torch', '?')}, "
        f"pyro {any_blob.get('pyro', '?')}). Every figure below comes with the settings and "
        "the command that produced it and a one-sentence verdict on whether it matches what "
        "the lecture shows. Regenerate everything in quick mode with",
        "",
        "```",
        "python experiments/run_all.py --out results",
        "```",
        "",
        "and a long run of chosen experiments with e.g. "
        "`python experiments/run_all.py --full --only 1,5,7,11,12` (CUDA is used when present).",
        "",
    ]
    for mode, info in runs_info.items():
        ok = sum(r["returncode"] == 0 for r in info["scripts"])
        lines.append(
            f"- **{mode} mode** via `{info['command']}`: {ok}/{len(info['scripts'])} scripts "
            f"succeeded in {info['total_seconds'] / 60:.1f} min on {info['device']} "
            f"({info['threads']} torch thread(s)); {info['note']}"
        )
    lines += [
        "",
        "## Summary",
        "",
        "| # | experiment | mode | figures | verdicts |",
        "|---|---|---|---|---|",
    ]
    for n in numbers:
        for mode in found:
            blob = found[mode].get(n)
            if blob is None:
                continue
            verdicts = ", ".join(MARK[f["agrees"]] for f in blob["figures"])
            lines.append(
                f"| {n} | {blob['title']} | {mode} | {len(blob['figures'])} | {verdicts} |"
            )
    full = found.get("full", {})
    if full:
        lines += ["", "## Full-mode numbers", ""]
        for n in sorted(full):
            blob = full[n]
            lines += [f"### {n}. {blob['title']} (full mode)", "", f"`{blob['command']}`", ""]
            for t in blob["tables"]:
                lines += [table_md(t), ""]
    counter = [0]
    for n in numbers:
        title = next(found[m][n]["title"] for m in found if n in found[m])
        lines += ["", f"## {n}. {title}", ""]
        for mode in found:
            if n in found[mode]:
                lines += [
                    f"### {MODE_TEXT[mode].capitalize()}",
                    "",
                    experiment_md(found[mode][n], counter),
                ]
    lines += beyond_the_lecture(out)
    path = out / "REPORT.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def beyond_the_lecture(out: Path) -> list[str]:
    """The conditioning studies that are not lecture figures (Pyro's CVAE tutorial, the M2
    semi-supervised VAE): their tables, figures, commands and a verdict against the papers'."""
    lines: list[str] = []
    cvae = out / "cvae" / "result.json"
    if cvae.exists():
        r = json.loads(cvae.read_text())
        lines += ["", "## Conditional VAE: quadrant completion (Pyro's CVAE tutorial)", ""]
        lines += [f"command: `{r['command']}` · {r['device']}, {r['threads']} thread(s)", ""]
        table = out / "cvae" / "table.md"
        lines += [_demote(table.read_text(), "cvae"), ""] if table.exists() else []
        lines += [
            "Figures: per setting, inputs, truth, the baseline's prediction and CVAE samples.",
            "",
        ]
        for q, res in r["results"].items():
            base, cv = res["baseline"]["nll_tutorial"], res["cvae"]["nll_tutorial"]
            tut = res["cvae"]["tutorial"]
            ok = cv < base
            lines += [
                f"**Verdict ({q} quadrant(s)):** {MARK[ok]} — CVAE {cv:.1f} against the "
                f"baseline's {base:.1f} (tutorial: CVAE {tut}, baseline "
                f"{res['baseline']['tutorial']}); {res['cvae']['training']['epochs']} CVAE epochs.",
                "",
            ]
        if not r.get("complete", True):
            lines += ["> Note: the run was stopped before every setting finished.", ""]
    ss = sorted((out / "ssvae").glob("**/result.json"))
    if ss:
        lines += ["", "## Semi-supervised VAE (M2), label enumerated", ""]
        table = out / "ssvae" / "table.md"
        lines += [_demote(table.read_text(), "ssvae"), ""] if table.exists() else []
        for path in ss:
            r = json.loads(path.read_text())
            name = path.parent.relative_to(out / "ssvae")
            lines += [f"- `{name}`: command `{r.get('command', '?')}`"]
            lines += [f"  - **Verdict:** {_m2_verdict(r)}"]
        lines += _pyro_script_runs(out / "ssvae" / "pyro-verbatim")
    return lines


def _pyro_script_runs(folder: Path) -> list[str]:
    """Pyro's own ``ss_vae_M2.py`` run on this machine (``pyro-verbatim/run.sh``): the last line
    of each kept log, beside the row of Pyro's table it should reproduce."""
    from ppl_vae.semisupervised import PYRO_PUBLISHED

    final = re.compile(
        r"best validation accuracy (\S+) corresponding testing accuracy (\S+) "
        r"last testing accuracy (\S+)"
    )
    lines = []
    for log in sorted(folder.glob("sup*.log")):
        found = final.search(log.read_text())
        n = int(re.match(r"sup(\d+)", log.name).group(1))
        if found is None or n not in PYRO_PUBLISHED:
            continue
        _, best_test, last = (float(v) for v in found.groups())
        lines += [
            f"- `pyro-verbatim/{log.name}`: **Pyro's own `ss_vae_M2.py`** run here "
            f"(`results/ssvae/pyro-verbatim/run.sh`), {n} labels: test accuracy {last:.4f} after "
            f"its last epoch, {best_test:.4f} at its best validation epoch, against the "
            f"{PYRO_PUBLISHED[n][0]:.4f} its tutorial publishes (the reference, not a verdict)"
        ]
    return lines


def _m2_verdict(r: dict[str, Any]) -> str:
    """M2's test accuracy against Pyro's published M2 and labelled-only baseline rows."""
    from ppl_vae.semisupervised import PYRO_PUBLISHED

    n, acc = r.get("sup_num"), r.get("test_accuracy")
    row = PYRO_PUBLISHED.get(n)
    if acc is None or row is None:
        return "➖ no published row to compare with"
    m2, _, base, _ = row
    ok = acc > base and acc >= m2 - M2_TOLERANCE
    stacked = r.get("settings", {}).get("features") == "m1"
    model = "stacked M1+M2 (M2 on an unsupervised VAE's codes, not Pyro's M2 on pixels)"
    return (
        f"{MARK[ok]} — {model + ': ' if stacked else ''}test accuracy {acc:.4f} against the "
        f"labelled-only baseline's "
        f"{base:.4f}; {acc - m2:+.4f} to Pyro's M2 ({m2:.4f}; agreement: above the baseline and "
        f"within {M2_TOLERANCE:.2f} of Pyro's M2)"
    )


#: "Within a few points" of Pyro's published M2 accuracy.
M2_TOLERANCE = 0.03


def _demote(md: str, folder: str) -> str:
    """A Markdown file of ``folder``: headings two levels down, to sit inside a report section,
    and its relative image links made relative to the report."""
    md = re.sub(r"\]\((?!https?:|/)([^)/]+)\)", rf"]({folder}/\1)", md)
    return "\n".join("##" + line if line.startswith("#") else line for line in md.splitlines())


def main() -> None:
    """Command line: ``--out`` is the results folder."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results")
    args = p.parse_args()
    print(f"wrote {build_report(Path(args.out))}")


if __name__ == "__main__":
    main()
