"""Benchmark: the project's stages against a plain diffusers loop, on one device, in one run.

    python -m diffmem.bench --config config.yaml [--data-root DIR] [--out bench.json] [--e2e]

or as the Snakemake rule ``bench`` (``snakemake --cores all results/bench/bench.json``; its
``benchmark:`` file adds wall time and RSS). Sizes come from the config's ``bench`` section
(or the command line). Every row runs the library's real stage code on
the config's first dataset and size, in a temporary folder:

* training images/s of a plain diffusers training loop (host-resident data moved per step,
  fp32, ``loss.item()`` every step, as diffusers' ``train_unconditional.py``) and of
  :func:`diffmem.diffusion.train.train` (data on the device, bf16 autocast, fused AdamW,
  channels_last, with and without ``torch.compile``), same model and batch;
* sampling images/s and image-evaluations/s (images × steps) with the configured sampler and
  steps: the plain loop and, on a GPU, the fixed-shape CUDA-graphed one (``cuda_graphs``);
* the adversary classifiers (a fixed number of steps: timing only);
* the boundary search, exhaustive over every ``--boundary-t-step``-th t (on a GPU graphed and
  plain) and by bisection, with the config's M, sampler and steps (T stated);
* with ``--e2e``: the whole DAG of the config, ``snakemake --cores all``, in a fresh folder.

Peak GPU memory is reported per row (``torch.cuda.max_memory_allocated``; for the end-to-end
row the largest peak any GPU stage recorded in its JSON). Prints a Markdown table; ``--out``
writes the rows, device and versions as JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..device import gpu_peak_gib, resolve_device, to_tensor
from ..diffusion.process import NoiseProcess
from ..diffusion.sampler import fast_runner, sample
from ..diffusion.unet import build_unet, load_model
from ..io import atomic_path, load_npz
from ..metrics.scores import Scorer
from .config import copies_settings, dataset_entry, dataset_names, train_sizes_for
from .copies import train_copy_embedding_stage
from .data import prepare_data_stage
from .dpm import train_dpm_stage
from .fingerprint import boundary_search_stage, train_fingerprint_classifiers_stage
from .scores import CopyEye


def _peak_reset(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def plain_diffusers_loop(images: np.ndarray, model_cfg: dict, diffusion_cfg: dict, batch: int,
                         steps: int, dev: torch.device, warmup: int = 10, lr: float = 1e-4,
                         seed: int = 0) -> tuple[float, list[float]]:
    """(images/s, per-step losses) of the loop diffusers' example uses: fp32, host batches, a
    sync per step. DDPM ε-prediction with diffusers' own ``DDPMScheduler.add_noise``."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    data = to_tensor(images)  # stays on the host, as a DataLoader would hand it over
    model = build_unet(model_cfg, data.shape[-1], data.shape[1]).to(dev).train()
    sched = DDPMScheduler(num_train_timesteps=diffusion_cfg["num_train_timesteps"],
                          beta_schedule=diffusion_cfg.get("beta_schedule", "linear"),
                          beta_start=diffusion_cfg.get("beta_start", 1e-4),
                          beta_end=diffusion_cfg.get("beta_end", 0.02))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    t0, losses = time.perf_counter(), []
    for i in range(warmup + steps):
        if i == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
        x0 = data[torch.randint(len(data), (batch,))].to(dev)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), device=dev)
        loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())  # the per-step logging of the example
    return steps * batch / (time.perf_counter() - t0), losses


def _timed(dev, fn):
    _peak_reset(dev)
    t0 = time.perf_counter()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.perf_counter() - t0, gpu_peak_gib(dev)


