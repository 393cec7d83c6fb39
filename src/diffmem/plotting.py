"""Small plotting helpers shared by the stages (Agg backend, atomic PNG writes)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import save_figure  # noqa: E402


def image_grid(images: np.ndarray, path: str, *, ncols: int = 10, max_images: int = 100,
               title: str | None = None, captions: list[str] | None = None) -> None:
    """A grid of uint8 images (N, H, W) or (N, H, W, C)."""
    images = np.asarray(images)[:max_images]
    n = max(len(images), 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    height = 1.1 * nrows + (0.3 if title else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, height), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray" if images[i].ndim == 2 else None, vmin=0, vmax=255)
            if captions:
                ax.set_title(captions[i], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
