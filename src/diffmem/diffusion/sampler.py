"""The one reverse-process sampler used everywhere, and its fixed-shape fast path.

* :func:`reverse` runs the learned reverse process for a batch in which every trajectory may
  start at its own step t (plain sampling starts all at the first grid step; the boundary search
  starts from x_SAF noised to many t at once) and may be steered by a guidance gradient (SIDE).
  It asks the noise process (:class:`diffmem.diffusion.process.NoiseProcess`) for m_t and σ_t.
* :func:`sample`: many images from pure noise; :class:`EpsRunner`: the network at fixed batch
  shapes, replayed from CUDA graphs on a GPU.

diffusers' ``scheduler.step`` accepts one scalar timestep per call (and knows no sub-VP SDE), so
the update formulas of ``DDPMScheduler.step`` (variance "fixed_small") and ``DDIMScheduler.step``
(η = 0, clipped-x_0 ε) are written here once more in vectorised form over per-sample timesteps
and in terms of (m_t, σ_t), so they hold for both processes; the DDPM/DDIM grids come from the
diffusers schedulers' own ``set_timesteps``, and ``tests/test_diffusion.py`` checks that for a
common timestep both steps equal diffusers' to float precision, and that every sampler of both
processes draws from the right distribution for a denoiser with a known exact answer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..device import to_uint8
from .process import NoiseProcess

Guidance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def start_sequences(grid: np.ndarray, t_start: np.ndarray) -> np.ndarray:
    """Per-trajectory timestep sequences, right-aligned so all end on the same iteration.

    A trajectory that starts at t runs ``[t] + [g in grid if g < t]``; shorter ones are padded
    with -1 on the left (inactive). The result is ``(B, L)``; the step after the last column is
    the final one to x_0 (ᾱ_prev = 1).
    """
    grid = np.asarray(grid, dtype=np.int64)
    seqs = [np.concatenate([[t], grid[grid < t]]) for t in np.asarray(t_start, dtype=np.int64)]
    length = max(len(s) for s in seqs)
    out = np.full((len(seqs), length), -1, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, length - len(s):] = s
    return out


def _pad_prev(seq: torch.Tensor) -> torch.Tensor:
    return torch.cat([seq[:, 1:], torch.full_like(seq[:, :1], -1)], dim=1)


class EpsRunner:
    """The network at fixed batch shapes: inputs are padded up to a multiple of ``bucket`` rows
    and copied into static buffers kept per padded size. With ``graphs`` (CUDA only) the
    forward pass at each size is captured once in a CUDA graph and replayed at every step, so a
    step costs one launch instead of one per kernel (these U-Nets are launch-bound); bf16 and
    channels_last as the plain path. Without ``graphs`` the same buffers run eagerly: the plain
    twin the CPU tests compare with :func:`reverse`'s own path.

    Each captured graph is checked once against an eager call on the same input; a mismatch
    (or a capture error) logs a warning and that size runs eagerly from then on."""

    def __init__(self, model, *, autocast: bool = False, graphs: bool = False,
                 bucket: int = 64, warmup: int = 2):
        self.model, self.autocast, self.bucket, self.warmup = model, autocast, bucket, warmup
        self.graphs = graphs
        self.sizes: dict[int, dict] = {}
        self.calls = 0

    def _forward(self, x, t):
        # no autocast weight cache: cached casts would be captured as stale graph inputs
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast,
                            cache_enabled=False):
            return self.model.output(x, t).float()

    def _buffers(self, x: torch.Tensor, t: torch.Tensor) -> dict:
        size = -(-len(x) // self.bucket) * self.bucket
        if size in self.sizes:
            return self.sizes[size]
        fmt = torch.channels_last if x.device.type == "cuda" else torch.contiguous_format
        buf = {"x": torch.zeros((size, *x.shape[1:]), device=x.device,
                                dtype=x.dtype).contiguous(memory_format=fmt),
               "t": torch.zeros((size,), device=x.device, dtype=t.dtype), "graph": None}
        self.sizes[size] = buf
        if self.graphs and x.device.type == "cuda":
            self._capture(buf)
        return buf

    def _capture(self, buf: dict) -> None:
        """Warm up on a side stream, capture, and check one replay against eager."""
        import logging

        log = logging.getLogger(__name__)
        try:
            buf["x"].normal_()
            buf["t"].fill_(1)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(self.warmup):
                    self._forward(buf["x"], buf["t"])
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                buf["out"] = self._forward(buf["x"], buf["t"])
            graph.replay()
            want = self._forward(buf["x"], buf["t"])
            err = float((buf["out"] - want).abs().max())
            if not err <= 1e-2 * (1 + float(want.abs().max())):
                log.warning("CUDA graph at batch %d differs from eager (max |Δ| %.3g): eager "
                            "from now on", len(buf["x"]), err)
                buf.pop("out", None)
                return
            buf["graph"] = graph
        except RuntimeError as e:  # capture unsupported here: the eager path is the same maths
            log.warning("CUDA graph capture at batch %d failed (%s): eager from now on",
                        len(buf["x"]), str(e).splitlines()[0])
            buf.pop("out", None)

    @property
    def captured(self) -> bool:
        """Whether any batch size runs from a CUDA graph (else everything ran eagerly)."""
        return any(b["graph"] is not None for b in self.sizes.values())

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = len(x)
        buf = self._buffers(x, t)
        buf["x"][:n].copy_(x)
        buf["t"][:n].copy_(t)
        self.calls += 1
        if buf["graph"] is not None:
            buf["graph"].replay()
            return buf["out"][:n].clone()
        return self._forward(buf["x"], buf["t"])[:n]


def fast_runner(model, device, *, autocast: bool, graphs: bool) -> EpsRunner | None:
    """The fixed-shape, CUDA-graphed runner where it pays (``graphs`` on a CUDA device), else
    None: on a CPU the masked steps would only add work."""
    if graphs and torch.device(device).type == "cuda":
        return EpsRunner(model, autocast=autocast, graphs=True)
    return None


@torch.no_grad()
def reverse(model, process: NoiseProcess, x: torch.Tensor, t_start, *, sampler: str = "ddim",
            steps: int = 50, generator: torch.Generator | None = None,
            guidance: Guidance | None = None, guidance_scale: float = 0.0,
            autocast: bool = False, max_batch: int | None = None,
            runner: EpsRunner | None = None) -> torch.Tensor:
    """Run the reverse process of ``model`` (a :class:`~diffmem.diffusion.denoiser.Denoiser`,
    asked for its :meth:`~diffmem.diffusion.denoiser.Denoiser.output` and ``clip`` only) from
    ``x`` (B, C, H, W) in the process's space at per-sample steps ``t_start`` to x_0.

    Each step goes from grid step t to the next lower one s (or to x_0 after the last), with
    x̂_0 = (x_t - σ_t ε)/m_t, clipped to [-1, 1] where ``model.clip``:

    * ``ddim`` (η = 0): x_s = m_s x̂_0 + σ_s ε̂, ε̂ re-derived from the clipped x̂_0. For the
      sub-VP process this is the first-order exponential integrator of its probability-flow
      ODE (DPM-Solver-1), which DDIM is for any linear SDE.
    * ``ddpm``: ancestral step, the exact posterior q(x_s | x_t, x̂_0) of the forward chain
      restricted to the grid; for the DDPM process equal to ``DDPMScheduler.step``
      ("fixed_small").
    * ``euler_maruyama``: score_sde's predictor for the reverse sub-VP SDE,
      x ← x + (f(x, τ) - g(τ)² ∇log p) Δτ + g(τ) sqrt(|Δτ|) z with ∇log p = -ε/σ; the last
      step returns x̂_0 (Tweedie), where score_sde returns the noise-free mean at τ = ε.

    ``guidance(x_t, time)`` (``time`` = :meth:`NoiseProcess.model_time`) returns
    ∇_{x_t} log p(y | x_t, t); the noise prediction is then shifted as in classifier guidance
    (Dhariwal & Nichol 2021): ε̃ = ε − s·σ_t·∇ log p. Returns x_0 (clipped to [-1, 1] where
    ``model.clip``), on ``x``'s device.

    With a ``runner`` (:class:`EpsRunner`, the fixed-shape fast path) every step runs the whole
    batch and keeps trajectories that have not started yet unchanged (a mask), so the network
    sees one shape throughout; without one, each step runs only the started trajectories. The
    two give the same images row for row: each step's noise is drawn for the whole batch in
    both (:func:`_step_noise`), mixed starts included.
    """
    process.check_sampler(sampler)
    device = x.device
    t_start = np.broadcast_to(np.asarray(t_start, dtype=np.int64), (x.shape[0],))
    grid = process.timestep_grid(sampler, steps)
    seq_np = start_sequences(grid, t_start)
    seq = torch.as_tensor(seq_np, device=device)
    prev = _pad_prev(seq)
    # which trajectories run at each iteration is known on the host: no device sync per step
    active_idx = [None if (col >= 0).all() else torch.as_tensor(np.flatnonzero(col >= 0),
                                                                 device=device)
                  for col in seq_np.T]
    # step coefficients in float64 (small DDPM βs cancel in float32), applied in float32
    m_all, s_all = (c.double() for c in process.coefficients64(device))
    one = torch.ones((), device=device, dtype=torch.float64)
    zero = torch.zeros((), device=device, dtype=torch.float64)
    x = x.clone().float()
    for k in range(seq.shape[1]):
        idx = active_idx[k]
        masked = runner is not None and idx is not None
        if masked:  # whole batch, fixed shape; rows not started yet run at t = 0 and are dropped
            keep = (seq[:, k] >= 0).view(-1, 1, 1, 1)
            xs, t, tp = x, seq[:, k].clamp(min=0), prev[:, k]
        else:
            xs = x if idx is None else x[idx]
            t = seq[:, k] if idx is None else seq[idx, k]
            tp = prev[:, k] if idx is None else prev[idx, k]
        time = process.model_time(t)
        m_t, s_t = m_all[t].view(-1, 1, 1, 1), s_all[t].view(-1, 1, 1, 1)
        out = runner(xs, time) if runner is not None else _predict_eps(model, xs, time, autocast,
                                                                       max_batch)
        eps, x0_direct = as_eps(process, out, xs, m_t.float(), s_t.float())
        if guidance is not None and guidance_scale != 0.0:
            with torch.enable_grad():
                grad = guidance(xs, time)
            eps = eps - guidance_scale * s_t.float() * grad
            x0_direct = None
        last = (tp < 0).view(-1, 1, 1, 1)
        m_s = torch.where(tp >= 0, m_all[tp.clamp(min=0)], one).view(-1, 1, 1, 1)
        s_s = torch.where(tp >= 0, s_all[tp.clamp(min=0)], zero).view(-1, 1, 1, 1)
        x0 = x0_direct if x0_direct is not None else (xs - s_t.float() * eps) / m_t.float()
        if model.clip:  # images: x̂_0 in [-1, 1]; a latent model's x̂_0 is not clipped
            x0 = x0.clamp(-1, 1)
        if sampler == "ddim":
            # η = 0, with ε re-derived from the clipped x_0 as guided-diffusion's ddim_sample does
            # (diffusers' use_clipped_model_output=True). diffusers' default keeps the raw ε;
            # under strong guidance x_0 clips while ε keeps moving and the step goes the wrong way.
            eps = (xs - m_t.float() * x0) / s_t.float()
            xs = m_s.float() * x0 + s_s.float() * eps
        elif sampler == "ddpm":
            a = m_t / m_s  # q(x_t | x_s) = N(a x_s, var_ts I)
            var_ts = s_t ** 2 - a ** 2 * s_s ** 2
            c_x = (a * s_s ** 2 / s_t ** 2).float()
            c_0 = (m_s * var_ts / s_t ** 2).float()
            sd = (var_ts * s_s ** 2 / s_t ** 2).clamp(min=1e-20).sqrt().float()
            noise = _step_noise(x, idx, masked, generator)
            xs = c_x * xs + c_0 * x0 + (~last) * sd * noise
        else:  # euler_maruyama on the sub-VP SDE, Δτ < 0
            tau_t = process.tau(t.double()).view(-1, 1, 1, 1)
            d_tau = process.tau(tp.double()).view(-1, 1, 1, 1) - tau_t
            beta, g2 = process.subvp_sde(tau_t)
            # f(x, τ) - g² ∇log p with ∇log p = -ε/σ
            drift = (-0.5 * beta).float() * xs + (g2 / s_t).float() * eps
            noise = _step_noise(x, idx, masked, generator)
            step = xs + d_tau.float() * drift + (g2 * -d_tau).sqrt().float() * noise
            xs = torch.where(last, x0, step)
        if masked:
            x = torch.where(keep, xs, x)
        elif idx is None:
            x = xs
        else:
            x[idx] = xs
    return x.clamp(-1, 1) if model.clip else x


def _step_noise(x: torch.Tensor, idx, masked: bool, generator) -> torch.Tensor:
    """A step's noise, drawn for the whole batch whichever rows run (the started rows' share
    when the step runs only those), so the plain and the fixed-shape paths draw the same noise
    for every trajectory: row for row the same images, mixed starts included."""
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return noise if idx is None or masked else noise[idx]


def as_eps(process: NoiseProcess, out: torch.Tensor, x_t: torch.Tensor, m_t: torch.Tensor,
           s_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ε̂, x̂_0 or None) from the network's output. For v = m ε − σ x_0 (m² + σ² = 1):
    ε̂ = σ x_t + m v and x̂_0 = m x_t − σ v, which stays finite where m → 0 (the ε form divides
    by m), as diffusers' schedulers compute it."""
    if process.prediction_type == "v_prediction":
        return s_t * x_t + m_t * out, m_t * x_t - s_t * out
    return out, None