def run(config: dict, *, data_root: str, train_steps: int, plain_steps: int, sample_n: int,
        classifier_steps: int = 200, boundary_t_step: int = 1, device: str = "auto",
        progress: bool = False, copies_steps: int = 600, copies_images: int = 10000
        ) -> list[dict]:
    """Every stage row (see the module docstring) for ``config``'s first dataset and size."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if not config["datasets"]:
        raise ValueError("the bench times the stages on the config's first dataset; "
                         "datasets is empty")
    flag = dataset_names(config)[0]
    n = train_sizes_for(config, flag)[0]
    rows = []
    tc, sc, bc = config["train"], config["sample"], config["boundary"]
    batch = int(tc["batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        f = {k: str(tmp / v) for k, v in dict(
            train="train.npz", target="target.npz", target_json="target.json",
            heldout="heldout.npz", fig="target.png", w="m.safetensors", mc="m.json",
            c_saf="c_saf.safetensors", c_id="c_id.safetensors", cj="c.json",
            unused="unused.npz").items()}
        prepare_data_stage(
            flag=flag, size=config["image_size"], root=data_root,
            download=config.get("download", True), n_train=n, seed=0,
            saf_radius=config["saf"]["radius"], saf_grey=config["saf"]["grey"],
            to_rgb=config.get("to_rgb", False), out_train=f["train"], out_target=f["target"],
            out_target_json=f["target_json"], out_heldout=f["heldout"], out_figure=f["fig"],
            out_unused=f["unused"],
            max_twin_similarity=config["saf"].get("max_twin_similarity", 0.95),
            entry=dataset_entry(config, flag))
        images = load_npz(f["train"])["images"]

        _peak_reset(dev)
        plain, _ = plain_diffusers_loop(images, config["model"], config["diffusion"], batch,
                                        plain_steps, dev, lr=float(tc["learning_rate"]))
        rows.append({"stage": "train: plain diffusers loop", "batch": batch, "precision": "fp32",
                     "images_per_s": round(plain, 1), "peak_gib": gpu_peak_gib(dev)})
        for compile_ in ([False, True] if cuda else [False]):
            cfg = dict(tc, steps=train_steps, compile=compile_,
                       log_every=max(train_steps // 10, 1), checkpoint_every=10**9)
            _peak_reset(dev)
            s = train_dpm_stage(train_npz=f["train"], model_cfg=config["model"],
                          diffusion_cfg=config["diffusion"], train_cfg=cfg, seed=0,
                          device=str(dev), out_weights=f["w"], out_config=f["mc"],
                          out_loss_csv=str(tmp / "l.csv"), out_loss_png=str(tmp / "l.png"),
                          checkpoint_dir=str(tmp / "ck"), progress=progress)
            ips = s["steady_images_per_second"] or s["images_per_second"]
            rows.append({"stage": f"train: diffmem{' + compile' if compile_ else ''}",
                         "batch": batch, "precision": "bf16" if s["bf16"] else "fp32",
                         "images_per_s": ips, "speedup_vs_plain": round(ips / plain, 2),
                         "wall_s": s["seconds"], "peak_gib": s["peak_gpu_gib"]})

        model, meta = load_model(f["w"], f["mc"], dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        process = NoiseProcess.from_config(meta["diffusion"])
        shape = (meta["unet"]["in_channels"], meta["unet"]["sample_size"],
                 meta["unet"]["sample_size"])
        autocast = bool(sc.get("bf16", True)) and cuda
        # the plain loop, then (on a GPU) the fixed-shape CUDA-graphed one: same images
        plain_ips = None
        for graphs in (False, True) if cuda else (False,):
            runner = fast_runner(model, dev, autocast=autocast, graphs=graphs)
            if runner is not None:  # capture (and its check) outside the timing
                sample(model, process, 1, shape=shape, sampler=sc["sampler"], steps=1,
                       batch_size=sc.get("batch_size", 1000), device=dev, autocast=autocast,
                       progress=False, runner=runner)
            _, dt, peak = _timed(dev, lambda runner=runner: sample(
                model, process, sample_n, shape=shape, sampler=sc["sampler"],
                steps=sc["steps"], batch_size=sc.get("batch_size", 1000), device=dev,
                autocast=autocast, progress=progress, runner=runner))
            captured = runner is not None and runner.captured
            ips = sample_n / dt
            plain_ips = plain_ips or ips
            rows.append({"stage": f"sample: {sample_n} images, {sc['sampler']} {sc['steps']} "
                                  f"steps" + (", CUDA graphs" if captured else
                                              ", graphs failed: eager" if graphs else ""),
                         "batch": sc.get("batch_size", 1000),
                         "precision": "bf16" if autocast else "fp32",
                         "images_per_s": round(ips, 1),
                         "image_evaluations_per_s": round(ips * sc["steps"], 1),
                         "speedup_vs_plain": round(ips / plain_ips, 2), "wall_s": round(dt, 2),
                         "peak_gib": peak})

        ccfg = dict(config["classifiers"], steps=classifier_steps, eval_every=classifier_steps,
                    patience=10**6)
        _, dt, peak = _timed(dev, lambda: train_fingerprint_classifiers_stage(
            train_npz=f["train"], target_npz=f["target"], target_json=f["target_json"],
            heldout_npz=f["heldout"], cfg=ccfg, seed=0, device=str(dev), out_saf=f["c_saf"],
            out_id=f["c_id"], out_meta=f["cj"], progress=progress))
        rows.append({"stage": f"classifiers: C_SAF + C_ID, ResNet{ccfg['depth']}, "
                              f"{classifier_steps} steps each", "batch": ccfg["batch_size"],
                     "wall_s": round(dt, 2), "peak_gib": peak})

        rows += copy_eye_rows(config, f["train"], load_npz(f["heldout"])["images"], tmp, dev,
                              copies_steps, copies_images)

        variants = [("exhaustive", True), ("bisection", True)]
        if cuda:  # the plain loop beside the graphed one
            variants.insert(1, ("exhaustive", False))
        for method, graphs in variants:
            bcfg = dict(bc, method=method, t_step=boundary_t_step)
            out = tmp / f"b_{method}_{graphs}"
            res, dt, peak = _timed(dev, lambda bcfg=bcfg, out=out, graphs=graphs: (
                boundary_search_stage(
                    weights=f["w"], model_config=f["mc"], target_npz=f["target"],
                    target_json=f["target_json"], train_npz=f["train"],
                    heldout_npz=f["heldout"], unused_npz=f["unused"], c_saf=f["c_saf"],
                    c_id=f["c_id"], classifiers_json=f["cj"],
                    threshold=config["classifiers"].get("threshold", 0.5), cfg=bcfg, seed=0,
                    device=str(dev), bf16=bool(sc.get("bf16", True)), out_csv=f"{out}.csv",
                    out_json=f"{out}.json", out_png=f"{out}.png", graphs=graphs)))
            levels = (f"{bcfg.get('points_per_round', 8)} t per round" if method == "bisection"
                      else "every t" if boundary_t_step == 1 else f"t_step {boundary_t_step}")
            rows.append({"stage": f"boundary search: {method} ({levels}), T = {process.T}, "
                                  f"M = {res['m']}, {res['sampler']} {res['steps']} steps, "
                                  f"target and {len(res['rho_control'])} controls"
                                  + (", plain loop" if cuda and not graphs else
                                     ", CUDA graphs" if cuda else ""),
                         "batch": bc.get("batch_size"), "wall_s": round(dt, 2),
                         "evaluations": res["evaluations"], "peak_gib": peak})
    return rows


def copy_eye_rows(config: dict, train_npz: str, heldout: np.ndarray, tmp: Path, dev,
                  steps: int, n_images: int) -> list[dict]:
    """The copy eye: its training on the run's training images (``steps``), and scoring
    ``n_images`` generated images against ``n_images`` training images by both eyes (the
    nearest training images of every image under every similarity, the null's calibration
    first). The large sets are the held-out images drawn again with a pixel of noise (the time
    depends on the sizes, not on what the images show)."""
    cfg = dict(copies_settings(config), steps=steps)
    w, j = str(tmp / "eye.safetensors"), str(tmp / "eye.json")
    _, dt, peak = _timed(dev, lambda: train_copy_embedding_stage(
        train_npz=train_npz, duplicates_npz=None, cfg=cfg, seed=0, device=str(dev),
        out_weights=w, out_json=j))
    batch = min(int(cfg["batch_size"]), len(load_npz(train_npz)["images"]))
    rows = [{"stage": f"copy embedding: {cfg['encoder']}, {steps} steps",
             "batch": batch, "images_per_s": round(2 * batch * steps / dt, 1),
             "wall_s": round(dt, 2), "peak_gib": peak}]
    eye = CopyEye.load(w, j, dev)
    rng = np.random.default_rng(0)

    def draw(n):
        pick = heldout[rng.integers(0, len(heldout), n)].astype(np.int16)
        return np.clip(pick + rng.integers(-1, 2, pick.shape), 0, 255).astype(np.uint8)

    train, gen, cal = draw(n_images), draw(n_images), draw(200)
    scoring = dict(config["scoring"], matching=config.get("matching") or {})

    def score():
        scorer = Scorer(train, np.arange(len(train)), scoring, dev, embed=eye.embed)
        scorer.calibrate(cal, scorer.nn(cal))
        return scorer.nn(gen)

    _, dt, peak = _timed(dev, score)
    rows.append({"stage": f"copy scoring: {n_images} generated vs {n_images} training images, "
                          f"every similarity and both eyes",
                 "images_per_s": round(n_images / dt, 1), "wall_s": round(dt, 2),
                 "peak_gib": peak})
    return rows


def workflow_root() -> Path:
    """The checkout this module runs from (the README installs it editable)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "Snakefile").is_file():
        raise RuntimeError(f"diffmem.bench needs the workflow checkout (Snakefile, config.yaml, "
                           f"workflow/); {root} is not one: install with pip install -e .")
    return root


