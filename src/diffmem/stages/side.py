"""Stages of rules/side.smk: SIDE's surrogate labels, its time-dependent classifier and the guided
extraction (see :mod:`diffmem.attacks.side`)."""

from __future__ import annotations

import numpy as np
import torch

from ..attacks.side import (
    guidance_fn,
    load_time_classifier,
    surrogate_labels,
    train_time_classifier,
)
from ..device import resolve_device
from ..diffusion.process import NoiseProcess
from ..diffusion.sampler import fast_runner, sample
from ..diffusion.unet import load_model, process_shape
from ..io import load_json, load_npz, save_json, save_npz, save_safetensors
from ..plotting import image_grid


def surrogate_labels_stage(*, samples_npz: str, k: int, pca_dims: int, seed: int, out_npz: str,
                           out_json: str, out_png: str, per_cluster: int = 8) -> dict:
    images = load_npz(samples_npz)["images"]
    res = surrogate_labels(images, k, pca_dims=pca_dims, seed=seed)
    save_npz(out_npz, labels=res["labels"], sizes=res["sizes"])
    save_json(out_json, {"k": k, "pca_dims": pca_dims, "seed": seed,
                         "sizes": res["sizes"].tolist(), "images": len(images)})
    rows, caps = [], []
    for c in range(k):
        members = np.nonzero(res["labels"] == c)[0][:per_cluster]
        for j in range(per_cluster):
            rows.append(images[members[j]] if j < len(members) else np.zeros_like(images[0]))
            caps.append(f"c{c} (n={res['sizes'][c]})" if j == 0 else "")
    image_grid(np.stack(rows), out_png, ncols=per_cluster, max_images=len(rows), captions=caps,
               title="surrogate clusters of generated images (one row per cluster)")
    return res


def train_surrogate_classifier_stage(*, samples_npz: str, labels_npz: str, model_config: str,
                                     cfg: dict, seed: int, device: str, out_weights: str,
                                     out_json: str) -> dict:
    samples = load_npz(samples_npz)
    # a latent model's classifier learns its noised latents (the space its guidance steers)
    images = samples["latents"] if "latents" in samples else samples["images"]
    labels = load_npz(labels_npz)["labels"]
    process = NoiseProcess.from_config(load_json(model_config)["diffusion"])
    net, metrics = train_time_classifier(images, labels, process, cfg, seed=seed, device=device)
    save_safetensors(out_weights, net.state_dict())
    save_json(out_json, {"config": net.config, **metrics})
    return metrics


def side_extract_stage(*, weights: str, model_config: str, clf_weights: str, clf_json: str,
                       scale: float, per_cluster: int, sampler: str, steps: int, batch_size: int,
                       seed: int, device: str, bf16: bool, out_npz: str, out_png: str,
                       graphs: bool = True) -> dict:
    """Guided sampling toward every surrogate cluster at guidance scale ``scale``."""
    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    runner = fast_runner(model, dev, autocast=bf16 and dev.type == "cuda", graphs=graphs)
    process = NoiseProcess.from_config(meta["diffusion"])
    net = load_time_classifier(clf_weights, clf_json, dev)
    k = net.config["num_classes"]
    shape = process_shape(meta)
    # every cluster in the same batches: the guidance hook takes one target label per image
    labels = np.repeat(np.arange(k), per_cluster)
    images = []
    for start in range(0, len(labels), batch_size):
        y = torch.as_tensor(labels[start:start + batch_size], device=dev)
        images.append(sample(model, process, len(y), shape=shape, sampler=sampler, steps=steps,
                             batch_size=len(y), seed=seed * 100_003 + start, device=dev,
                             autocast=bf16 and dev.type == "cuda",
                             guidance=guidance_fn(net, y), guidance_scale=scale, progress=False,
                             runner=runner))
    images = np.concatenate(images)
    save_npz(out_npz, images=images, labels=labels)
    image_grid(images[np.argsort(labels, kind="stable")], out_png, ncols=min(per_cluster, 10),
               max_images=100, title=f"SIDE samples, guidance scale {scale:g}")
    return {"images": int(len(images)), "scale": scale}