def predict_eps(model, process: NoiseProcess, x_t: torch.Tensor, t: torch.Tensor,
                autocast: bool = False) -> torch.Tensor:
    """ε̂(x_t, t) for grid steps t, whatever the network predicts."""
    m, s = process.coefficients(x_t.device)
    out = _predict_eps(model, x_t, process.model_time(t), autocast, None)
    return as_eps(process, out, x_t, m[t].view(-1, 1, 1, 1), s[t].view(-1, 1, 1, 1))[0]


def _predict_eps(model, x, t, autocast, max_batch):
    chunks = [slice(0, len(x))] if not max_batch else \
        [slice(i, i + max_batch) for i in range(0, len(x), max_batch)]
    outs = []
    for s in chunks:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            outs.append(model.output(x[s], t[s]).float())
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def sample(model, process: NoiseProcess, n: int, *, shape: tuple[int, int, int],
           sampler: str = "ddim", steps: int = 50, batch_size: int = 256, seed: int = 0,
           device: torch.device | str = "cpu", autocast: bool = False,
           guidance: Guidance | None = None, guidance_scale: float = 0.0,
           progress: bool = True, runner: EpsRunner | None = None,
           latents: list | None = None) -> np.ndarray:
    """Draw ``n`` images from pure noise in the process's space (``shape``), decoded by
    ``model.decode``; returns uint8 (n, H, W) or (n, H, W, C). A ``runner`` (the fixed-shape
    fast path) pads the last batch; the images are the same. ``latents``: a list that receives
    each batch's x₀ in the process's space (float32, before decoding)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    t0 = int(process.timestep_grid(sampler, steps)[0])
    out = []
    for start in tqdm(range(0, n, batch_size), desc="sampling", disable=not progress):
        b = min(batch_size, n - start)
        x = torch.randn((b, *shape), generator=gen, device=device)
        x0 = reverse(model, process, x, t0, sampler=sampler, steps=steps, generator=gen,
                     guidance=guidance, guidance_scale=guidance_scale, autocast=autocast,
                     runner=runner)
        if latents is not None:
            latents.append(x0.float().cpu().numpy())
        out.append(to_uint8(model.decode(x0)))
    return np.concatenate(out) if out else np.zeros((0, *shape), np.uint8)
