"""Train the unconditional DPM: ε-prediction (DDPM or sub-VP SDE), AdamW, EMA, checkpoints.

The loop reads top to bottom in :func:`train`: batch → noise → time and x_t (DDPM steps, or
the sub-VP SDE's continuous time: :meth:`NoiseProcess.training_inputs`) → model → loss → step →
EMA → log. The whole training set lives on the device (MedMNIST sets are
small), and the loss is summed on the device and read back only every ``log_every`` steps, so
the step loop never waits for the host.

Checkpoints (every ``checkpoint_every`` steps, the last ``keep_checkpoints``) live in a folder
that is *not* a declared output of the rule, so Snakemake does not delete them when a job
fails; each is a folder of safetensors files plus ``state.json`` written under a temporary name
and renamed when complete. A checkpoint is resumed only when its settings digest (a hash of every
setting and of the training data) matches the current run; a checkpoint that fails to load is
skipped with a warning and the next older one (or a fresh start) is used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from ..device import gpu_peak_gib, resolve_device, to_tensor
from ..io import load_safetensors, save_safetensors
from .process import NoiseProcess
from .unet import build_unet

log = logging.getLogger(__name__)


def settings_digest(*parts) -> str:
    """A short hash of settings (JSON-able parts): what a checkpoint must match to resume."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]