def end_to_end(config_path: str, data_root: str, workdir: Path | None = None) -> dict:
    """Wall time of ``snakemake --cores all`` on the config in a fresh copy of the workflow."""
    root = workflow_root()
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(workdir or tmp) / "wf"
        wf.mkdir(parents=True)
        for name in ("Snakefile", "config.yaml", "rules", "workflow", "src"):
            src = root / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, wf / name)
        cmd = [sys.executable, "-m", "snakemake", "--cores", "all", "--workflow-profile",
               str(root / "workflow/profiles/default"), "--config", f"data_root={data_root}",
               "--configfile", str(Path(config_path).resolve())]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=wf, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"end-to-end run failed:\n{proc.stderr[-3000:]}")
        peaks = []
        for js in wf.glob("results/**/*.json"):
            try:
                value = json.loads(js.read_text())
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(value, dict):
                peaks += [v for k, v in _walk(value) if k == "peak_gpu_gib" and v is not None]
        done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", proc.stdout + proc.stderr)
        jobs = int(done[-1][1]) if done else None
    return {"stage": f"end to end: {Path(config_path).name}, snakemake --cores all",
            "wall_s": round(wall, 1), "jobs": jobs, "peak_gib": max(peaks) if peaks else None}


def _walk(d: dict):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v)
        else:
            yield k, v


