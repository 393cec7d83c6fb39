"""Benchmark entry point: ``python -m diffmem.bench`` (see :mod:`diffmem.stages.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .stages.bench import BENCH_DEFAULTS, bench_stage, workflow_root
from .stages.config import check_config


def main(argv=None) -> None:
    root = workflow_root()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--data-root", default=None, help="overrides the config's data_root")
    for key, value in BENCH_DEFAULTS.items():  # override the config's bench section
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                        help=f"default: config bench.{key}, else {value}")
    ap.add_argument("--e2e", action="store_true", help="also time the whole DAG")
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    ap.add_argument("--markdown", default=None, help="Markdown file for the table")
    a = ap.parse_args(argv)
    config = yaml.safe_load(Path(a.config).read_text())
    if Path(a.config).resolve() != (root / "config.yaml").resolve():  # overlay, as Snakemake
        base = yaml.safe_load((root / "config.yaml").read_text())
        config = _merge(base, config)
    data_root = str(Path(a.data_root or config["data_root"]).expanduser())
    config["data_root"] = data_root
    config["bench"] = dict(config.get("bench") or {}) | {
        k: getattr(a, k) for k in BENCH_DEFAULTS if getattr(a, k) is not None}
    check_config(config, root / "workflow/schemas/config.schema.yaml")
    print(bench_stage(config=config, data_root=data_root, out_json=a.out, out_md=a.markdown,
                      e2e_config=a.config if a.e2e else None))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) \
            else v
    return out


if __name__ == "__main__":
    main()
