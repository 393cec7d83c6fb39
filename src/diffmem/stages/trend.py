"""Stage of rules/trend.smk: ``trend``, every question of the audit against the training-set
size N (the fingerprinting paper's trend: small sets are memorized, large ones are not), each
answer beside its null, with its interval or detectable rate, and, where the answer is
inconclusive, the sizes that would decide it (see README, Results)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import load_json, save_csv, save_figure, save_text
from ..metrics.stats import NO_NULL, UNLIKE, size_to_decide, wilson
from ..plotting import plt
from .verdict import _num, answer, run_tests

# the verdict's questions, in its order (rules/verdict.smk), with a short column name each
QUESTIONS = {"plain_copies": "copies", "side_extracts_more": "SIDE vs plain",
             "membership": "membership", "walks_back": "walk-back"}
# an answer's colour in the figure; any other ("neither …") is drawn as inconclusive
COLOURS = {"yes": "tab:red", "no": "tab:green", "inconclusive": "0.5", UNLIKE: "tab:purple",
           NO_NULL: "0.5", "above 1/N": "tab:red", "below 1/N": "tab:green"}
SIZE_WORDS = {"plain_copies": ("generated images", "unseen images"),
              "membership": ("training images", "unseen images"),
              "side_extracts_more": ("SIDE images", "plain samples")}


def _answers(metrics: str, membership: str, boundary: str, alpha: float) -> dict:
    """Each question's test as the verdict reads it (its answer included), by key."""
    tests = run_tests(metrics, membership, boundary)
    out = {key: tests[key] | {"answer": answer(tests[key], alpha)}
           for key in QUESTIONS if key in tests}
    pixel = tests.get("plain_copies_pixel")
    if pixel and "plain_copies" in out:
        out["plain_copies"]["pixel_answer"] = answer(pixel, alpha)
    return out


def _decide_text(key: str, t: dict, alpha: float) -> str:
    """'' for a decided answer; for an inconclusive one, what size would decide it."""
    if t["answer"] != "inconclusive":
        return ""
    if t.get("effect") is None:
        return "needs unseen images to compare with"
    s = size_to_decide(t, alpha=alpha)
    if s["direction"] is None:
        return s["why"]
    if key == "walks_back":  # its sizes: the reverse runs per t (the controls' count is fixed)
        return (f"about {s['factor']:.1f}× the reverse runs per t ({s['n']} instead of "
                f"{t['n']}) would answer {s['direction']}, if the t50s held")
    first, second = SIZE_WORDS[key]
    return (f"about {s['factor']:.1f}× these sizes ({s['n']} {first}, {s['null_n']} "
            f"{second}) would answer {s['direction']}, if the estimate held")


