"""Sample quality: FID of the generated set against the training set and the held-out set.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to Inception-v3
pool features (2048-d) of two image sets. The Inception weights cannot be downloaded by the
workflow on an offline machine, so the config names a local file (``fid.inception_weights``);
without one the stage writes a result that says FID was skipped and why, and the tables show
no number.

The network is torchvision's ``inception_v3`` and the file is its state dict as safetensors
(``python -m diffmem.metrics.fid export-inception FILE`` writes it from torchvision's own
ImageNet weights on a machine with a network). Images are scaled to [0, 1], repeated to three
channels, resized bilinearly to 299×299 and normalised with the ImageNet mean and std, the
input those weights expect. These are not the TensorFlow FID Inception weights that
pytorch-fid / clean-fid use, so values are comparable between runs of this workflow but not
digit for digit with published FIDs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..io import load_safetensors, save_safetensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def build_inception(weights: str | Path | None = None, device="cpu") -> torch.nn.Module:
    """torchvision's Inception-v3 returning the 2048-d pool features; ``weights``: safetensors."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, transform_input=True,
                       init_weights=weights is None)
    if weights is not None:
        state, _ = load_safetensors(weights)
        net.load_state_dict(state)
    net.fc = torch.nn.Identity()
    return net.to(device).eval()


def preprocess(images: np.ndarray, device="cpu") -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) → the ImageNet-normalised (N, 3, 299, 299) input."""
    device = torch.device(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = torch.as_tensor(images, device=device).float() / 255.0
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return (x - mean) / std


@torch.no_grad()
def inception_features(images: np.ndarray, net: torch.nn.Module, device, batch_size: int = 200
                       ) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) → float64 (N, 2048) pool features."""
    out = [net(preprocess(images[i:i + batch_size], device)).double().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 2048))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1 Σ2)^½).

    Tr((Σ1 Σ2)^½) is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    Σ1^½ Σ2 Σ1^½ (it has the eigenvalues of Σ1 Σ2). Unlike ``scipy.linalg.sqrtm`` of the
    product (pytorch-fid), this stays exact when the covariances are singular, as they are
    whenever a set has fewer images than the 2048 feature dimensions.
    """
    def nonneg(ev):  # eigenvalues below the numerical rank's noise floor are zeros
        return np.where(ev > ev.max(initial=0) * len(ev) * np.finfo(float).eps, ev, 0.0)

    diff = mu1 - mu2
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(nonneg(w))) @ v.T
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(nonneg(np.linalg.eigvalsh((inner + inner.T) / 2))).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def export_inception(path: str) -> None:
    """Write torchvision's ImageNet Inception-v3 weights (downloaded by torchvision, which checks
    their hash) as safetensors, for ``fid.inception_weights``. Needs a network."""
    from torchvision.models import Inception_V3_Weights, inception_v3

    net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1)
    save_safetensors(path, net.state_dict())
    print(f"wrote {path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="FID helpers")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export-inception", help="torchvision's Inception-v3 as safetensors")
    ex.add_argument("path")
    a = ap.parse_args(argv)
    if a.command == "export-inception":
        export_inception(a.path)


if __name__ == "__main__":
    main()
