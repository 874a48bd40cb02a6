"""Experiment 6: the multimodal posterior — one MSE answer vs posterior completions by MCMC.

A centred 16×16 block hides the middle of a test digit. The DAE of experiment 5 (trained with
MSE against random 16×16 blocks) returns one answer, which approximates the *mean* of
p(x_hidden | x_visible): where several completions are plausible it averages them into a blur. A
probabilistic model can instead *sample* that posterior. Here the model is the 10-D MNIST VAE of
experiment 7, conditioned on the visible pixels only (``vae.model(x, mask=visible)``), and
p(z | x_visible) is sampled three ways (:mod:`ppl_vae.completion`):

- **NUTS** (Pyro's ``MCMC``), 4 chains from prior draws; rank-normalised split-R̂ and bulk ESS;
- **importance resampling** from the amortised guide mixed with the prior (the earlier version of
  this figure): its effective sample size is often a handful, so resampled completions repeat;
- **a refitted guide**: a diagonal Normal fitted by SVI to this image's visible pixels (unimodal).

For each method: ESS and R̂, the log-likelihood of the hidden pixels log p(x_hidden | x_visible)
under the same model (the DAE's answer is scored as Bernoulli means), and the digit classes a
classifier reads in as many completions as NUTS draws (all classes seen, and those read in ≥ 5 %
of them), and how many of those completions are distinct images.

    python experiments/inpainting_posterior.py          # quick
    python experiments/inpainting_posterior.py --full
"""

from __future__ import annotations

from collections import Counter

import torch
from common import (
    DAE_BUDGETS,
    DPI,
    VAE_BUDGETS,
    VAE_TRAIN,
    Results,
    budget,
    budget_dict,
    dae,
    digit_classifier,
    first_of_class,
    load_mnist,
    mnist_model,
    parse_args,
    vae_config,
)

from ppl_vae.completion import (
    Completion,
    hidden_log_likelihood,
    importance_completions,
    nuts_completions,
    point_log_likelihood,
    svi_completions,
)
from ppl_vae.plots import save_image_rows

SPEC = "block:16"
BLOCK = 16
LATENT = 10
SHOW_CLASSES = (2, 3, 4, 5, 7, 9)
#: The share of the completions a class needs to count as a mode. The classifier reads as many
#: completions per digit and method as NUTS has draws (chains × draws: all of them), so every
#: method is compared on the same number of completions.
MODE_SHARE = 0.05
#: The diversity a figure shows: distinct classes among N_SET completions (the earlier figure's
#: six), averaged over SET_REPEATS independent sets.
N_SET, SET_REPEATS = 6, 200
#: Completions shown per method in the figure.
SHOW_NUTS, SHOW_SIR = 5, 3
#: Sampler settings per mode: NUTS chains / warm-up / draws per chain, SIR particles, SVI steps.
SETTINGS = {
    "tiny": {"chains": 2, "warmup": 20, "draws": 20, "particles": 500, "svi_steps": 20},
    "quick": {"chains": 4, "warmup": 200, "draws": 200, "particles": 20000, "svi_steps": 500},
    "full": {"chains": 4, "warmup": 500, "draws": 500, "particles": 50000, "svi_steps": 1000},
}


