"""Stages of rules/models.smk, an imported model (``models:`` in the config): its weights, its
images, their near-duplicates, and the boundary search on chosen training images without a
fingerprint.

The imported model's run folder (``results/models/{name}/``) holds the same files as a trained
run (``data/train.npz``, ``data/heldout.npz``, ``data/unused_train.npz`` — empty here —,
``model/model.safetensors``), so sampling, SIDE, the memorization scores and membership
inference run on it unchanged.
"""

from __future__ import annotations

import logging

import numpy as np

from ..attacks.autoencoder import autoencoder_test
from ..attacks.boundary import (
    boundary_sampler,
    choose_images,
    most_copied,
    search_queries,
    walk_back_summary,
)
from ..data.images import read_images
from ..device import resolve_device
from ..diffusion.denoiser import reconstruct
from ..diffusion.monai_bundle import is_bundle, load_bundle
from ..diffusion.pretrained import load_pretrained
from ..diffusion.process import NoiseProcess
from ..diffusion.unet import load_model, save_model
from ..io import load_npz, save_csv, save_json, save_npz
from ..metrics.similarity import Matching, mirrored
from .data import write_near_duplicates
from .fingerprint import boundary_figure
from .scores import load_with_null

log = logging.getLogger(__name__)


def import_model_stage(*, folder: str, out_weights: str, out_config: str,
                       monai: dict | None = None) -> dict:
    """Convert a model folder into the workflow's own files (safetensors + JSON config), so every
    later rule runs on it unchanged. ``monai``: a MONAI bundle's settings from the entry."""
    if is_bundle(folder, monai):  # a MONAI bundle-like folder, converted to safetensors
        model, extra, autoencoder = load_bundle(folder, monai)
    else:
        model, extra, autoencoder = load_pretrained(folder)
    save_model(model, out_weights, out_config, extra=extra, autoencoder=autoencoder)
    return extra


def import_images_stage(*, train: str, heldout: str | None, size: int, channels: int,
                        resize: bool, out_train: str, out_heldout: str, out_unused: str,
                        out_json: str) -> dict:
    """Read and preprocess the model's training and held-out images into the run's files.
    Without held-out images ``heldout.npz`` holds none: every score then has no null."""
    tr, tr_names = read_images(train, size=size, channels=channels, resize=resize)
    if heldout:
        ho, ho_names = read_images(heldout, size=size, channels=channels, resize=resize)
    else:
        ho, ho_names = tr[:0], []
        log.warning("no held-out images: the memorization scores, membership inference and "
                    "the boundary search have no null, and their verdicts stay inconclusive")
    save_npz(out_train, images=tr, labels=np.zeros((len(tr), 1), np.uint8),
             indices=np.arange(len(tr)), names=np.array(tr_names, dtype=str))
    save_npz(out_heldout, images=ho, labels=np.zeros((len(ho), 1), np.uint8),
             names=np.array(ho_names, dtype=str))
    # no unused training split: every training image is a member
    save_npz(out_unused, images=tr[:0], indices=np.zeros(0, np.int64))
    summary = {"train_images": int(len(tr)), "heldout_images": int(len(ho)),
               "image_size": size, "channels": channels, "resize": resize,
               "train": str(train), "heldout": heldout}
    save_json(out_json, summary)
    return summary


def model_duplicates_stage(*, name: str, train_npz: str, heldout_npz: str, cfg: dict,
                           matching: dict, device: str, out_npz: str, out_json: str,
                           out_png: str) -> dict:
    """Near-duplicate groups over the model's training and held-out images, under the model's
    ``matching`` (mirror twins too when it was trained with random flips)."""
    return write_near_duplicates(name=f"models/{name}", train=load_npz(train_npz)["images"],
                                 heldout=load_npz(heldout_npz)["images"], cfg=cfg,
                                 matching=matching, device=device, out_npz=out_npz,
                                 out_json=out_json, out_png=out_png)