COLUMNS = ["stage", "batch", "precision", "images_per_s", "image_evaluations_per_s",
           "speedup_vs_plain", "wall_s", "evaluations", "peak_gib"]


def markdown(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in COLUMNS)
                   + " |")
    return "\n".join(out)


def environment(dev: torch.device) -> dict:
    import diffusers

    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "date": time.strftime("%Y-%m-%d")}


def write(rows: list[dict], env: dict, out_json: str | None, out_md: str | None) -> str:

    text = (f"device: {env['device']}; torch {env['torch']}; diffusers {env['diffusers']}; "
            f"{env['date']}\n\n{markdown(rows)}\n")
    if out_json:
        with atomic_path(out_json) as tmp:
            tmp.write_text(json.dumps({**env, "rows": rows}, indent=2))
    if out_md:
        with atomic_path(out_md) as tmp:
            tmp.write_text(text)
    return text


BENCH_DEFAULTS = {"train_steps": 300, "plain_steps": 100, "samples": 10000,
                  "classifier_steps": 200, "boundary_t_step": 1, "copies_steps": 600,
                  "copies_images": 10000}


def bench_stage(*, config: dict, data_root: str, out_json: str | None = None,
                out_md: str | None = None, e2e_config: str | None = None,
                progress: bool = True) -> str:
    """Run every row with the sizes of ``config["bench"]`` (defaults above); write and return
    the table. ``e2e_config``: also time the whole DAG of that config file."""
    b = BENCH_DEFAULTS | dict(config.get("bench") or {})
    dev = resolve_device(config.get("device", "auto"))
    rows = run(config, data_root=data_root, train_steps=b["train_steps"],
               plain_steps=b["plain_steps"], sample_n=b["samples"],
               classifier_steps=b["classifier_steps"], boundary_t_step=b["boundary_t_step"],
               device=str(dev), progress=progress, copies_steps=b["copies_steps"],
               copies_images=b["copies_images"])
    if e2e_config:
        rows.append(end_to_end(e2e_config, data_root))
    return write(rows, environment(dev), out_json, out_md)
