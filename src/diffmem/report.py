"""The Markdown report: one section per run (dataset, N, seed) with its figures and numbers.

Images are linked with paths relative to the report, so ``results/`` can be zipped and read
anywhere. ``snakemake --report`` builds the HTML version from the rules' ``report()`` outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .io import load_json, save_text


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _table(rows: list[tuple[str, object]]) -> str:
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def run_section(run_dir: Path, base: Path, dataset: str, n: int, seed: int) -> str:
    target = load_json(run_dir / "data/target.json")
    model = load_json(run_dir / "model/model_config.json")
    samples = load_json(run_dir / "samples/samples.json")
    tr = model["train"]
    saf = target["saf"]
    rows = [
        ("training images N", n),
        ("target (position in subset / index in train split)",
         f"{target['target_position']} / {target['target_source_index']}"),
        ("SAF centre (y, x), radius, grey", f"{tuple(saf['center_yx'])}, {saf['radius']:g} px, "
                                            f"{saf['grey']:g}"),
        ("U-Net parameters", f"{tr['parameters']:,}"),
        ("training steps × batch", f"{tr['steps']} × {tr['batch_size']}"
                                   + (f" (resumed at {tr['resumed_from']})"
                                      if tr["resumed_from"] else "")),
        ("final training loss", f"{tr['final_loss']:.4f}" if tr["final_loss"] else "n/a"),
        ("training time", f"{tr['seconds']:.1f} s on {tr['device']} "
                          f"({tr['images_per_second']:.0f} images/s, bf16={tr['bf16']})"),
        ("samples", f"{samples['num_samples']:,} ({samples['sampler']}, {samples['steps']} steps)"),
        ("sampling time", f"{samples['seconds']:.1f} s on {samples['device']} "
                          f"({samples['images_per_second']:.0f} images/s)"),
    ]
    parts = [f"## {dataset}, N = {n}, seed {seed}", "", _table(rows), "",
             f"![target]({_rel(run_dir / 'data/target.png', base)})", "",
             "*The fingerprinted target: the clean original (removed from the training set), the "
             "stamped copy that replaced it, and their difference.*", "",
             f"![loss]({_rel(run_dir / 'model/loss.png', base)})", "",
             "*Training loss (ε-prediction MSE) of the DPM.*", "",
             f"![samples]({_rel(run_dir / 'samples/grid.png', base)})", "",
             "*Images sampled from the trained model's EMA weights.*", ""]
    return "\n".join(parts)


def write_report(*, out_markdown: str, runs: list, run_dirs: list[str], title: str,
                 settings: dict, extra_sections: list[str] | None = None) -> None:
    base = Path(out_markdown).parent
    lines = [f"# {title}", "",
             "Which training images can this diffusion model reproduce, how likely is it, and "
             "can an attacker pull them out? One section per trained model below.", ""]
    lines += extra_sections or []
    for (dataset, n, seed), run_dir in zip(runs, run_dirs, strict=True):
        lines.append(run_section(Path(run_dir), base, dataset, int(n), int(seed)))
    lines += ["## Settings", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).rstrip(),
              "```", ""]
    save_text(out_markdown, "\n".join(lines))
