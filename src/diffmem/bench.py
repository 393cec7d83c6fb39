"""GPU benchmark: the project's stages against a plain diffusers loop, on one device.

    python -m diffmem.bench --config config.yaml [--data-root DIR] [--out bench.json]

Measures, on the same model and batch: training images/s of a plain diffusers training loop
(host-resident data moved per step, fp32, ``loss.item()`` every step as in diffusers'
``train_unconditional.py``) and of :func:`diffmem.train.train_dpm` (data resident on the
device, bf16 autocast, fused AdamW, channels_last, optional ``torch.compile``); sampling
images/s with the configured sampler; and the peak GPU memory of each. Prints a Markdown table
and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .diffusion import NoiseProcess, build_unet, resolve_device, sample, to_tensor


def _peak_reset(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(dev) -> float | None:
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def plain_diffusers_loop(images: np.ndarray, model_cfg: dict, diffusion_cfg: dict, batch: int,
                         steps: int, dev: torch.device, warmup: int = 10) -> float:
    """Images/s of the loop diffusers' example uses: fp32, host batches, a sync per step."""
    from diffusers import DDPMScheduler

    data = to_tensor(images)  # stays on the host, as a DataLoader would hand it over
    model = build_unet(model_cfg, data.shape[-1], data.shape[1]).to(dev).train()
    sched = DDPMScheduler(num_train_timesteps=diffusion_cfg["num_train_timesteps"],
                          beta_schedule=diffusion_cfg.get("beta_schedule", "linear"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x0 = data[torch.randint(len(data), (batch,))].to(dev)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), device=dev)
        loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        loss.item()  # the per-step logging of the example
    return steps * batch / (time.perf_counter() - t0)


def run(config: dict, images: np.ndarray, *, train_steps: int, plain_steps: int,
        sample_n: int, device: str = "auto") -> list[dict]:
    from .train import train_dpm

    dev = resolve_device(device)
    rows = []
    batch = int(config["train"]["batch_size"])
    _peak_reset(dev)
    plain = plain_diffusers_loop(images, config["model"], config["diffusion"], batch,
                                 plain_steps, dev)
    rows.append({"stage": "train: plain diffusers loop", "batch": batch, "precision": "fp32",
                 "images_per_s": round(plain, 1), "peak_gib": _peak(dev)})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from .io import save_npz

        save_npz(tmp / "train.npz", images=images)
        for compile_ in (False, True):
            cfg = dict(config["train"], steps=train_steps, compile=compile_,
                       log_every=max(train_steps // 10, 1), checkpoint_every=10**9)
            _peak_reset(dev)
            s = train_dpm(train_npz=str(tmp / "train.npz"), model_cfg=config["model"],
                          diffusion_cfg=config["diffusion"], train_cfg=cfg, seed=0,
                          device=str(dev), out_weights=str(tmp / "m.safetensors"),
                          out_config=str(tmp / "m.json"), out_loss_csv=str(tmp / "l.csv"),
                          out_loss_png=str(tmp / "l.png"), checkpoint_dir=str(tmp / "ck"),
                          progress=False)
            rows.append({"stage": f"train: diffmem{' + compile' if compile_ else ''}",
                         "batch": batch, "precision": "bf16" if s["bf16"] else "fp32",
                         "images_per_s": s["steady_images_per_second"],
                         "speedup_vs_plain": round(s["steady_images_per_second"] / plain, 2),
                         "wall_s": s["seconds"], "peak_gib": _peak(dev)})
        from .diffusion import load_model

        model, meta = load_model(tmp / "m.safetensors", tmp / "m.json", dev)
    sc = config["sample"]
    process = NoiseProcess.from_config(config["diffusion"])
    shape = (images.shape[-1] if images.ndim == 4 else 1, images.shape[1], images.shape[1])
    _peak_reset(dev)
    t0 = time.perf_counter()
    sample(model, process, sample_n, shape=shape, sampler=sc["sampler"], steps=sc["steps"],
           batch_size=sc.get("batch_size", 1000), device=dev, autocast=dev.type == "cuda",
           progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rows.append({"stage": f"sample: {sc['sampler']} {sc['steps']} steps", "batch":
                 sc.get("batch_size", 1000), "precision": "bf16" if dev.type == "cuda" else "fp32",
                 "images_per_s": round(sample_n / dt, 1), "wall_s": round(dt, 2),
                 "peak_gib": _peak(dev)})
    return rows


def markdown(rows: list[dict]) -> str:
    cols = ["stage", "batch", "precision", "images_per_s", "speedup_vs_plain", "wall_s",
            "peak_gib"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols)
                   + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    from .config import train_sizes_for
    from .data import load_medmnist, locate_medmnist

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--plain-steps", type=int, default=100)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--out", default=None, help="JSON file for the rows")
    a = ap.parse_args(argv)
    config = yaml.safe_load(Path(a.config).read_text())
    flag, size = config["datasets"][0], config["image_size"]
    root = a.data_root or config["data_root"]
    arrays = load_medmnist(locate_medmnist(flag, size, root, config.get("download", True)),
                           flag, size)
    n = train_sizes_for(config, flag)[0]
    images = arrays["train_images"][:n]
    dev = resolve_device(config.get("device", "auto"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    rows = run(config, images, train_steps=a.train_steps, plain_steps=a.plain_steps,
               sample_n=a.samples, device=str(dev))
    print(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    print(markdown(rows))
    if a.out:
        Path(a.out).write_text(json.dumps({"device": name, "torch": torch.__version__,
                                           "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
