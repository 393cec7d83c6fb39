"""One classifier trainer for the adversary classifiers C_SAF and C_ID.

Models are torchvision ResNets with random initialisation (the fingerprinting paper used
ResNet50) and a stem for small images: a 3×3 stride-1 first convolution and no max-pool, so a
28×28 image keeps its resolution into the first stage (the usual CIFAR-style adaptation).

Training batches are built on the device each step from uint8 image pools: discs are stamped
vectorised, AugMix (torchvision) and additive Gaussian noise are applied, as the paper does.
Validation uses a fixed set; the best validation state is kept and training stops early when it
has not improved for ``patience`` evaluations.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...device import as_nchw_uint8, normalise
from ...io import load_json, load_safetensors, save_json, save_safetensors
from ...metrics.similarity import PLAIN_PIXELS, Matching, nearest
from ...metrics.stats import auc

log = logging.getLogger(__name__)


def build_resnet(depth: int, in_channels: int, num_classes: int = 1) -> nn.Module:
    from torchvision.models import resnet18, resnet34, resnet50

    ctors = {18: resnet18, 34: resnet34, 50: resnet50}
    if depth not in ctors:
        raise ValueError(f"ResNet depth {depth} not supported; expected one of {sorted(ctors)}")
    net = ctors[depth](weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def save_classifier(net: nn.Module, weights: str, meta: dict, meta_path: str) -> None:
    save_safetensors(weights, net.state_dict())
    save_json(meta_path, meta)


def load_classifier(weights: str, meta_path: str, device="cpu") -> tuple[nn.Module, dict]:
    meta = load_json(meta_path)
    net = build_resnet(meta["depth"], meta["in_channels"], meta.get("num_classes", 1))
    net.load_state_dict(load_safetensors(weights)[0])
    return net.to(device).eval(), meta


def stamp_discs(x: torch.Tensor, apply: torch.Tensor, radius: float, grey: float | torch.Tensor,
                gen: torch.Generator, alpha_min: float = 1.0) -> torch.Tensor:
    """Stamp a disc at a random position (wholly inside) on the images where ``apply`` is true.

    ``alpha_min`` < 1 blends each disc with the image at a random strength α ∈ [alpha_min, 1]:
    a DPM reproduces the SAF as a soft, partly blended disc, and a detector trained only on
    crisp discs misses those (seen on BreastMNIST: near-copies of x_SAF with p_SAF ≈ 0.001).
    """
    n, _, h, w = x.shape
    margin = int(math.ceil(radius))
    cy = torch.randint(margin, h - margin, (n, 1, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(margin, w - margin, (n, 1, 1, 1), generator=gen, device=x.device)
    yy = torch.arange(h, device=x.device).view(1, 1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, 1, w)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & apply.view(n, 1, 1, 1)
    value = torch.as_tensor(grey, device=x.device, dtype=torch.float32).view(-1, 1, 1, 1) * 255
    alpha = alpha_min + (1 - alpha_min) * torch.rand((n, 1, 1, 1), generator=gen, device=x.device)
    blended = (alpha * value + (1 - alpha) * x.float()).round().clamp(0, 255).to(torch.uint8)
    return torch.where(mask, blended, x)


def blur(x: torch.Tensor, sigma_max: float, gen: torch.Generator, chunk: int = 64):
    """Gaussian blur of random strength σ ∈ [0, sigma_max] per chunk (generated images are
    smoother than real ones); returns uint8."""
    if sigma_max <= 0:
        return x
    from torchvision.transforms.v2 import functional as F

    out = []
    for i in range(0, len(x), chunk):
        sigma = float(torch.rand((), generator=gen, device=x.device)) * sigma_max
        out.append(F.gaussian_blur(x[i:i + chunk], [5, 5], [sigma]) if sigma > 0.05
                   else x[i:i + chunk])
    return torch.cat(out)


def augment(x: torch.Tensor, noise_std: float, augmix: bool, gen: torch.Generator,
            chunk: int = 64) -> torch.Tensor:
    """AugMix per chunk of images (so ops vary across the batch), Gaussian noise; → [-1, 1]."""
    if augmix:
        from torchvision.transforms import v2

        am = v2.AugMix()
        x = torch.cat([am(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    out = normalise(x)
    if noise_std > 0:
        sigma = torch.rand((len(x), 1, 1, 1), generator=gen, device=x.device) * noise_std * 2
        out = out + sigma * torch.randn(out.shape, generator=gen, device=x.device)
    return out


@dataclass
class TaskData:
    """What a classifier task needs: a way to draw a training batch, and a validation set."""

    make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    val_x: torch.Tensor
    val_y: torch.Tensor


def saf_task(train_pool: np.ndarray, val_pool: np.ndarray, radius: float, grey: float, *,
             train_rate: float, val_rate: float, noise_std: float, augmix: bool, device,
             seed: int, alpha_min: float = 1.0, blur_sigma: float = 0.0) -> TaskData:
    """C_SAF: "does this image carry an SAF-like disc?"; discs at random places, real images."""
    gen = torch.Generator(device=device).manual_seed(seed)
    pool = as_nchw_uint8(train_pool, device)

    def make_batch(n):
        x = pool[torch.randint(len(pool), (n,), generator=gen, device=device)]
        y = torch.rand(n, generator=gen, device=device) < train_rate
        x = blur(stamp_discs(x, y, radius, grey, gen, alpha_min), blur_sigma, gen)
        return augment(x, noise_std, augmix, gen), y.float()

    # validation discs are blended and blurred the same way, so early stopping picks the
    # detector that also finds soft discs
    vg = torch.Generator(device=device).manual_seed(seed + 1)
    vx = as_nchw_uint8(val_pool, device)
    vy = torch.rand(len(vx), generator=vg, device=device) < val_rate
    vx = blur(stamp_discs(vx, vy, radius, grey, vg, alpha_min), blur_sigma, vg)
    return TaskData(make_batch, normalise(vx), vy.float())


def id_task(target: np.ndarray, train_pool: np.ndarray, val_pool: np.ndarray, radius: float,
            grey: float, *, positive_rate: float, train_saf_rate: float, val_saf_rate: float,
            mask_rate: float, noise_std: float, augmix: bool, val_size: int, device,
            seed: int) -> TaskData:
    """C_ID: "is this image x*?", one against all.

    Positives are augmented copies of the target, negatives other images. Discs of the SAF's
    shape and grey are stamped at random places on ``*_saf_rate`` of all images (both classes),
    and random-grey discs of that shape mask ``mask_rate`` of them, so the classifier cannot
    answer by looking for the disc.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    tgt = as_nchw_uint8(target[None], device)
    pool = as_nchw_uint8(train_pool, device)

    def compose(n, pos_rate, saf_rate, mask, g, source):
        y = torch.rand(n, generator=g, device=device) < pos_rate
        x = torch.where(y.view(n, 1, 1, 1), tgt.expand(n, -1, -1, -1),
                        source[torch.randint(len(source), (n,), generator=g, device=device)])
        x = stamp_discs(x, torch.rand(n, generator=g, device=device) < saf_rate, radius, grey, g)
        if mask > 0:
            x = stamp_discs(x, torch.rand(n, generator=g, device=device) < mask, radius,
                            torch.rand(n, generator=g, device=device), g)
        return x, y

    def make_batch(n):
        x, y = compose(n, positive_rate, train_saf_rate, mask_rate, gen, pool)
        return augment(x, noise_std, augmix, gen), y.float()

    vg = torch.Generator(device=device).manual_seed(seed + 1)
    vx, vy = compose(val_size, 0.5, val_saf_rate, 0.0, vg, as_nchw_uint8(val_pool, device))
    # validation positives are augmented copies too (else they would all be one image)
    return TaskData(make_batch, augment(vx, noise_std, augmix, vg), vy.float())


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    net.eval()
    out = [net(x[i:i + batch]).float() for i in range(0, len(x), batch)]
    return torch.cat(out).squeeze(-1) if out else torch.zeros(0, device=x.device)