def boundary_search_images_stage(*, weights: str, model_config: str, train_npz: str,
                                 heldout_npz: str, samples_npz: str, duplicates_npz: str, cfg: dict,
                                 chosen: list, count: int, mirror: bool, matching: dict,
                                 seed: int, device: str,
                                 bf16: bool, out_csv: str, out_json: str, out_png: str,
                                 graphs: bool = True) -> dict:
    """Does the model walk back to a training image from more noise than to unseen images?

    Without a fingerprint, a reverse run "returns" when the classifier-free test of the
    fingerprint audit accepts it (its nearest image is the query or a near-duplicate of it,
    closer than the query is to any other image); the fingerprinting paper notes ρ needs only
    the identity test. Controls: held-out images sharing no group with a training image, chosen
    by the same rule (most often nearest to a plain sample among held-out images, under the
    audit's ``matching``). ``mirror``: the model was trained with random flips, so a mirrored
    copy of an image is that image to the acceptance test too."""
    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    process = NoiseProcess.from_config(meta["diffusion"])
    sampler, steps = boundary_sampler(cfg, process)
    tr = load_npz(train_npz)
    train, names = tr["images"], [str(n) for n in tr.get("names", [])]
    heldout = load_npz(heldout_npz)["images"]
    samples = load_npz(samples_npz)["images"]
    dup = load_npz(duplicates_npz)
    groups = np.concatenate([dup["train_group"], dup["heldout_group"]])
    match = Matching.from_config(matching, train.shape[1])
    picks, how = choose_images(chosen, names, samples, train, count, matching=match, device=dev)
    train_groups = set(dup["train_group"].tolist())
    free = np.array([g not in train_groups for g in dup["heldout_group"]], dtype=bool)
    candidates = np.flatnonzero(free)
    k = min(int(cfg.get("controls", 19)), len(candidates))
    ctl = []
    if k:
        mc = most_copied(samples, heldout[candidates], matching=match, device=dev)
        ctl = [int(candidates[i]) for i in mc["order"][:k]]
        if k < int(cfg.get("controls", 19)):
            log.warning("only %d held-out images share no group with a training image: %d "
                        "controls instead of %d", len(candidates), k, cfg.get("controls", 19))
    refs = np.concatenate([train, heldout])
    n = len(refs)
    # a latent model's walk-back is judged against the decoded references D(E(·)): a decoded
    # output cannot be closer to a raw image than that image's own reconstruction is
    refs = reconstruct(model, refs, dev)
    if mirror:  # a mirrored copy of an image is that image to a model trained with flips
        refs = np.concatenate([refs, mirrored(refs)])

    def members(i: int) -> list[int]:
        same = np.flatnonzero(groups == groups[i]).tolist()
        return same + ([j + n for j in same] if mirror else [])

    queries = [(f"image {i}", train[i], members(i)) for i in picks]
    queries += [(f"control {j + 1}", heldout[h], members(len(train) + h))
                for j, h in enumerate(ctl)]
    results, df, seconds = search_queries(model, process, sampler, steps, queries, refs, cfg,
                                          seed, dev, bf16, graphs=graphs)
    controls = [results[q[0]] for q in queries[len(picks):]]
    per_image = []
    for i in picks:
        r = results[f"image {i}"]
        per_image.append({"train_index": i, "name": names[i] if names else f"#{i}",
                          **walk_back_summary(r, controls, process.T)})
    first = per_image[0]
    df["query"] = df["query"].replace({f"image {picks[0]}": "target"})
    save_csv(out_csv, df)
    summary = {
        **{k: v for k, v in first.items() if k not in ("train_index", "name")},
        "query_kind": "training image",
        "query": {"train_index": first["train_index"], "name": first["name"], "chosen": how},
        "images": per_image,
        "rule": "the output's nearest image is the query (or a near-duplicate of it), and it is "
                "closer to it than the query is to any other image",
        "controls": [{"heldout_index": h} for h in ctl],
        "control_candidates": int(len(candidates)),
        # without held-out images (or none free of training twins) nothing is compared
        "no_null": not ctl,
        "note": "the verdict row is the first image's; each image is reported in 'images'",
        "method": cfg["method"], "m": int(cfg["trajectories"]), "T": process.T,
        "evaluations": results[queries[0][0]]["evaluations"],
        "rounds": results[queries[0][0]]["rounds"], "seconds": seconds, "sampler": sampler,
        "steps": steps, "mirror": mirror,
        "references": "decoded through the autoencoder, D(E(x))" if model.latent else "images",
    }
    save_json(out_json, summary)
    boundary_figure(df, summary, out_png)
    return summary


def autoencoder_audit_stage(*, weights: str, model_config: str, train_npz: str,
                            heldout_npz: str, unused_npz: str, duplicates_npz: str | None,
                            scoring: dict, membership: dict, device: str, out_heldout: str,
                            out_json: str) -> dict:
    """A latent model's decoder-aware null (``heldout_decoded.npz``: D(E(x)) of every held-out
    image, in order) and its autoencoder's test (:mod:`diffmem.attacks.autoencoder`)."""
    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    if not model.latent:
        raise ValueError(f"{model_config} describes a pixel-space model: it has no autoencoder")
    held = load_npz(heldout_npz)
    decoded = reconstruct(model, held["images"], dev)
    save_npz(out_heldout, **{k: (decoded if k == "images" else v) for k, v in held.items()})
    tr, _, pool, _ = load_with_null(train_npz, heldout_npz, unused_npz, duplicates_npz, scoring)
    unseen = pool["images"][np.concatenate([pool["calibrate"], pool["score"]])]
    test = autoencoder_test(model, tr["images"], unseen,
                            margin=float(membership.get("margin", 0.05)),
                            seed=int(membership.get("seed", 5)), device=dev)
    latent = meta["latent"]
    summary = {"kind": latent["kind"], "scale": latent["scale"],
               "scale_source": latent["scale_source"], "latent_shape": latent["shape"],
               "image_size": latent["image_size"], "decoded_heldout": int(len(decoded)),
               "null": pool["counts"], "test": test}
    save_json(out_json, summary)
    return summary
