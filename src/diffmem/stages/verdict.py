"""Stage of rules/verdict.smk: ``verdict``, one row per run and question answered yes / no /
inconclusive from its primary statistic (see README, The verdict and its nulls)."""

from __future__ import annotations

import math

from ..io import load_json, save_csv, save_text
from ..metrics.stats import NO_NULL, UNLIKE, decide

NO_NULL_TEXT = ("inconclusive (no null): there were no unseen images to compare with, so the "
                "score is reported and nothing is tested.")
UNLIKE_TEXT = (f"{UNLIKE}: the generated images are less like the training images than unseen "
               f"images are (one-sided Mann–Whitney on nearest-training similarity, either eye "
               f"at α/2), so the copy "
               f"question cannot be answered no: the model makes noise or another kind of "
               f"image, and its copies, if any, hide among them.")


def _num(x, missing: str = "–", fmt: str = ".3f") -> str:
    """A number for a table; ``missing`` for a value a test without a null does not have."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    return format(x, fmt)


def _fmt_test(t: dict) -> str:
    if t.get("effect") is None:
        return f"{t.get('answer', 'not tested')}"
    return (f"{t['effect']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}], "
            f"p = {t['p_value']:.3g}")


# a latent model's copy row is answered against the decoder-aware null; its raw-null answer
# (comparison only) and the autoencoder's own question follow it
ANSWER_ORDER = ("plain_copies", "plain_copies_raw_null", "autoencoder", "side_extracts_more",
                "membership", "walks_back")
COPY_QUESTIONS = ("does plain sampling copy training images?",
                  "do these images copy training images?")


def run_label(run) -> str:
    """``breastmnist N=64 seed 0`` for a trained run, ``model NAME`` for an imported one."""
    return f"model {run}" if isinstance(run, str) else "{} N={} seed {}".format(*run)


def walk_back_test(b: dict) -> dict:
    """The boundary search's answer as a verdict row: target t50 against the controls'."""
    top = max(b["t50_control"]) if b["t50_control"] else None
    what = ("the most copied training image" if b.get("query", {}).get("chosen", "").startswith(
        "most") else "the chosen training image") if b.get("query_kind") else \
        "the fingerprinted image"
    return {"question": f"does the model walk back to {what} from more noise than to unseen "
                        f"images?",
            "statistic": f"t50 (isotonic p̂_t = 0.5) of the target minus the largest of "
                         f"{len(b['t50_control'])} unseen controls'; p = rank among them",
            "value": b["t50"], "null_value": top,
            **({"effect": None, "ci_low": None, "ci_high": None} if top is None else
               {"effect": b["t50"] - top, "ci_low": b["t50_ci"][0] - top,
                "ci_high": b["t50_ci"][1] - top}),
            "p_value": b["rank_p_value_t50"] if top is not None else None,
            "margin": 0.0, "null_effect": 0.0,
            "n": b["m"], "null_n": b["m"] * len(b["t50_control"]), "answer": b["walks_back"]}


def run_tests(metrics: str, membership: str, boundary: str | None) -> dict:
    """One run's tests by key, as the verdict reads them: the scores JSON's, membership's and,
    where the boundary search had controls, the walk-back's."""
    tests = dict(load_json(metrics)["tests"])
    tests["membership"] = load_json(membership)
    b = load_json(boundary) if boundary else {}
    if "t50_control" in b:
        tests["walks_back"] = walk_back_test(b)
    return tests


def answer(t: dict, alpha: float) -> str:
    """A test's answer: its own where it has one (no null), else :func:`decide`'s."""
    return decide(t, alpha=alpha, margin=t["margin"], null_effect=t["null_effect"])


def verdict_rows(runs: list, metrics: list[str], membership: list[str], alpha: float,
                 boundaries: list[str] | None = None, generated: dict | None = None) -> list:
    """One row per run and question; ``generated`` (name → scores JSON): one copy row per
    generated image set (the questions that need a model are not asked of it)."""
    rows = []
    boundaries = boundaries or [None] * len(runs)
    for run, mp, bp, wp in zip(runs, metrics, membership, boundaries, strict=True):
        dataset, n, seed = (f"models/{run}", None, None) if isinstance(run, str) else run
        tests = run_tests(mp, bp, wp)
        pixel = tests.get("plain_copies_pixel")
        for key in ANSWER_ORDER:
            if key not in tests:
                continue
            rows.append(_row(run_label(run), dataset, n, seed, tests[key], alpha,
                             pixel if key == "plain_copies" else None))
    for name, path in (generated or {}).items():
        tests = load_json(path)["tests"]
        rows.append(_row(f"generated {name}", f"generated/{name}", None, None,
                         tests["plain_copies"], alpha, tests.get("plain_copies_pixel")))
    return rows