def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """AdamW state as flat tensors + JSON-able rest, so it can live in safetensors."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, rest: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for key, v in rest["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": rest["param_groups"]}


class EMA:
    """Exponential moving average of the weights, updated with one fused ``_foreach_lerp_``.

    The decay warms up as in diffusers' ``EMAModel`` (min(decay, (1 + n) / (10 + n))) so short
    runs are not dominated by the random initialisation. Unlike ``torch.optim.swa_utils
    .AveragedModel`` nothing here reads a device tensor, so the step loop never syncs.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.num_updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        n = self.num_updates
        decay = min(self.decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1 - decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


def save_checkpoint(folder: Path, step: int, model, ema, opt, gen: torch.Generator,
                    losses: list, fp: str, keep: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:09d}"
    tmp = folder / f".step_{step:09d}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_safetensors(tmp / "model.safetensors", model.state_dict())
    save_safetensors(tmp / "ema.safetensors", ema.module.state_dict())
    opt_tensors, opt_rest = _flatten_optimizer(opt)
    save_safetensors(tmp / "optimizer.safetensors", {**opt_tensors, "rng": gen.get_state()})
    state = {"step": step, "fingerprint": fp, "optimizer": opt_rest, "losses": losses,
             "ema_updates": ema.num_updates}
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(folder.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _read_checkpoint(ck: Path, dev) -> dict:
    """Every file of one checkpoint, read and checked before anything is applied."""
    state = json.loads((ck / "state.json").read_text())
    weights = load_safetensors(ck / "model.safetensors", dev)[0]
    ema = load_safetensors(ck / "ema.safetensors", dev)[0]
    tensors, _ = load_safetensors(ck / "optimizer.safetensors", "cpu")
    rng = tensors.pop("rng")
    return {"state": state, "model": weights, "ema": ema, "rng": rng,
            "optimizer": _unflatten_optimizer(tensors, state["optimizer"]),
            "step": int(state["step"]), "losses": list(state["losses"]),
            "ema_updates": int(state["ema_updates"])}


def _snapshot(model, ema, opt, gen) -> dict:
    return {"model": copy.deepcopy(model.state_dict()),
            "ema": copy.deepcopy(ema.module.state_dict()),
            "optimizer": copy.deepcopy(opt.state_dict()), "rng": gen.get_state(),
            "ema_updates": ema.num_updates}


def _apply(saved: dict, model, ema, opt, gen) -> None:
    model.load_state_dict(saved["model"])
    ema.module.load_state_dict(saved["ema"])
    opt.load_state_dict(saved["optimizer"])
    gen.set_state(saved["rng"])
    ema.num_updates = saved["ema_updates"]


def load_latest_checkpoint(folder: Path, fp: str, model, ema, opt, gen: torch.Generator):
    """Restore the newest loadable checkpoint with this settings digest; return (step, losses).

    All of a checkpoint's files are read first and applied only when every one was read; if
    applying still fails (a tensor of the wrong shape), the model, the EMA, the optimizer and
    the generator are put back as they were, so an unusable checkpoint leaves nothing of itself
    behind and the fresh start is the seeded one."""
    dev = next(model.parameters()).device
    before = None
    for ck in sorted(folder.glob("step_*"), reverse=True):
        try:
            state = json.loads((ck / "state.json").read_text())
            if state["fingerprint"] != fp:
                log.warning("checkpoint %s was made with other settings; not resuming from it", ck)
                continue
            saved = _read_checkpoint(ck, dev)
        except Exception as err:  # corrupt or partial: warn and fall back to an older one
            log.warning("checkpoint %s is unusable (%s: %s); trying an older one",
                        ck, type(err).__name__, err)
            continue
        before = before or _snapshot(model, ema, opt, gen)
        try:
            _apply(saved, model, ema, opt, gen)
        except Exception as err:  # read, but does not fit: undo what was applied
            _apply(before, model, ema, opt, gen)
            log.warning("checkpoint %s is unusable (%s: %s); trying an older one",
                        ck, type(err).__name__, err)
            continue
        log.info("resuming from %s (step %d)", ck, saved["step"])
        return saved["step"], saved["losses"]
    return 0, []


def train(images, *, model_cfg: dict, diffusion_cfg: dict, train_cfg: dict, seed: int,
          device: str, checkpoint_dir: str, data_digest: str, progress: bool = True
          ) -> tuple[torch.nn.Module, dict, list, str]:
    """Train on uint8 ``images``; returns (EMA model, summary, losses, settings digest).

    ``data_digest`` (of the training data) enters the checkpoints' settings digest, so a
    checkpoint made on other data is never resumed."""
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    torch.manual_seed(seed)  # weight initialisation
    data = to_tensor(images, dev)
    n, channels, size = data.shape[0], data.shape[1], data.shape[-1]
    process = NoiseProcess.from_config(diffusion_cfg)
    model = build_unet(model_cfg, size, channels).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, float(train_cfg["ema_decay"]))
    lr = float(train_cfg["learning_rate"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr,
                            weight_decay=float(train_cfg["weight_decay"]), fused=cuda or None)
    gen = torch.Generator(device=dev).manual_seed(seed)
    coef = process.coefficients(dev)

    steps, batch = int(train_cfg["steps"]), int(train_cfg["batch_size"])
    warmup, log_every = int(train_cfg["warmup_steps"]), int(train_cfg["log_every"])
    ck_every, ck_keep = int(train_cfg["checkpoint_every"]), int(train_cfg["keep_checkpoints"])
    autocast = bool(train_cfg["bf16"]) and cuda
    fp = settings_digest(model_cfg, diffusion_cfg,
                         {k: v for k, v in train_cfg.items()
                          if k not in ("checkpoint_every", "keep_checkpoints", "log_every")},
                         seed, data_digest, dev.type)
    ck_dir = Path(checkpoint_dir)
    start, losses = load_latest_checkpoint(ck_dir, fp, model, ema, opt, gen)
    step_fn = model
    if bool(train_cfg.get("compile", False)) and cuda:
        step_fn = torch.compile(model)

    model.train()
    running = torch.zeros((), device=dev)
    last_logged = start
    t_start = time.perf_counter()
    t_steady, steady_from = None, None  # throughput after the first interval (compile, warm-up)
    bar = tqdm(total=steps, initial=start, desc="training", disable=not progress,
               mininterval=5.0)
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1))
        idx = torch.randint(n, (batch,), generator=gen, device=dev)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        xt, t = process.training_inputs(x0, noise, gen, coef)  # t: the U-Net's time input
        if cuda:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            pred = step_fn(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(train_cfg["grad_clip"]))
        opt.step()
        ema.update(model)
        running += loss.detach()
        done = step + 1
        if done % log_every == 0 or done == steps:
            mean = float(running) / (done - last_logged)  # the one host sync per interval
            last_logged = done
            if t_steady is None:
                t_steady, steady_from = time.perf_counter(), done
            running.zero_()
            losses.append([done, mean])
            bar.set_postfix(loss=f"{mean:.4f}")
            bar.update(done - bar.n)
        if done % ck_every == 0 and done < steps:
            save_checkpoint(ck_dir, done, model, ema, opt, gen, losses, fp, ck_keep)
    bar.close()
    if cuda:
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    elapsed = t_end - t_start
    steady = ((steps - steady_from) * batch / (t_end - t_steady)
              if t_steady is not None and steps > steady_from else None)

    ema_model = ema.module.eval()
    summary = {"steps": steps, "resumed_from": start, "batch_size": batch, "n_train": n,
               "parameters": sum(p.numel() for p in ema_model.parameters()),
               "device": str(dev), "bf16": autocast, "seconds": round(elapsed, 2),
               "images_per_second": round((steps - start) * batch / max(elapsed, 1e-9), 1),
               "steady_images_per_second": round(steady, 1) if steady else None,
               "compiled": step_fn is not model, "peak_gpu_gib": gpu_peak_gib(dev),
               "final_loss": losses[-1][1] if losses else None}
    return ema_model, summary, losses, fp
