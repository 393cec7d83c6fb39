"""The learned copy eye: an embedding in which a training image stays near its changed copies.

The copy question's pixel match sees a copy moved by up to ``matching.shift`` pixels or mirrored,
and nothing else: a training image rotated by 10°, zoomed, moved 4 px or smoothed by a decoder
is, pixel for pixel, further from its original than unseen images are. The field detects such
copies with embeddings learned on the training data (Dar et al., Nat. Biomed. Eng. 2025, code
``Cardio-AI/memorization-ldm``, ``train_selfsupervised2D.py``: NT-Xent, τ = 0.07, positives are
two augmented views of one image). We do the same:

* **Training images only.** The encoder sees the run's training images and nothing else: not
  generated images, not the unseen images of the null, not for early stopping nor for choosing
  its augmentation ranges (fixed in the config). So under "no copying" a generated image and an
  unseen one are equally new to it, and the null stays a null.
* **Views drawn per image** (:func:`random_views`): one ``affine_grid``/``grid_sample`` with a
  matrix per image (rotation, zoom, translation, left-right flip, a resized crop), then
  brightness, contrast and gamma, a Gaussian blur of its own σ, down-and-up resampling and pixel
  noise, each per image (torchvision's v2 transforms draw one set of parameters per call, so a
  batched call would give every image the same view).
* **NT-Xent** (:func:`nt_xent`) over 2B views with the L2-normalised projection z: for view i
  with positive j, −log(exp(z_i·z_j/τ) / Σ_{k≠i} exp(z_i·z_k/τ)), averaged over both orders of
  every pair. Near-duplicate twins (one near-duplicate group: one patient's frames) are not
  each other's negatives: their terms are left out of the denominators.
* **The embedding** of an image is z, the L2-normalised output of the projection head (the
  vector the loss compares; Dar et al. compare their 128-d head output too).

Encoders: ``small`` (the default; four 3×3 convolution stages with batch norm, each halving the
image after the first, global average pooling: 0.33 M parameters with the head at ``width``
16, fast on a CPU) or ``resnet18`` (torchvision's ResNet-18 with the fingerprint classifiers'
small-image stem), each with a two-layer projection head to ``dim`` values. Nothing is
downloaded.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from ..device import normalise, resolve_device
from ..io import load_json, load_safetensors, save_json, save_safetensors

log = logging.getLogger(__name__)

# the augmentation ranges (config ``copies.augment``); each family spans what models do to the
# copies they make (random affine training, crops, a decoder's smoothing, sampler noise)
AUGMENT_DEFAULTS = {
    "rotation": 20.0,          # degrees, uniform in ±rotation
    "zoom": [0.8, 1.25],       # magnification, log-uniform
    "translate": 0.12,         # share of the side, uniform in ±translate each way
    "flip": True,              # left-right, half of the views
    "crop_area": 0.6,          # resized crops keep at least this share of the area (half of views)
    "brightness": 0.1,         # ± on [0, 1] grey levels
    "contrast": 0.25,          # factor in 1 ± contrast about the image's mean
    "gamma": 0.4,              # exponent log-uniform in [1/(1+g), 1+g]
    "blur_sigma": 1.5,         # Gaussian blur σ uniform in [0, blur_sigma] pixels (half of views)
    "downup": [0.4, 0.8],      # down-and-up resampling by a factor in this range (a third)
    "noise": 0.08,             # Gaussian pixel noise, std uniform in [0, noise] on [-1, 1]
}


def augment_settings(cfg: dict | None) -> dict:
    return AUGMENT_DEFAULTS | dict(cfg or {})


def _uniform(n, lo, hi, gen, dev):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=dev)


def affine_views(x: torch.Tensor, gen: torch.Generator, aug: dict) -> torch.Tensor:
    """Per-image rotation, zoom, translation, flip and resized crop in one ``grid_sample``."""
    n, dev = len(x), x.device
    angle = torch.deg2rad(_uniform(n, -aug["rotation"], aug["rotation"], gen, dev))
    lo, hi = (math.log(v) for v in aug["zoom"])
    zoom = torch.exp(_uniform(n, lo, hi, gen, dev))
    # a resized crop keeping a share a of the area (aspect 3/4..4/3) on half of the views
    crop = torch.rand(n, generator=gen, device=dev) < 0.5
    area = torch.where(crop, _uniform(n, aug["crop_area"], 1.0, gen, dev), torch.ones(n,
                                                                                     device=dev))
    aspect = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), gen, dev))
    # a crop that would not fit at its aspect keeps the image's (as torchvision's falls back)
    fits = (area * aspect <= 1) & (area / aspect <= 1)
    aspect = torch.where(fits, aspect, torch.ones_like(aspect))
    sx = torch.sqrt(area * aspect) / zoom  # output → input scale per axis
    sy = torch.sqrt(area / aspect) / zoom
    t = aug["translate"] * 2  # normalised coordinates span 2
    tx, ty = _uniform(n, -t, t, gen, dev), _uniform(n, -t, t, gen, dev)
    # a crop's centre may sit anywhere the crop still fits
    tx = tx + (1 - sx.clamp(max=1)) * _uniform(n, -1, 1, gen, dev) * crop
    ty = ty + (1 - sy.clamp(max=1)) * _uniform(n, -1, 1, gen, dev) * crop
    flip = torch.where((torch.rand(n, generator=gen, device=dev) < 0.5) & bool(aug["flip"]),
                       -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([flip * cos * sx, -sin * sy, tx], 1),
                         torch.stack([flip * sin * sx, cos * sy, ty], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                     align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own σ (pixels; 0 leaves it as it is): a separable kernel per
    image, applied as a grouped convolution."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max())))) if len(sigma) else 1
    r = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (r / s) ** 2)
    k = torch.where(sigma.view(-1, 1) > 1e-3, k, (r == 0).to(x.dtype).expand_as(k))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n·c, K)
    y = nn.functional.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    y = nn.functional.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = nn.functional.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def down_up(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Resample each image down by its factor and back up (bilinear, antialiased down), the
    images grouped by size (an interpolation takes one size per call)."""
    h, w = x.shape[-2:]
    out = x.clone()
    sizes = torch.clamp((factor * h).round(), min=2).long()
    for size in sizes.unique().tolist():
        if size >= h:
            continue
        rows = sizes == size
        small = nn.functional.interpolate(x[rows], size=(size, max(2, round(size * w / h))),
                                          mode="bilinear", antialias=True, align_corners=False)
        out[rows] = nn.functional.interpolate(small, size=(h, w), mode="bilinear",
                                              align_corners=False)
    return out


