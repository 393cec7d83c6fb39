"""Sample stage: many images from the trained model's EMA weights with the configured sampler."""

from __future__ import annotations

import time

import torch

from .diffusion import (
    NoiseProcess,
    fast_runner,
    gpu_peak_gib,
    load_model,
    resolve_device,
    sample,
)
from .figures import image_grid
from .io import save_json, save_npz


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
    ucfg = meta["unet"]
    shape = (ucfg["in_channels"], ucfg["sample_size"], ucfg["sample_size"])
    t0 = time.perf_counter()
    images = sample(model, process, num_samples, shape=shape, sampler=sampler, steps=steps,
                    batch_size=batch_size, seed=seed, device=dev,
                    autocast=bf16 and dev.type == "cuda", progress=progress, runner=runner)
    elapsed = time.perf_counter() - t0
    save_npz(out_samples, images=images)
    image_grid(images, out_grid, ncols=10, max_images=100,
               title=f"{min(len(images), 100)} of {len(images)} samples ({sampler}, {steps} steps)")
    info = {"num_samples": int(len(images)), "sampler": sampler, "steps": steps, "seed": seed,
            "device": str(dev), "seconds": round(elapsed, 2),
            "cuda_graphs": runner is not None and runner.captured,
            "images_per_second": round(len(images) / max(elapsed, 1e-9), 1),
            "peak_gpu_gib": gpu_peak_gib(dev)}
    if out_json:
        save_json(out_json, info)
    return info
