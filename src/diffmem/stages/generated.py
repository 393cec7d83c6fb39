"""Stages of rules/generated.smk, a generator's images audited without its model (``generated:``
in the config): the images as the audit reads them, the near-duplicates of the training and
held-out images, and the copy question beside the null.

A hospital releasing a synthetic image set, or a team whose generator is latent, conditional or
no diffusion model at all, can ask "do these images copy our patients?" with the images alone:
the generated images, the training images and unseen ones. The questions that need the model
(membership, the walk-back, SIDE) are not asked. The run folder is
``results/generated/{name}/``.
"""

from __future__ import annotations

import numpy as np

from ..data.images import read_images
from ..device import resolve_device
from ..io import load_npz, save_json, save_npz
from ..metrics.scores import score_generated
from .data import write_near_duplicates
from .models import import_images_stage
from .scores import CopyEye, load_with_null, pairs_figure, write_scores


def import_generated_stage(*, images: str, train: str, heldout: str | None, size: int,
                           channels: int, resize: bool, out_generated: str, out_train: str,
                           out_heldout: str, out_unused: str, out_json: str) -> dict:
    """The generated, training and held-out images, each brought to ``size`` pixels and
    ``channels`` as an imported model's images are (:func:`import_images_stage`)."""
    summary = import_images_stage(train=train, heldout=heldout, size=size, channels=channels,
                                  resize=resize, out_train=out_train, out_heldout=out_heldout,
                                  out_unused=out_unused, out_json=out_json)
    gen, names = read_images(images, size=size, channels=channels, resize=resize)
    save_npz(out_generated, images=gen, names=np.array(names, dtype=str))
    summary |= {"generated_images": int(len(gen)), "generated": str(images)}
    save_json(out_json, summary)
    return summary


def generated_duplicates_stage(*, name: str, train_npz: str, heldout_npz: str, cfg: dict,
                               matching: dict, device: str, out_npz: str, out_json: str,
                               out_png: str) -> dict:
    """Near-duplicate groups over the generator's training and held-out images."""
    return write_near_duplicates(name=f"generated/{name}", train=load_npz(train_npz)["images"],
                                 heldout=load_npz(heldout_npz)["images"], cfg=cfg,
                                 matching=matching, device=device, out_npz=out_npz,
                                 out_json=out_json, out_png=out_png)


def generated_scores_stage(*, generated_npz: str, train_npz: str, heldout_npz: str,
                           unused_npz: str, duplicates_npz: str, cfg: dict, device: str,
                           out_csv: str, out_json: str, out_nearest_csv: str, out_pairs_png: str,
                           out_hist_png: str, embedding: str | None = None,
                           embedding_json: str | None = None) -> dict:
    """Do these images copy training images? Scored beside the null exactly as a model's plain
    samples are (the same matching, copy eye, bands, tests and detectable rate)."""
    dev = resolve_device(device)
    eye = CopyEye.load(embedding, embedding_json, dev) if embedding else None
    tr, heldout, pool, groups = load_with_null(train_npz, heldout_npz, unused_npz,
                                               duplicates_npz, cfg, eye)
    generated = load_npz(generated_npz)["images"]
    res = score_generated(train=tr["images"], groups=groups, generated=generated, pool=pool,
                          cfg=cfg, device=dev, heldout=heldout,
                          embed=eye.embed if eye else None)
    summary = write_scores(res, tr, pool, out_csv=out_csv, out_nearest_csv=out_nearest_csv,
                           out_hist_png=out_hist_png, eye=eye, cfg=cfg)
    summary["not_asked"] = ("membership inference, the walk-back and SIDE need the generator's "
                            "model; only its images were given")
    save_json(out_json, summary)
    pairs_figure(generated, tr["images"], res["nns"][res["label"]][res["primary_similarity"]],
                  out_pairs_png, "generated images: top pairs, generated | nearest training image")
    return summary