def random_views(x: torch.Tensor, gen: torch.Generator, aug: dict) -> torch.Tensor:
    """One random view of each image ([-1, 1], (B, C, H, W)), every parameter drawn per image
    (the module docstring)."""
    n, dev = len(x), x.device
    v = affine_views(x, gen, aug)
    # intensity on [0, 1]: gamma, contrast about the image's mean, brightness
    u = ((v + 1) / 2).clamp(0, 1)
    g = math.log1p(aug["gamma"])
    u = u ** torch.exp(_uniform(n, -g, g, gen, dev)).view(-1, 1, 1, 1)
    mean = u.mean(dim=(1, 2, 3), keepdim=True)
    c = _uniform(n, 1 - aug["contrast"], 1 + aug["contrast"], gen, dev).view(-1, 1, 1, 1)
    b = _uniform(n, -aug["brightness"], aug["brightness"], gen, dev).view(-1, 1, 1, 1)
    v = (((u - mean) * c + mean + b).clamp(0, 1)) * 2 - 1
    blur = torch.rand(n, generator=gen, device=dev) < 0.5
    v = gaussian_blur(v, _uniform(n, 0, aug["blur_sigma"], gen, dev) * blur)
    lo, hi = aug["downup"]
    resample = torch.rand(n, generator=gen, device=dev) < 1 / 3
    v = down_up(v, torch.where(resample, _uniform(n, lo, hi, gen, dev), torch.ones(n,
                                                                                  device=dev)))
    sd = _uniform(n, 0, aug["noise"], gen, dev).view(-1, 1, 1, 1)
    return (v + sd * torch.randn(v.shape, generator=gen, device=dev)).clamp(-1, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, groups: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR) over the 2B views (z L2-normalised; z1[i] and z2[i] are one image's two
    views): −log(exp(z_i·z_j/τ) / Σ_{k≠i} exp(z_i·z_k/τ)) averaged over both orders of every
    positive pair. Views of images of one near-duplicate group other than the positive are left
    out of the denominator: a twin is not a negative."""
    b = len(z1)
    z = torch.cat([z1, z2])
    g = torch.cat([groups, groups])
    logits = z @ z.T / temperature
    same = g[:, None] == g[None, :]
    idx = torch.arange(2 * b, device=z.device)
    positive = torch.cat([idx[b:], idx[:b]])
    masked = same.clone()
    masked[idx, positive] = False  # keep the positive itself
    logits = logits.masked_fill(masked, float("-inf"))
    return nn.functional.cross_entropy(logits, positive)


class SmallEncoder(nn.Module):
    """Four 3×3 convolution stages (batch norm, ReLU; stride 2 after the first), global average
    pooling: a CPU-sized backbone for small images."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        chans = [width, 2 * width, 4 * width, 8 * width]
        layers, c_in = [], in_channels
        for i, c in enumerate(chans):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = c_in

    def forward(self, x):
        return self.features(x)