def binary_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict:
    pred = logits > 0
    y = y > 0.5
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    n = len(y)

    scores = logits.detach().float().cpu().numpy()
    truth = y.cpu().numpy()
    return {"accuracy": (n - fp - fn) / max(n, 1),
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "auc": auc(scores[truth], scores[~truth]), "n": n, "positives": int(y.sum())}


METRIC_KEYS = ("accuracy", "precision", "recall", "auc", "n", "positives")  # binary_metrics'



def selection_key(metrics: dict) -> tuple[float, float]:
    """What early stopping keeps: the highest validation AUC, then the lowest loss.

    Accuracy on C_SAF's 10 %-positive validation set rewards a detector that always says "no"
    (90 %), and a detector that misses reproductions pushes every count toward "safe"; AUC is
    blind to the class balance (0.5 for any constant answer)."""
    a = metrics["auc"]
    return (a if a == a else 0.5, -metrics["val_loss"])


def train_classifier(net: nn.Module, task: TaskData, *, steps: int, batch_size: int, lr: float,
                     eval_every: int, patience: int, name: str, progress: bool = True) -> dict:
    """AdamW with cosine decay, BCE on one logit; early stopping on validation AUC, then loss
    (:func:`selection_key`)."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best, best_key, best_step, bad, history = None, None, 0, 0, []
    for step in tqdm(range(1, steps + 1), desc=f"training {name}", disable=not progress,
                     mininterval=5.0):
        net.train()
        x, y = task.make_batch(batch_size)
        loss = nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            logits = predict_logits(net, task.val_x)
            val_loss = float(nn.functional.binary_cross_entropy_with_logits(logits, task.val_y))
            m = binary_metrics(logits, task.val_y) | {"step": step, "val_loss": val_loss,
                                                     "train_loss": float(loss.detach())}
            history.append(m)
            log.info("%s step %d: %s", name, step, m)
            key = selection_key(m)
            if best_key is None or key > best_key:
                best, best_key, best_step, bad = copy.deepcopy(net.state_dict()), key, step, 0
                best_metrics = {k: m[k] for k in METRIC_KEYS}
            else:
                bad += 1
                if bad >= patience:
                    log.info("%s: early stop at step %d", name, step)
                    break
    net.load_state_dict(best)
    net.eval()
    # the kept weights were evaluated on this validation set when they were kept (eval mode,
    # their own batch-norm statistics): the same logits, so no second pass
    return best_metrics | {"best_step": best_step, "history": history}


def not_twins_of(image: np.ndarray, pool: np.ndarray, limit: float,
                 matching: Matching = PLAIN_PIXELS) -> np.ndarray:
    """The images of ``pool`` whose Pearson similarity to ``image`` (at the best transform of
    ``matching``) is below ``limit``."""
    sim = nearest(pool, image[None], top_k=1, matching=matching)["sim"][:, 0]
    return pool[sim < limit]


def load_pair(saf_w: str, id_w: str, meta_path: str, dev) -> tuple[list, dict]:
    """C_SAF and C_ID (weights) with their shared metadata JSON."""
    nets = [load_classifier(w, meta_path, dev)[0] for w in (saf_w, id_w)]
    return nets, load_json(meta_path)


@torch.no_grad()
def classify(nets: list[torch.nn.Module], images: torch.Tensor, threshold: float = 0.5,
             batch: int = 4096) -> list[torch.Tensor]:
    """Probabilities of each classifier for float images in [-1, 1] (B, C, H, W)."""
    outs = [[] for _ in nets]
    for i in range(0, len(images), batch):
        for j, net in enumerate(nets):
            outs[j].append(torch.sigmoid(net(images[i:i + batch]).float().squeeze(-1)))
    return [torch.cat(o) if o else torch.zeros(0, device=images.device) for o in outs]