def trend_rows(runs: list, metrics: list[str], membership: list[str], boundaries: list[str],
               reproductions: list[str], detectors: list[str], alpha: float) -> list[dict]:
    """One row per trained run and question (the fingerprinted image's reproductions
    included, tested against rate 1/N as the paper does)."""
    rows = []
    for (dataset, n, seed), m, b, w, r, d in zip(runs, metrics, membership, boundaries,
                                                 reproductions, detectors, strict=True):
        base = {"dataset": dataset, "N": int(n), "seed": int(seed)}
        for key, t in _answers(m, b, w, alpha).items():
            rows.append(base | {
                "question": QUESTIONS[key], "answer": t["answer"],
                "value": t["value"] if "value" in t else t["effect"], "null": t["null_value"],
                "effect": t["effect"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
                "p_value": t["p_value"], "margin": t["margin"],
                "detectable": t.get("detectable_rate"),
                "smallest_recall": t.get("smallest_recall"),
                "pixel_answer": t.get("pixel_answer"),
                "images": t["n"], "null_images": t["null_n"],
                "to_decide": _decide_text(key, t, alpha)})
        rep, det = load_json(r), load_json(d)
        k, s = int(rep["reproductions"]), int(rep["samples"])
        lo, hi = wilson(k, s)
        fpr = det.get("fpr")
        rows.append(base | {
            "question": "reproductions", "answer": _reproduction_answer(rep, det, alpha),
            "value": k / s, "null": 1 / int(n), "effect": k / s - 1 / int(n),
            "ci_low": lo - 1 / int(n), "ci_high": hi - 1 / int(n),
            "p_value": rep["p_value_greater"], "margin": None, "detectable": None,
            "smallest_recall": None, "pixel_answer": None, "images": s, "null_images": None,
            "detector_recall": det.get("recall"), "detector_fpr": fpr,
            "reproductions": k, "expected_at_1_over_N": s / int(n),
            "p_value_less": rep["p_value_less"],
            "corrected_rate_low": (det.get("rate_ci") or [None, None])[0],
            "corrected_rate_high": (det.get("rate_ci") or [None, None])[1],
            "to_decide": ""})
    return rows


def _reproduction_answer(rep: dict, det: dict, alpha: float) -> str:
    """The fingerprinted image against rate 1/N (the paper's null: a model that draws its
    training images uniformly): above it (the count alone, the detectors' false-positive rate
    being about 0), below it only where the detector check supports that claim (a count below
    1/N from detectors that miss most reproductions says nothing), or neither at α."""
    if rep["p_value_greater"] < alpha:
        return "above 1/N"
    if rep["p_value_less"] < alpha:
        return "below 1/N" if det.get("below_null") == "supported" else \
            "neither (fewer than 1/N counted, but the detectors' recall cannot support below)"
    return "neither"


def _cell(r: dict) -> str:
    """One table cell: the answer, its statistic beside its null, its interval."""
    if r["question"] == "reproductions":
        rec = r.get("detector_recall")
        lo, hi = r.get("corrected_rate_low"), r.get("corrected_rate_high")
        return (f"**{r['answer']}**: {int(r['reproductions'])} of {int(r['images'])} "
                f"(expected {r['expected_at_1_over_N']:.1f} at 1/N; one-sided p above "
                f"{r['p_value']:.2g}, below {r['p_value_less']:.2g})"
                + (f"; detectors' recall {_num(rec, fmt='.2f')}, false-positive rate "
                   f"{_num(r.get('detector_fpr'), fmt='.3f')}" if rec is not None else "")
                + (f"; rate corrected for them [{_num(lo, fmt='.3f')}, {_num(hi, fmt='.3f')}] "
                   f"vs 1/N = {r['null']:.3f}" if lo is not None and not pd.isna(lo) else ""))
    text = (f"**{r['answer']}**: {_num(r['value'])} ({_num(r['null'], 'no null')}) "
            f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]")
    if r["question"] == "copies":
        text += f", detectable {_num(r['detectable'], 'none')}"
        if r.get("smallest_recall") is not None:
            text += f", eye's smallest recall {r['smallest_recall']:.2f}"
        if r.get("pixel_answer"):
            text += f"; pixel match alone: {r['pixel_answer']}"
    if r["to_decide"]:
        text += f"; {r['to_decide']}"
    return text


def trend_figure(df: pd.DataFrame, path: str) -> None:
    """One panel per question against N (log scale): each seed's statistic with its interval,
    coloured by its answer, beside its null."""
    panels = [("copies", "copies: high-band share\n(samples ●, unseen ○)"),
              ("membership", "membership AUC\n(0.5: chance)"),
              ("walk-back", "walk-back t50\n(target ●, controls' largest ○)"),
              ("reproductions", "reproductions of the\nfingerprinted image (share; — 1/N)"),
              ("SIDE vs plain", "UMS, SIDE ● vs plain ○")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.3))
    for ax, (q, title) in zip(axes, panels, strict=True):
        for _, g in df[df["question"] == q].groupby("dataset"):
            seeds = sorted(g["seed"].unique())
            for r in g.sort_values(["N", "seed"]).to_dict("records"):
                # seeds side by side around N (log-spaced jitter)
                x = r["N"] * 1.08 ** (seeds.index(r["seed"]) - (len(seeds) - 1) / 2)
                c = COLOURS.get(r["answer"], COLOURS["inconclusive"])
                # the interval is the effect's (value minus what it is compared with): put it
                # back around the value
                shift = r["value"] - r["effect"]
                lo, hi = r["ci_low"] + shift, r["ci_high"] + shift
                ax.errorbar([x], [r["value"]], yerr=[[r["value"] - lo], [hi - r["value"]]],
                            fmt="o", color=c, ms=5, capsize=2)
                if q != "reproductions" and pd.notna(r["null"]):  # 1/N is drawn as a line
                    ax.plot([x], [r["null"]], "o", mfc="none", color="0.3", ms=5)
            if q == "reproductions":
                ns = np.array(sorted(g["N"].unique()), dtype=float)
                ax.plot(ns, 1 / ns, "-", color="0.3", lw=1)
        if q == "membership":
            ax.axhline(0.5, color="0.3", lw=0.8, ls="--")
        ax.set_xscale("log")
        sizes = sorted(df["N"].unique())
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training-set size N")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=a)
               for a, c in COLOURS.items() if a in set(df["answer"])]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path)


def trend_stage(*, runs: list, metrics: list[str], membership: list[str],
                boundaries: list[str], reproductions: list[str], detectors: list[str],
                alpha: float, out_csv: str, out_md: str, out_png: str) -> pd.DataFrame:
    rows = trend_rows(runs, metrics, membership, boundaries, reproductions, detectors, alpha)
    df = pd.DataFrame(rows)
    save_csv(out_csv, df)
    order = ["copies", "membership", "walk-back", "reproductions", "SIDE vs plain"]
    present = [q for q in order if q in set(df["question"])]
    lines = []
    for dataset, g in df.groupby("dataset", sort=False):
        lines += [f"### {dataset}", "",
                  "| N | seed | " + " | ".join(present) + " |",
                  "|---|---|" + "---|" * len(present)]
        for (n, seed), h in g.groupby(["N", "seed"]):
            cells = {r["question"]: _cell(r) for r in h.to_dict("records")}
            lines.append(f"| {n} | {seed} | " + " | ".join(cells.get(q, "–") for q in present)
                         + " |")
        lines.append("")
    lines += [
        "Each cell: **answer**: statistic (its null) [95 % interval of the effect]. copies: "
        "the share of plain samples in the high band of both eyes (unseen images' share), the "
        "interval of the excess, and the excess the test could have detected with 80 % power; "
        "membership: the chosen attack's AUC (chance 0.5) and its interval; walk-back: the "
        "target's t50 (the largest of the controls' t50s) and the interval of the difference; "
        "reproductions: samples both adversary classifiers accept as the fingerprinted image, "
        "against rate 1/N (the paper's null: a model drawing its training images uniformly; "
        "\"above 1/N\" is memorization of that image, \"below 1/N\" means the model reproduces "
        "it less often than a uniform copier would), with one-sided exact p-values and the "
        "detectors' measured recall and false-positive rate, and the rate corrected for both "
        "(its 95 % interval; \"below 1/N\" only where the detector check supports it); SIDE "
        "vs plain: SIDE's UMS (plain sampling's) and the interval of the difference. An "
        "inconclusive cell says what sizes would decide it if its estimate held (the "
        "interval's half-width on the side that must move taken to shrink as 1/√size).", ""]
    save_text(out_md, "\n".join(lines))
    trend_figure(df, out_png)
    return df