class CopyEncoder(nn.Module):
    """Backbone + two-layer projection head; returns the L2-normalised embedding z."""

    def __init__(self, encoder: str, in_channels: int, width: int = 32, dim: int = 128):
        super().__init__()
        if encoder == "small":
            self.backbone = SmallEncoder(in_channels, width)
            feat = self.backbone.out_features
        elif encoder == "resnet18":
            from torchvision.models import resnet18

            net = resnet18(weights=None)
            # the fingerprint classifiers' small-image stem: 3×3 stride 1, no max-pool
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1,
                                  bias=False)
            net.maxpool = nn.Identity()
            feat = net.fc.in_features
            net.fc = nn.Identity()
            self.backbone = net
        else:
            raise ValueError(f"copies.encoder {encoder!r} is not known; expected 'small' or "
                             f"'resnet18'")
        self.head = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(inplace=True),
                                  nn.Linear(feat, dim))

    def forward(self, x):
        return nn.functional.normalize(self.head(self.backbone(x)).float(), dim=1)


def build_encoder(cfg: dict, in_channels: int) -> CopyEncoder:
    return CopyEncoder(cfg.get("encoder", "small"), in_channels, int(cfg.get("width", 32)),
                       int(cfg.get("dim", 128)))


def _nchw(images: np.ndarray, dev) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images), device=dev)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()
    return normalise(x)


