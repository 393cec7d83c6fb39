"""Compare two workflow result folders value for value (a check for refactorings).

    python tests/compare_results.py RESULTS_A RESULTS_B

Every ``.json`` and ``.csv`` file under both folders is compared value for value, and every array
of every ``.npz`` file exactly. Timing fields (seconds, throughput, peak memory) and absolute
paths differ between any two runs and are skipped; nothing else is. Prints one line per
difference and a summary; exits 1 if anything differs or a file exists on one side only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

# fields that measure the machine, not the result
TIMING = {"seconds", "images_per_second", "steady_images_per_second", "peak_gpu_gib",
          "wall_s", "images_per_s", "image_evaluations_per_s", "date"}
SUFFIXES = (".json", ".csv", ".npz")


def _same_number(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def diff_values(a, b, where: str) -> list[str]:
    """Differences between two JSON values, skipping timing keys and absolute paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in TIMING:
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'B' if k not in a else 'A'}")
                continue
            out += diff_values(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in diff_values(x, y, f"{where}[{i}]")]
    if isinstance(a, str) and isinstance(b, str) and a.startswith("/") and b.startswith("/"):
        return []  # an absolute path: where the run happened, not what it found
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            not isinstance(a, bool) and not isinstance(b, bool):
        return [] if _same_number(float(a), float(b)) else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def diff_csv(a: Path, b: Path, where: str) -> list[str]:
    import pandas as pd

    da, db = pd.read_csv(a), pd.read_csv(b)
    keep = [c for c in da.columns if c not in TIMING]
    if list(da.columns) != list(db.columns):
        return [f"{where}: columns {list(da.columns)} != {list(db.columns)}"]
    return diff_values(json.loads(da[keep].to_json(orient="records")),
                       json.loads(db[keep].to_json(orient="records")), where)


def diff_npz(a: Path, b: Path, where: str) -> list[str]:
    with np.load(a, allow_pickle=False) as fa, np.load(b, allow_pickle=False) as fb:
        if sorted(fa.files) != sorted(fb.files):
            return [f"{where}: arrays {sorted(fa.files)} != {sorted(fb.files)}"]
        return [f"{where}[{k}]: arrays differ" for k in sorted(fa.files)
                if not np.array_equal(fa[k], fb[k], equal_nan=fa[k].dtype.kind == "f")]


def compare(root_a: Path, root_b: Path) -> tuple[int, list[str]]:
    files_a = {p.relative_to(root_a) for p in root_a.rglob("*") if p.suffix in SUFFIXES}
    files_b = {p.relative_to(root_b) for p in root_b.rglob("*") if p.suffix in SUFFIXES}
    out = [f"{p}: only in {'A' if p in files_a else 'B'}" for p in sorted(files_a ^ files_b)]
    for rel in sorted(files_a & files_b):
        a, b = root_a / rel, root_b / rel
        if rel.suffix == ".json":
            out += diff_values(json.loads(a.read_text()), json.loads(b.read_text()), str(rel))
        elif rel.suffix == ".csv":
            out += diff_csv(a, b, str(rel))
        else:
            out += diff_npz(a, b, str(rel))
    return len(files_a & files_b), out


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    n, diffs = compare(Path(args[0]), Path(args[1]))
    for d in diffs:
        print(d)
    print(f"{n} files compared, {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
