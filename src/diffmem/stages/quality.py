"""Stage of rules/quality.smk: ``sample_quality`` (FID against the training and the held-out
images, see :mod:`diffmem.metrics.fid`)."""

from __future__ import annotations

from ..device import resolve_device
from ..io import file_digest, load_npz, save_json
from ..metrics.fid import build_inception, frechet_distance, gaussian_stats, inception_features


def sample_quality_stage(*, samples_npz: str, train_npz: str, heldout_npz: str, cfg: dict,
                         device: str, out_json: str) -> dict:
    """FID of the samples against the training and the held-out images, or a stated skip."""
    weights = (cfg or {}).get("inception_weights")
    max_images = int((cfg or {}).get("max_images", 10000))
    samples = load_npz(samples_npz)["images"][:max_images]
    train = load_npz(train_npz)["images"][:max_images]
    heldout = load_npz(heldout_npz)["images"][:max_images]
    result = {"fid_train": None, "fid_test": None, "samples": int(len(samples)),
              "train_images": int(len(train)), "heldout_images": int(len(heldout)),
              "inception_weights": weights, "skipped": None}
    if not weights:
        result["skipped"] = ("no Inception weights: set fid.inception_weights to a safetensors "
                             "file (python -m diffmem.metrics.fid export-inception FILE)")
        print(f"FID skipped: {result['skipped']}")
        save_json(out_json, result)
        return result
    dev = resolve_device(device)
    net = build_inception(weights, dev)
    bs = int((cfg or {}).get("batch_size", 200))
    stats = {k: gaussian_stats(inception_features(v, net, dev, bs))
             for k, v in (("samples", samples), ("train", train), ("heldout", heldout))}
    result["fid_train"] = round(frechet_distance(*stats["samples"], *stats["train"]), 3)
    result["fid_test"] = round(frechet_distance(*stats["samples"], *stats["heldout"]), 3)
    result["inception_sha256"] = file_digest(weights)
    if min(len(samples), len(train), len(heldout)) < 2048:
        result["note"] = ("fewer images than feature dimensions (2048): the covariances are "
                          "singular and FID is biased upwards; compare only equal set sizes")
    save_json(out_json, result)
    return result