def train_embedding(images: np.ndarray, groups: np.ndarray | None, cfg: dict, *, seed: int,
                    device, progress: bool = False) -> tuple[CopyEncoder, dict]:
    """Train the copy embedding on uint8 training ``images`` (their near-duplicate ``groups``;
    None: every image its own) with NT-Xent for ``cfg["steps"]`` steps: a fixed length, since
    nothing but the training images may reach it (no validation set to stop on). Returns the
    encoder in eval mode and a summary (losses every tenth of the run)."""
    from tqdm.auto import tqdm

    dev = resolve_device(device) if isinstance(device, str) else device
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = _nchw(images, dev)
    g = torch.as_tensor(np.arange(len(images)) if groups is None else np.asarray(groups),
                        device=dev)
    net = build_encoder(cfg, x.shape[1]).to(dev)
    steps, batch = int(cfg["steps"]), min(int(cfg["batch_size"]), len(images))
    tau, aug = float(cfg.get("temperature", 0.07)), augment_settings(cfg.get("augment"))
    opt = torch.optim.AdamW(net.parameters(), lr=float(cfg["learning_rate"]),
                            weight_decay=float(cfg.get("weight_decay", 1e-4)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    losses, running, every = [], 0.0, max(1, steps // 10)
    for step in tqdm(range(1, steps + 1), desc="copy embedding", disable=not progress,
                     mininterval=5.0):
        # a batch of distinct images (all of them when there are fewer than a batch)
        idx = torch.randperm(len(x), generator=gen, device=dev)[:batch]
        xb = x[idx]
        loss = nt_xent(net(random_views(xb, gen, aug)), net(random_views(xb, gen, aug)), g[idx],
                       tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % every == 0 or step == steps:
            losses.append([step, running / (step - (losses[-1][0] if losses else 0))])
            running = 0.0
    net.eval()
    summary = {"steps": steps, "batch_size": batch, "temperature": tau,
               "parameters": sum(p.numel() for p in net.parameters()),
               "train_images": int(len(images)), "losses": losses,
               "final_loss": losses[-1][1] if losses else None, "augment": aug}
    return net, summary


@torch.no_grad()
def embed(net: CopyEncoder, images: np.ndarray, device, batch: int = 1024) -> np.ndarray:
    """The L2-normalised embeddings (n, dim) of uint8 images, float32 on the host."""
    dev = next(net.parameters()).device if device is None else torch.device(device)
    net.eval()
    out = [net(_nchw(images[i:i + batch], dev)).cpu() for i in range(0, len(images), batch)]
    dim = net.head[-1].out_features
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


def save_embedding(net: CopyEncoder, weights: str, meta: dict, meta_path: str) -> None:
    save_safetensors(weights, net.state_dict())
    save_json(meta_path, meta)


def load_embedding(weights: str, meta_path: str, device="cpu") -> tuple[CopyEncoder, dict]:
    """The encoder from its safetensors (loaded strictly) and its JSON."""
    meta = load_json(meta_path)
    net = build_encoder(meta["config"], int(meta["channels"]))
    net.load_state_dict(load_safetensors(weights)[0], strict=True)
    return net.to(device).eval(), meta


def retrieval_check(scorer, train: np.ndarray, *, per_family: int = 64, seed: int = 0
                    ) -> list[dict]:
    """The copy eye's own check on this run: for each transform family
    (:data:`diffmem.data.transforms.FAMILIES`), ``per_family`` training images drawn afresh and
    changed that way, scored against the training set like generated images. Recall: the share
    that lands in the high band, the band the null's unseen images reach at its false-positive
    rate, *at its own source* (the nearest training image is the changed one or in its
    near-duplicate group: a hit on another image, which an unseen image gets at the null's
    false-positive rate, is no recall), for both eyes together (``combined``, the verdict's)
    and each alone. The last families were never among the embedding's augmentations
    (``trained`` False). ``scorer``: the run's :class:`~diffmem.metrics.scores.Scorer`, its
    bands calibrated, its ``groups`` the training images' near-duplicate groups."""
    from ..data.transforms import FAMILIES

    rng = np.random.default_rng(seed)
    high = {k: e[2] for k, e in scorer.edges.items() if e is not None}
    groups = np.arange(len(train)) if scorer.groups is None else np.asarray(scorer.groups)
    rows = []
    for name, transform, trained in FAMILIES:
        idx = rng.choice(len(train), per_family, replace=len(train) < per_family)
        nns = scorer.nn(transform(train[idx], rng))

        def recall(k, nns=nns, idx=idx):
            at_source = groups[nns[k]["index"][:, 0]] == groups[idx]
            return float(((nns[k]["sim"][:, 0] >= high[k]) & at_source).mean())

        rows.append({"family": name, "trained": trained, "images": per_family,
                     **{f"recall_{k}": recall(k)
                        for k in ("combined", "embedding", scorer.pixel_kind) if k in high}})
    return rows


def weakest(rows: list[dict], key: str = "recall_combined") -> dict:
    """The smallest recall of the check, over all families and over those outside the
    embedding's augmentations: what a "no" must cite beside its detectable rate."""
    if not rows or key not in rows[0]:
        return {}
    low = min(rows, key=lambda r: r[key])
    outside = [r for r in rows if not r["trained"]]
    low_out = min(outside, key=lambda r: r[key]) if outside else None
    return {"smallest_recall": low[key], "smallest_recall_family": low["family"],
            **({"smallest_recall_untrained": low_out[key],
                "smallest_recall_untrained_family": low_out["family"]} if low_out else {})}


@torch.no_grad()
def twin_threshold(net: CopyEncoder, images: np.ndarray, cfg: dict, *, seed: int,
                   views: int = 4) -> dict:
    """How close the eye puts a training image's own copies: the similarity of ``views``
    random views (the training augmentation) of every training image to the image itself, and
    its ``cfg["twin_quantile"]`` quantile (default the median), the **twin threshold**.

    An unseen image the eye puts at least this close to a training image is as close as that
    image's own changed copies typically are: another frame of the same patient, which the
    pixel twin rule misses when its brightness or contrast differs (BreastMNIST's held-out
    split holds many). Such an image is not an unseen image, so it is left out of the null as
    pixel twins are, when the pixel match agrees (:func:`eye_twins`). Computed from the
    training images alone."""
    dev = next(net.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    aug = augment_settings(cfg.get("augment"))
    sims = []
    for i in range(0, len(images), 512):
        x = _nchw(images[i:i + 512], dev)
        z = net(x)
        sims += [(net(random_views(x, gen, aug)) * z).sum(1).cpu() for _ in range(views)]
    sims = torch.cat(sims).numpy() if sims else np.zeros(0, np.float32)
    q = float(cfg.get("twin_quantile", 0.5))
    return {"twin_threshold": float(np.quantile(sims, q)), "twin_quantile": q,
            "own_view_similarity_quantiles": {f"{p:g}": float(np.quantile(sims, p))
                                              for p in (0.1, 0.25, 0.5, 0.75, 0.9)},
            "views_per_image": views}


def eye_twins(train: np.ndarray, train_emb: np.ndarray, images: np.ndarray, emb: np.ndarray,
              *, threshold: float, pixel_cosine: float, matching, device="cpu") -> np.ndarray:
    """Which ``images`` are twins of a training image by both eyes
    (:func:`diffmem.metrics.similarity.twins_of_both_eyes`): the embedding at least the twin
    threshold (:func:`twin_threshold`) and the pixel match at least ``pixel_cosine`` with the
    same training image."""
    from ..metrics.similarity import twins_of_both_eyes

    if len(images) == 0 or len(train) == 0:
        return np.zeros(len(images), bool)
    return twins_of_both_eyes(images, train, emb, train_emb, pixel_cosine=pixel_cosine,
                              embedding=threshold, matching=matching, device=device)


def embed_fn(net: CopyEncoder, device):
    """images → embeddings, for :class:`~diffmem.metrics.scores.Scorer`."""
    return lambda images: embed(net, images, device)
