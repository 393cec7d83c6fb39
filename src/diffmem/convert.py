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
    from safetensors.torch import save_file

    bundle, out = Path(bundle).expanduser(), Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ModelFolderError(f"{out} exists and is not empty; expected a new folder")
    stage = out.with_name(out.name + ".partial")  # nothing half-written looks finished
    shutil.rmtree(stage, ignore_errors=True)
    (stage / CONFIG).parent.mkdir(parents=True)
    source = bundle / (config or CONFIG)
    if not source.is_file():
        raise ModelFolderError(f"{source} not found: expected a MONAI bundle's "
                               f"configs/inference.json")
    shutil.copyfile(source, stage / CONFIG)
    written = {}
    for role, key in (("autoencoder", "autoencoder_def"), ("unet", "network_def")):
        info = _definitions(stage, key)
        pt = bundle / WEIGHTS[role].with_suffix(".pt")
        if not pt.is_file():
            raise ModelFolderError(f"{pt} not found: expected the bundle's weights")
        net = build(*info)
        state = _read_pt(pt)
        try:
            if set(state) == set(net.state_dict()):
                net.load_state_dict(state, strict=True)
            elif hasattr(net, "load_old_state_dict"):  # MONAI GenerativeModels' key layout
                net.load_old_state_dict(dict(state))
                _all_from_file(net, state, pt)
            else:
                raise ModelFolderError(f"{pt}: its tensors do not match {info[0]} as defined")
        except ModelFolderError:
            raise
        except (KeyError, RuntimeError, ValueError) as err:  # mis-named or mis-shaped
            raise ModelFolderError(f"{pt}: its tensors do not match {info[0]} as defined "
                                   f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                                   ) from None
        target = stage / WEIGHTS[role].with_suffix(".safetensors")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                  str(target))
        written[role] = str(out / WEIGHTS[role].with_suffix(".safetensors"))
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    return written


def _read_pt(pt: Path) -> dict:
    """A .pt of tensors, through ``torch.load(weights_only=True)``: tensors and plain containers
    only (a pickle of anything else fails to load); a ``state_dict`` entry is unwrapped."""
    import torch

    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses any other object: one line, not a traceback
        raise ModelFolderError(f"{pt} is not a file of tensors torch.load(weights_only=True) "
                               f"reads ({type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state and
            all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ModelFolderError(f"{pt} does not hold a state dict of tensors")
    return state


def _all_from_file(net, state: dict, pt: Path) -> None:
    """After MONAI's ``load_old_state_dict`` (which keeps a network's initial values for keys it
    does not find, and fills a missing output projection with an identity): every tensor of the
    network must be one of the file's, and every tensor of the file used."""
    def key(t):
        t = t.detach().cpu().contiguous()
        return tuple(t.shape), str(t.dtype), t.numpy().tobytes()

    file_tensors = {}
    for name, t in state.items():
        file_tensors.setdefault(key(t), []).append(name)
    invented = [k for k, t in net.state_dict().items() if key(t) not in file_tensors]
    if invented or len(state) != len(net.state_dict()):
        raise ModelFolderError(
            f"{pt}: {len(invented)} tensors of the network are not in the file "
            f"({', '.join(invented[:3])}) and the file holds {len(state)} tensors for its "
            f"{len(net.state_dict())}; expected every tensor from the file")


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