def centre_block_visible(x: torch.Tensor, size: int) -> torch.Tensor:
    """Boolean mask of the pixels outside a centred ``size`` × ``size`` block (x's shape)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    visible = torch.ones_like(x, dtype=torch.bool)
    visible[..., top : top + size, left : left + size] = False
    return visible


def grey_fraction(x: torch.Tensor, hidden: torch.Tensor) -> float:
    """Share of hidden pixels with a grey value in (0.2, 0.8): a measure of blur in the block."""
    vals = x[hidden.expand_as(x)]
    return float(((vals > 0.2) & (vals < 0.8)).float().mean())


@torch.no_grad()
def read_completions(
    vae, clf, comp: Completion, x, visible, n: int, g
) -> tuple[torch.Tensor, list[int], int]:
    """``n`` completions of ``comp`` (visible pixels pasted back), the classes read in them and
    the number of distinct completions among them (resampling by weight repeats codes)."""
    z = comp.resample(n, g)
    images = visible * x + ~visible * vae.decode(z)
    return images, clf(images).argmax(-1).tolist(), int(torch.unique(z, dim=0).shape[0])


@torch.no_grad()
def distinct_in_sets(vae, clf, comp: Completion, x, visible, g) -> float:
    """Mean number of distinct classes the classifier reads in a set of N_SET completions (a
    figure's worth), over SET_REPEATS sets: resampled by weight for SIR, so repeated codes
    count once, and drawn from all chains for NUTS."""
    z = torch.cat([comp.resample(N_SET, g) for _ in range(SET_REPEATS)])
    images = visible * x + ~visible * vae.decode(z)
    classes = clf(images).argmax(-1).reshape(SET_REPEATS, N_SET)
    return sum(len(set(row.tolist())) for row in classes) / SET_REPEATS


def modes(classes: list[int]) -> list[int]:
    """The classes read in at least MODE_SHARE of the completions, most frequent first."""
    counts = Counter(classes).most_common()
    return [c for c, k in counts if k >= MODE_SHARE * len(classes)]


def by_class(images: torch.Tensor, classes: list[int], n: int) -> torch.Tensor:
    """``n`` of ``images`` that show the distinct classes first (one per class, most frequent
    class first), then the rest in order: the figure shows the modes, not n copies of one."""
    order = [c for c, _ in Counter(classes).most_common()]
    first = [classes.index(c) for c in order]
    rest = [i for i in range(len(classes)) if i not in first]
    return images[(first + rest)[:n]]


def main(argv: list[str] | None = None) -> None:
    """Mask test digits; complete them with the DAE, NUTS, SIR and a refitted guide; report."""
    args = parse_args(__doc__, number=6, argv=argv)
    b_dae, b_vae = budget(args, DAE_BUDGETS), budget(args, VAE_BUDGETS)
    data_dae, data = load_mnist(args, b_dae), load_mnist(args, b_vae)
    cfg = SETTINGS[args.mode]
    n_read = cfg["chains"] * cfg["draws"]
    res = Results(args, "inpainting_posterior", "The multimodal posterior under a block mask")
    res.settings = {
        "dae_budget": budget_dict(b_dae),
        "vae_budget": budget_dict(b_vae),
        "corruption": SPEC,
        "dae": "the block-mask DAE of experiment 5 (MSE)",
        "vae": f"MLP VAE, latent {LATENT}, Bernoulli likelihood (experiment 7's model)",
        "nuts": f"Pyro NUTS, {cfg['chains']} chains from prior draws, {cfg['warmup']} warm-up + "
        f"{cfg['draws']} draws each; the model observes the visible pixels only",
        "importance": f"SIR with {cfg['particles']} particles, proposal ½ p(z) + ½ N(μ(x̃), "
        "σ(x̃)² + 0.5²), weights from the visible pixels only",
        "svi": f"diagonal Normal refitted by SVI ({cfg['svi_steps']} Adam steps, 16 particles) "
        "from the encoder's answer",
        "classes": f"classifier's reading of {n_read} completions per digit and method (all of "
        f"NUTS's draws; {n_read} resampled by weight for SIR, drawn for SVI); a mode is a class "
        f"read in ≥ {MODE_SHARE:.0%} of them",
    }
    model_dae, _ = dae(args, data_dae, b_dae, SPEC)
    vae, _ = mnist_model(args, data, b_vae, f"vae-z{LATENT}", vae_config(LATENT), **VAE_TRAIN)
    vae.eval()
    clf = digit_classifier(args, data)

    idx = first_of_class(data.test_y, SHOW_CLASSES)
    shown = [int(data.test_y[i]) for i in idx]  # the classes present in a small test split
    x = data.test_x[idx]
    visible = centre_block_visible(x, BLOCK)
    x_tilde = x * visible
    with torch.no_grad():
        x_dae = model_dae.reconstruct(x_tilde).clamp(0, 1)
    x_dae = visible * x_tilde + ~visible * x_dae
    rows, labels, table, per_digit = [], [], [], []
    for i in range(x.shape[0]):
        xi, vi = x[i], visible[i]
        seed = args.seed + 1000 * i
        comps = {
            "nuts": nuts_completions(
                vae,
                xi,
                vi,
                num_chains=cfg["chains"],
                warmup=cfg["warmup"],
                num_samples=cfg["draws"],
                seed=seed,
            ),
            "importance": importance_completions(
                vae, xi, vi, num_particles=cfg["particles"], seed=seed
            ),
            "svi": svi_completions(vae, xi, vi, steps=cfg["svi_steps"], seed=seed),
        }
        g = torch.Generator().manual_seed(seed)
        record = {"digit": shown[i], "dae_hidden_ll": point_log_likelihood(vae, x_dae[i], xi, vi)}
        images = {}
        for name, comp in comps.items():
            imgs, classes, distinct = read_completions(vae, clf, comp, xi, vi, n_read, g)
            images[name] = (imgs, classes)
            record[name] = {
                "ess": comp.ess,
                "rhat": comp.rhat,
                "hidden_ll": hidden_log_likelihood(vae, comp, xi, vi),
                "classes": sorted(set(classes)),
                "modes": modes(classes),
                "distinct_completions": distinct,
                f"distinct_classes_in_{N_SET}": distinct_in_sets(vae, clf, comp, xi, vi, g),
                "seconds": comp.seconds,
                **({"divergences": comp.info["divergences"]} if name == "nuts" else {}),
            }
        per_digit.append(record)
        n, s = record["nuts"], record["importance"]
        print(
            f"digit {shown[i]}: NUTS R̂ {n['rhat']:.3f} ESS {n['ess']:.0f} classes {n['classes']}"
            f" | SIR ESS {s['ess']:.1f} classes {s['classes']} | classes in {N_SET}: NUTS "
            f"{n[f'distinct_classes_in_{N_SET}']:.2f}, SIR {s[f'distinct_classes_in_{N_SET}']:.2f}"
            " | hidden log-lik NUTS "
            f"{n['hidden_ll']:.1f}, SIR {s['hidden_ll']:.1f}, SVI {record['svi']['hidden_ll']:.1f}"
            f", DAE {record['dae_hidden_ll']:.1f}",
            flush=True,
        )
        nuts_show = by_class(*images["nuts"], SHOW_NUTS)
        rows.append(
            torch.cat(
                [
                    x[i : i + 1],
                    x_tilde[i : i + 1],
                    x_dae[i : i + 1],
                    nuts_show,
                    images["importance"][0][:SHOW_SIR],
                ]
            )
        )
        labels.append(f"digit {shown[i]}")
        for name in comps:
            r = record[name]
            table.append(
                [
                    shown[i],
                    name,
                    r["ess"],
                    r["rhat"],
                    r["hidden_ll"],
                    r["distinct_completions"],
                    r[f"distinct_classes_in_{N_SET}"],
                    len(r["classes"]),
                    " ".join(map(str, r["classes"])),
                    " ".join(map(str, r["modes"])),
                ]
            )
        table.append([shown[i], "dae", None, None, record["dae_hidden_ll"], 1, 1, 1, "", ""])
    save_image_rows(
        rows,
        labels,
        res.path("inpainting_posterior.png"),
        "Centre 16×16 block hidden: the DAE's one MSE answer vs completions sampled from the "
        "VAE's\nposterior given the visible pixels — by NUTS (distinct readings first) and by "
        "importance resampling",
        col_labels=["original", "masked\nx̃", "DAE\n(MSE)"]
        + [f"NUTS\n{j + 1}" for j in range(SHOW_NUTS)]
        + [f"SIR\n{j + 1}" for j in range(SHOW_SIR)],
        label_width=1.0,
        cell=0.8,
        dpi=DPI,
    )

    def total(method: str, key: str) -> int:
        return sum(len(r[method][key]) for r in per_digit)

    nuts_ok = all(r["nuts"]["rhat"] < 1.05 and r["nuts"]["ess"] >= 100 for r in per_digit)
    # the must-show: more distinct classes among the completions than SIR's, over the 6 digits
    more_classes = total("nuts", "classes") > total("importance", "classes")
    per_digit_cmp = [len(r["nuts"]["classes"]) - len(r["importance"]["classes"]) for r in per_digit]
    more_d, equal_d, fewer_d = (
        sum(d > 0 for d in per_digit_cmp),
        sum(d == 0 for d in per_digit_cmp),
        sum(d < 0 for d in per_digit_cmp),
    )
    more_modes = total("nuts", "modes") > total("importance", "modes")
    # the robust reading: a class read in ≥ MODE_SHARE is a mode, not one stray particle
    modes_every_digit = all(
        len(r["nuts"]["modes"]) >= len(r["importance"]["modes"]) for r in per_digit
    )

    def in_sets(method: str) -> float:
        return sum(r[method][f"distinct_classes_in_{N_SET}"] for r in per_digit) / len(per_digit)

    more_in_sets = all(
        r["nuts"][f"distinct_classes_in_{N_SET}"] > r["importance"][f"distinct_classes_in_{N_SET}"]
        for r in per_digit
    )
    beats_dae = all(r["nuts"]["hidden_ll"] > r["dae_hidden_ll"] for r in per_digit)
    grey_dae = sum(grey_fraction(x_dae[i], ~visible[i]) for i in range(len(idx))) / len(idx)
    res.metrics = {
        "per_digit": per_digit,
        "nuts_max_rhat": max(r["nuts"]["rhat"] for r in per_digit),
        "nuts_min_bulk_ess": min(r["nuts"]["ess"] for r in per_digit),
        "importance_ess": [r["importance"]["ess"] for r in per_digit],
        "classes_total": {m: total(m, "classes") for m in ("nuts", "importance", "svi")},
        "modes_total": {m: total(m, "modes") for m in ("nuts", "importance", "svi")},
        f"distinct_classes_in_{N_SET}_mean": {m: in_sets(m) for m in ("nuts", "importance", "svi")},
        "hidden_ll_mean": {
            **{
                m: sum(r[m]["hidden_ll"] for r in per_digit) / len(per_digit)
                for m in ("nuts", "importance", "svi")
            },
            "dae": sum(r["dae_hidden_ll"] for r in per_digit) / len(per_digit),
        },
        "grey_fraction_dae": grey_dae,
        "distinct_completions": {
            m: [r[m]["distinct_completions"] for r in per_digit]
            for m in ("nuts", "importance", "svi")
        },
        "completions_read": n_read,
        "nuts_more_classes_than_importance": more_classes,
        "digits_nuts_more_equal_fewer_classes": [more_d, equal_d, fewer_d],
        "nuts_modes_at_least_importance_every_digit": modes_every_digit,
        "nuts_more_modes_than_importance": more_modes,
        f"nuts_more_classes_in_{N_SET}_every_digit": more_in_sets,
        "nuts_beats_dae_hidden_ll_every_digit": beats_dae,
    }
    m = res.metrics
    agrees = nuts_ok and more_classes and more_modes and modes_every_digit and beats_dae
    res.figure(
        "inpainting_posterior.png",
        "Per row: a test digit, its block-masked version, the block-mask DAE's output, "
        f"{SHOW_NUTS} NUTS completions (one per class the classifier reads, most frequent first) "
        f"and {SHOW_SIR} completions resampled by importance weights (visible pixels pasted back).",
        (
            f"{'Agrees' if agrees else 'Disagrees in part'}: the DAE gives one greyish "
            f"compromise in the block (grey share {grey_dae:.2f}); NUTS samples the posterior "
            f"with R̂ ≤ {m['nuts_max_rhat']:.3f} and bulk ESS ≥ {m['nuts_min_bulk_ess']:.0f} per "
            f"digit. Its {n_read} completions per digit hold "
            f"{min(m['distinct_completions']['nuts'])}–{max(m['distinct_completions']['nuts'])} "
            f"distinct images against {min(m['distinct_completions']['importance'])}–"
            f"{max(m['distinct_completions']['importance'])} for as many importance resamples "
            f"(ESS {min(m['importance_ess']):.1f}–{max(m['importance_ess']):.1f}: its draws "
            f"repeat), and the classifier reads {m['classes_total']['nuts']} classes in them over "
            f"the {len(per_digit)} digits against {m['classes_total']['importance']} "
            f"({'more' if more_classes else 'not more'}; per digit more for {more_d}, as many for "
            f"{equal_d}, fewer for {fewer_d}); modes (classes read in ≥ {MODE_SHARE:.0%}): "
            f"{m['modes_total']['nuts']} vs {m['modes_total']['importance']} ("
            f"{'at least as many' if modes_every_digit else 'not as many'} on every digit); a "
            f"set of {N_SET} "
            f"completions shows {in_sets('nuts'):.2f} vs {in_sets('importance'):.2f} classes on "
            f"average{'' if more_in_sets else ' (not more for every digit)'}. The hidden "
            f"pixels' log-likelihood is {m['hidden_ll_mean']['nuts']:.1f} nats under NUTS against "
            f"{m['hidden_ll_mean']['dae']:.1f} for the DAE's single answer"
            f"{'' if beats_dae else ' (not higher for every digit)'}."
        ),
        agrees,
    )
    res.table(
        "Per digit and method: bulk ESS and rank-normalised split-R̂ (NUTS; SIR: (Σw)²/Σw²; "
        "SVI: independent draws), log p(x_hidden | x_visible) in nats under the VAE, the "
        f"number of distinct images among the {n_read} completions read, the mean number of "
        f"distinct classes in a set of {N_SET} completions ({SET_REPEATS} sets), the number of "
        f"classes read in the {n_read} completions, which they are, and the modes (classes read "
        f"in ≥ {MODE_SHARE:.0%})",
        [
            "digit",
            "method",
            "ESS",
            "R̂",
            "hidden log-lik",
            "distinct completions",
            f"classes in {N_SET}",
            "# classes",
            "classes",
            "modes",
        ],
        table,
    )
    res.notes.append(
        "SIR is exact as K → ∞ but with a finite K its completions are only as diverse as the "
        "effective sample size allows; NUTS's chains start at prior draws, so R̂ near 1 says "
        "they found the same posterior, not each a mode of its own. The refitted Normal guide "
        "holds one mode by construction."
    )
    res.save()


if __name__ == "__main__":
    main()
