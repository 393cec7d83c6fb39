"""``python -m diffmem.convert monai BUNDLE OUT``: a MONAI bundle's pickled weights as safetensors,
once, where you trust the files.

MONAI bundles ship their networks as ``models/model_autoencoder.pt`` and ``models/model.pt``,
pickles, often in MONAI GenerativeModels' key layout. The audit never unpickles a user's file;
this command is the one place that does, and it is run by the user, not by any job: it builds
each network from the bundle's definitions exactly as the audit reads them
(:mod:`diffmem.diffusion.monai_bundle`: no code from the config is evaluated), loads each
``.pt`` with ``torch.load(weights_only=True)`` (tensors and plain containers only) into it —
through MONAI's ``load_old_state_dict`` where the keys are in the old layout — and writes
``OUT/models/model_autoencoder.safetensors``, ``OUT/models/model.safetensors`` and a copy of
the definitions' JSON at ``OUT/configs/inference.json``. Point a ``models:`` entry at OUT.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .diffusion.monai_bundle import CONFIG, WEIGHTS, build
from .errors import ModelFolderError


def convert_monai(bundle: str | Path, out: str | Path, config: str | None = None) -> dict:
    """Write OUT (see the module docstring); returns what was written."""
    import torch
    from safetensors.torch import save_file

    bundle, out = Path(bundle).expanduser(), Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ModelFolderError(f"{out} exists and is not empty; expected a new folder")
    stage = out.with_name(out.name + ".partial")  # nothing half-written looks finished
    shutil.rmtree(stage, ignore_errors=True)
    (stage / CONFIG).parent.mkdir(parents=True)
    source = bundle / (config or CONFIG)
    if not source.is_file():
        raise ModelFolderError(f"no {source.relative_to(bundle)} in {bundle}: expected a MONAI "
                               f"bundle's configs/inference.json")
    shutil.copyfile(source, stage / CONFIG)
    written = {}
    for role, key in (("autoencoder", "autoencoder_def"), ("unet", "network_def")):
        info = _definitions(stage, key)
        pt = bundle / WEIGHTS[role].with_suffix(".pt")
        if not pt.is_file():
            raise ModelFolderError(f"no {pt.relative_to(bundle)} in {bundle}: expected the "
                                   f"bundle's weights")
        net = build(*info)
        state = torch.load(pt, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and \
                isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if set(state) == set(net.state_dict()):
            net.load_state_dict(state, strict=True)
        elif hasattr(net, "load_old_state_dict"):  # MONAI GenerativeModels' key layout
            net.load_old_state_dict(dict(state))
        else:
            raise ModelFolderError(f"{pt}: its tensors do not match {info[0]} as defined")
        target = stage / WEIGHTS[role].with_suffix(".safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                  str(target))
        written[role] = str(out / WEIGHTS[role].with_suffix(".safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    return written


def _definitions(folder: Path, key: str) -> tuple[str, dict]:
    from .diffusion.monai_bundle import definition
    from .diffusion.pretrained import _json

    role = "autoencoder" if key == "autoencoder_def" else "unet"
    path = folder / CONFIG
    return definition(_json(path), key, role, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffmem.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    m = sub.add_parser("monai", help="a MONAI bundle's .pt weights as safetensors")
    m.add_argument("bundle", help="the bundle folder (configs/inference.json, models/*.pt)")
    m.add_argument("out", help="a new folder to write")
    m.add_argument("--config", help="the definitions' JSON, relative to the bundle "
                                    "(default configs/inference.json)")
    args = parser.parse_args(argv)
    try:
        written = convert_monai(args.bundle, args.out, args.config)
    except ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for role, path in written.items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