def _row(label: str, dataset: str, n, seed, t: dict, alpha: float,
         pixel: dict | None = None) -> dict:
    """One verdict row; a copy row also carries the pixel match's answer alone (``pixel``) and
    the copy eye's smallest recall in its own check."""
    return {"run": label, "dataset": dataset, "N": None if n is None else int(n),
            "pixel_only_answer": None if pixel is None else answer(pixel, alpha),
            "smallest_recall": t.get("smallest_recall"),
            "smallest_recall_family": t.get("smallest_recall_family"),
            "seed": None if seed is None else int(seed), "question": t["question"],
            "answer": answer(t, alpha),
            "primary statistic": t["statistic"],
            "value": t["value"] if "value" in t else t["effect"], "null": t["null_value"],
            "effect": t["effect"], "ci_low": t["ci_low"], "ci_high": t["ci_high"],
            "p_value": t["p_value"], "margin": t["margin"],
            # a copy row: the excess its yes-rule finds with 80 % power at its sizes
            "detectable": t.get("detectable_rate"), "images": t["n"], "null_images": t["null_n"]}


def verdict_stage(*, runs: list, metrics: list[str], membership: list[str], alpha: float,
                  out_csv: str, out_md: str, boundaries: list[str] | None = None,
                  generated_names: list[str] | None = None,
                  generated: list[str] | None = None) -> list:
    """``generated``: the scores JSON of each generated image set, in ``generated_names``'
    order."""
    import pandas as pd

    pairs = dict(zip(generated_names or [], generated or [], strict=True))
    rows = verdict_rows(runs, metrics, membership, alpha, boundaries, pairs)
    df = pd.DataFrame(rows)
    save_csv(out_csv, df)
    lines = ["| run | question | answer | primary statistic | value (null) | effect [95 % CI] "
             "| p | margin | detectable | pixel match alone |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        detect = (_num(r["detectable"], "not at any rate") if r["question"] in COPY_QUESTIONS
                  and r["p_value"] is not None else "–")
        if detect != "–" and r.get("smallest_recall") is not None:
            # the eye's weakest family: what a "no" covers only that far
            detect += (f"; the eye's smallest recall {r['smallest_recall']:.2f} "
                       f"({r['smallest_recall_family']})")
        lines.append(f"| {r['run']} | {r['question']} | "
                     f"**{r['answer']}** | {r['primary statistic']} | {_num(r['value'])} "
                     f"({_num(r['null'], 'no null')}) | {_num(r['effect'])} "
                     f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}] | "
                     f"{_num(r['p_value'], fmt='.3g')} | {r['margin']:g} | {detect} | "
                     f"{r.get('pixel_only_answer') or '–'} |")
    lines += ["", f"yes: the primary test is significant at α = {alpha:g} and its 95 % "
                  f"interval excludes no effect; no: the interval excludes an effect larger "
                  f"than the margin and, for the copy question, the test could have seen one "
                  f"(detectable: the excess share in the high band its yes-rule finds with 80 % "
                  f"power at these sizes is at most the margin, beside the copy eye's smallest "
                  f"recall over the transform families of its own check); otherwise inconclusive "
                  f"(too few images to tell). Pixel match alone: the copy question answered "
                  f"by the pixel match without the learned copy eye, against the same null. "
                  f"The walk-back row: yes when the target's whole t50 "
                  f"interval lies above every control's t50, no when its t50 is within the "
                  f"controls' range."
              + (f" {UNLIKE_TEXT}" if any(r["answer"] == UNLIKE for r in rows) else "")
              + (f" {NO_NULL_TEXT}" if any(r["answer"] == NO_NULL for r in rows) else ""), ""]
    save_text(out_md, "\n".join(lines))
    return rows
