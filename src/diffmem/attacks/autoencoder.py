"""A latent model's autoencoder: the decoder-aware null and whether the autoencoder itself
memorizes (the ``autoencoder_audit`` rule, :func:`diffmem.stages.models.autoencoder_audit_stage`).

* **The decoder-aware null.** A latent model's outputs are decoded, D(z); under "no copying"
  they are exchangeable with unseen images passed through the same autoencoder, D(E(x)), not
  with raw unseen images: the decoder smooths, and smoothing *raises* nearest-training
  similarity, so a raw null can give a false "yes". ``heldout_decoded.npz`` holds D(E(x)) of
  every held-out image, in the held-out file's order, so each reconstruction keeps its source's
  near-duplicate group (computed on the raw images) and its half of the null; the copy question
  is scored against it, the raw null's answer reported beside
  (:func:`diffmem.stages.scores.extraction_metrics_stage`).
* **Does the autoencoder memorize?** The decoder-aware null would absorb an autoencoder that
  reconstructs its training images better than unseen ones, so that is asked on its own: the
  AUC of −‖x − D(E(x))‖² (mean over pixels, in [-1, 1]), training images against the null's
  unseen images (both halves: nothing is chosen on them), with a one-sided Mann–Whitney p and a
  bootstrap interval, answered by the membership question's rule and margin.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import to_tensor
from ..metrics.stats import NO_NULL, auc_test

QUESTION = "does the autoencoder reconstruct its training images better than unseen ones?"


@torch.no_grad()
def reconstruction_errors(model, images: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    """Per image, the mean squared difference between x and D(E(x)) in [-1, 1] (float, before
    any rounding to uint8)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i:i + batch_size], device)
        out.append(((model.decode(model.encode(x)) - x) ** 2).mean((1, 2, 3)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def autoencoder_test(model, train: np.ndarray, unseen: np.ndarray, *, margin: float, seed: int,
                     device) -> dict:
    """The autoencoder question's test as a verdict row reads it."""
    e_tr = reconstruction_errors(model, train, device)
    e_un = reconstruction_errors(model, unseen, device)
    base = {"question": QUESTION, "margin": margin, "null_effect": 0.5,
            "statistic": "AUC of −reconstruction error ‖x − D(E(x))‖², training vs unseen "
                         "images (the null's, both halves)",
            "mean_error_train": float(e_tr.mean()) if len(e_tr) else None,
            "mean_error_unseen": float(e_un.mean()) if len(e_un) else None}
    if not len(e_un):
        return base | {"answer": NO_NULL, "effect": None, "ci_low": None, "value": None,
                       "ci_high": None, "p_value": None, "null_value": 0.5,
                       "n": int(len(e_tr)), "null_n": 0,
                       "no_null": "no unseen images to compare reconstructions with"}
    res = auc_test(-e_tr, -e_un, seed=seed)
    return base | res | {"value": res["effect"],
                         "test": "one-sided Mann–Whitney U; bootstrap 95 % interval"}
