"""Stages of rules/dpm.smk: ``train_dpm`` (the unconditional DPM) and ``sample``."""

from __future__ import annotations

import shutil
import time

import numpy as np
import torch

from ..device import gpu_peak_gib, resolve_device
from ..diffusion.process import NoiseProcess
from ..diffusion.sampler import fast_runner, sample
from ..diffusion.train import train
from ..diffusion.unet import load_model, process_shape, save_model
from ..io import file_digest, load_npz, save_csv, save_figure, save_json, save_npz
from ..plotting import image_grid, plt


def train_dpm_stage(*, train_npz: str, model_cfg: dict, diffusion_cfg: dict, train_cfg: dict,
                    seed: int, device: str, out_weights: str, out_config: str,
                    out_loss_csv: str, out_loss_png: str, checkpoint_dir: str,
                    progress: bool = True) -> dict:
    """Train, write the EMA weights, their config and the loss curve; return a summary."""
    import pandas as pd

    ema_model, summary, losses, fp = train(
        load_npz(train_npz)["images"], model_cfg=model_cfg, diffusion_cfg=diffusion_cfg,
        train_cfg=train_cfg, seed=seed, device=device, checkpoint_dir=checkpoint_dir,
        data_digest=file_digest(train_npz), progress=progress)
    save_model(ema_model, out_weights, out_config,
               extra={"diffusion": diffusion_cfg, "train": summary, "fingerprint": fp})
    df = pd.DataFrame(losses, columns=["step", "loss"])
    save_csv(out_loss_csv, df)
    plot_loss(df, out_loss_png)
    # the final weights supersede the checkpoints
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return summary


def plot_loss(df, path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(df["step"], df["loss"], lw=1)
    if len(df) >= 10:
        ax.plot(df["step"], df["loss"].rolling(max(len(df) // 20, 2), min_periods=1).mean(),
                lw=2, label="rolling mean")
        ax.legend()
    ax.set_xlabel("training step")
    ax.set_ylabel("ε-prediction MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def sample_stage(*, weights: str, model_config: str, num_samples: int, batch_size: int,
                 sampler: str, steps: int, seed: int, device: str, bf16: bool, out_samples: str,
                 out_grid: str, out_json: str | None = None, progress: bool = True,
                 graphs: bool = True) -> dict:
    dev = resolve_device(device)
    model, meta = load_model(weights, model_config, dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # the fixed-shape step in CUDA graphs (same images as the plain loop; none on a CPU)
    runner = fast_runner(model, dev, autocast=bf16 and dev.type == "cuda", graphs=graphs)
    process = NoiseProcess.from_config(meta["diffusion"])
    t0 = time.perf_counter()
    # a latent model's samples keep their latents beside the decoded images
    latents = [] if model.latent else None
    images = sample(model, process, num_samples, shape=process_shape(meta), sampler=sampler,
                    steps=steps, batch_size=batch_size, seed=seed, device=dev,
                    autocast=bf16 and dev.type == "cuda", progress=progress, runner=runner,
                    latents=latents)
    elapsed = time.perf_counter() - t0
    save_npz(out_samples, images=images,
             **({"latents": np.concatenate(latents)} if latents else {}))
    image_grid(images, out_grid, ncols=10, max_images=100,
               title=f"{min(len(images), 100)} of {len(images)} samples ({sampler}, {steps} steps)")
    info = {"num_samples": int(len(images)), "sampler": sampler, "steps": steps, "seed": seed,
            "device": str(dev), "seconds": round(elapsed, 2),
            "cuda_graphs": runner is not None and runner.captured,
            "images_per_second": round(len(images) / max(elapsed, 1e-9), 1),
            "peak_gpu_gib": gpu_peak_gib(dev),
            # how much of an image x_t0 keeps where sampling starts from noise (m_t0); above
            # diffusion.schedule.MAX_SIGNAL only for an imported model allowed to
            "signal_at_start": process.signal_at(int(process.timestep_grid(sampler, steps)[0]))}
    if out_json:
        save_json(out_json, info)
    return info
