"""The optimisation loop: fit the FlowMap model to one video's correspondences.

Every step runs the model (:class:`~flowmap.model.flowmap.FlowMapModel`) on a random
window of consecutive frames and descends the flow + track objective
(:func:`~flowmap.objective.window_losses`, METHOD.md sections 3-4) with Adam, under a
warm-up + cosine schedule. Random windows instead of all frames per step are flowmap's
main change for CPU speed: the network is shared by all frames, so a gradient on a
window improves every frame, and the cost of a step no longer grows with the video
length. The loop also owns the focal switch (softmin over candidates, then a learned
focal length), the NaN guard and the progress bar; the cameras of all frames are solved
afterwards by :func:`flowmap.solve.solve`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flowmap.checkpoint import (
    CHECKPOINT_NAME,
    fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from flowmap.errors import NumericalError
from flowmap.model.depth import DepthNetConfig
from flowmap.model.flowmap import FlowMapModel, VideoTensors, WindowOutput
from flowmap.model.intrinsics import FocalConfig
from flowmap.model.weights import WeightMLPConfig
from flowmap.objective import ObjectiveConfig, window_losses
from flowmap.pretrained import Pretrained

__all__ = [
    "CHECKPOINT_NAME", "Fit", "OptimConfig", "descend", "feedforward_focal", "fit", "lr_factor", "sample_window",
    "switch_focal", "window_size", "window_step",
]


@dataclass
class OptimConfig:
    """Model, objective and schedule.

    Attributes:
        steps: Adam steps. 10, not METHOD.md's 2000: the global refinement
            (:mod:`flowmap.refine`) only needs a start in its basin, and the default
            start is the shipped network (``--init default``, trained across videos).
            Refined ATE (paper) from starts of the shipped network, fast refinement
            (``benchmarks/refine_eval.py``, issue 23, 2026-12-05), 10 steps against 25:
            castle-P30 0.00090 / 0.00097, fountain-P11 0.00016 / 0.00015, fox 0.00026 /
            0.00025, llff-fern 0.00073 / 0.00072, tum-office 0.00103 / 0.00103, tum-rpy
            0.054 / 0.060, tum-rpy-long 0.019 / 0.019, each within the focal error of
            the 25-step start's; 15 steps gave castle-P30 0.00108. 5 steps were too few
            (castle-P30 0.054: the pair graph drawn from its cameras misses the pairs
            the re-initialisation needs), and no descent at all (``--steps 0``, the
            network's feed-forward cameras) too: castle-P30 0.014, tum-rpy 0.070. 15
            fewer steps save 1.9-2.2 s of every run on 2 cores. From scratch
            (``--init none``) 10 steps are far too few; the CLI then uses 100 (README,
            "Steps"). Use 2000 with ``--refine none``.
        lr: peak learning rate of the networks.
        focal_lr: learning rate of the learned log-focal.
        warmup_fraction: linear warm-up as a fraction of the steps.
        final_lr_fraction: the cosine decay ends at lr x this.
        window: consecutive frames per step (0: all frames).
        procrustes_points: random pixels per pair for the pose and focal solves
            (METHOD.md: 1000 evenly spaced; 8192 for the focal search).
        loss_points: random pixels per frame for the flow loss (0: all).
        log_every: steps between history entries.
        checkpoint_every: steps between checkpoints (when a checkpoint folder is given).
        max_bad_steps: a step whose loss or gradient is not finite is skipped and the
            learning rate halved; after this many such steps the run stops with an error.
        depth, weights, focal, objective: component settings.
    """

    steps: int = 10
    lr: float = 1e-3
    focal_lr: float = 3e-3
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.1
    window: int = 10
    procrustes_points: int = 1024
    loss_points: int = 8192
    log_every: int = 10
    checkpoint_every: int = 50
    max_bad_steps: int = 20
    depth: DepthNetConfig = field(default_factory=DepthNetConfig)
    weights: WeightMLPConfig = field(default_factory=WeightMLPConfig)
    focal: FocalConfig = field(default_factory=FocalConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up then cosine decay to ``final_lr_fraction``."""
    warm = max(1, int(cfg.warmup_fraction * cfg.steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def window_size(n_frames: int, window: int) -> int:
    """Frames per step: ``window``, or the whole video when ``window`` <= 0 or >= N."""
    return n_frames if window <= 0 else min(window, n_frames)


def sample_window(n_frames: int, window: int, generator: torch.Generator) -> int:
    """First frame of a random window of ``window`` consecutive frames (uniform over the
    ``n_frames - window + 1`` possible starts; ``window`` <= 0 or >= N: the whole video)."""
    window = window_size(n_frames, window)
    return int(torch.randint(0, n_frames - window + 1, (1,), generator=generator))


def switch_focal(model: FlowMapModel, focal_history: list[float], average_last: int) -> float | None:
    """Switch the model from the softmin focal to a learned one (METHOD.md 3.3).

    The learned focal starts at the mean of the last ``average_last`` softmin estimates.
    With an empty history (the switch falls on step 0, e.g. ``--steps 1``) nothing is
    switched: the step runs with the softmin estimate and the switch happens at the
    first step that has one (with one step, the final focal is that step's estimate).

    Returns:
        The initial learned focal in input pixels, or None when not switched.
    """
    if not focal_history:
        return None
    init = float(np.mean(focal_history[-average_last:]))
    model.enable_learned_focal(init)
    return init


@dataclass
class Fit:
    """The fitted model and what the loop recorded.

    Attributes:
        model: the trained :class:`FlowMapModel` (learned focal included once switched).
        focal_px: the final focal length in pixels of the input frames: the known one,
            the learned one, or (no switch happened) the mean of the last softmin
            estimates.
        history: per logged step ``{"step", "loss", "flow", ["tracks",] "focal"}``.
        warnings: skipped non-finite steps, an unreadable checkpoint.
        loop_s: wall seconds of the steps run in this call.
    """

    model: FlowMapModel
    focal_px: float
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    loop_s: float = 0.0


def _grads_finite(model: torch.nn.Module) -> bool:
    return all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def window_step(
    model: FlowMapModel, data: VideoTensors, window: int, cfg: OptimConfig, generator: torch.Generator, use_tracks: bool
) -> tuple[WindowOutput, dict[str, torch.Tensor]]:
    """One step's forward pass: a random window of ``window`` frames (:func:`window_size`),
    random pixels for the pose/focal solves (``cfg.procrustes_points``) and for the flow
    loss (``cfg.loss_points``), the model and the FlowMap objective (METHOD.md 3-4).

    Draws from ``generator`` in a fixed order (window, solve pixels, loss pixels), so a
    resumed run repeats an uninterrupted one.

    Returns:
        The model's :class:`WindowOutput` and the losses (``loss``, ``flow``, [``tracks``]).
    """
    h, w = data.shape
    device = data.images.device
    window = window_size(data.n, window)
    start = sample_window(data.n, window, generator)
    pixels = torch.randperm(h * w, generator=generator, device="cpu")[: cfg.procrustes_points].to(device)
    out = model(data, start, start + window, pixels)
    if cfg.loss_points and cfg.loss_points < h * w:
        loss_pixels = torch.randperm(h * w, generator=generator, device="cpu")[: cfg.loss_points].to(device)
    else:
        loss_pixels = slice(None)
    return out, window_losses(out, data, start, start + window, loss_pixels, cfg.objective, use_tracks)


def descend(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor) -> bool:
    """Backpropagate ``loss`` and take the optimiser step, unless the loss or a gradient
    is not finite (then nothing is updated and the gradients are cleared).

    Returns:
        True when the step was taken.
    """
    opt.zero_grad(set_to_none=True)
    finite = bool(torch.isfinite(loss))
    if finite:
        loss.backward()
        finite = _grads_finite(model)
    if not finite:
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def fit(
    data: VideoTensors,
    cfg: OptimConfig,
    image_size: tuple[int, int],
    focal_px: float | None = None,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    fault_step: int | None = None,
    init: Pretrained | None = None,
) -> Fit:
    """Fit the FlowMap model to one video.

    Args:
        data: the video's working-resolution frames and correspondences.
        cfg: optimisation settings.
        image_size: (H, W) of the input frames (the focal length's pixels).
        focal_px: known focal length in pixels of the input frames, or None to
            estimate it (softmin over candidates, then learned).
        seed: seed of the network initialisation and sampling.
        checkpoint_dir: folder for ``checkpoint.pt``, written every
            ``cfg.checkpoint_every`` steps; when it holds a checkpoint of the same run
            (same settings, seed and input size), the run continues from it and ends
            with the same result as an uninterrupted one.
        progress: show a tqdm bar with the loss and focal length.
        fault_step: testing aid: the loss of this step is replaced by NaN.
        init: pretrained weights of the two networks (``--init``); None: the networks
            start from their random (zero-head) initialisation. With ``cfg.steps = 0``
            nothing is optimised (feed-forward mode, FlowCam): the focal length is then
            :func:`feedforward_focal`'s.

    Returns:
        :class:`Fit`.

    Raises:
        NumericalError: more than ``cfg.max_bad_steps`` non-finite steps.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = data.images.device
    h, w = data.shape
    N = data.n
    window = window_size(N, cfg.window)

    model = FlowMapModel(cfg.depth, cfg.weights, cfg.focal, image_size, focal_px)
    if init is not None:
        init.apply(model.depth_net, model.weight_net)
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    base_lrs = [cfg.lr]

    def add_focal_group() -> None:
        opt.add_param_group({"params": model.learned_focal.parameters(), "lr": cfg.focal_lr})
        base_lrs.append(cfg.focal_lr)

    switch_step = int(cfg.focal.switch_fraction * cfg.steps)
    track_start = int(cfg.objective.track_start_fraction * cfg.steps)
    focal_history: list[float] = []
    history: list[dict[str, float]] = []
    warnings: list[str] = []
    lr_scale, bad_steps, first_step = 1.0, 0, 0

    run_id = fingerprint(cfg, focal_px, seed, N, [h, w], None if init is None else init.digest)
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    state = None if ckpt_path is None else load_checkpoint(ckpt_path, run_id, warnings)
    if state is not None:
        if state["learned_focal"] is not None:  # its value comes with the model's state
            model.enable_learned_focal(1.0)
            add_focal_group()
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        focal_history = list(state["focal_history"])
        history = list(state["history"])
        lr_scale, bad_steps, first_step = state["lr_scale"], state["bad_steps"], state["step"]

    def checkpoint(next_step: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "fingerprint": run_id,
                "step": next_step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": generator.get_state(),
                "focal_history": focal_history,
                "history": history,
                "lr_scale": lr_scale,
                "bad_steps": bad_steps,
                "learned_focal": None if model.learned_focal is None else float(model.learned_focal().detach()),
            },
        )

    t0 = time.perf_counter()
    bar = tqdm(
        range(first_step, cfg.steps),
        initial=first_step,
        total=cfg.steps,
        desc="optimising",
        disable=not progress,
        dynamic_ncols=True,
    )
    for step in bar:
        if model.searching_focal and step >= switch_step and switch_focal(model, focal_history, cfg.focal.average_last):
            add_focal_group()
        factor = lr_factor(step, cfg) * lr_scale
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        out, losses = window_step(model, data, window, cfg, generator, step >= track_start)
        loss = losses["loss"] * float("nan") if step == fault_step else losses["loss"]
        if not descend(opt, model, loss):
            # Skipped update: halve the learning rate (issue 4: never corrupt the run).
            bad_steps += 1
            lr_scale *= 0.5
            warnings.append(f"step {step}: non-finite loss or gradient, step skipped and learning rate halved")
            if bad_steps > cfg.max_bad_steps:
                raise NumericalError(
                    f"the optimisation diverged ({bad_steps} non-finite steps); try another --seed or check the input"
                )
        f = float(out.focal.detach())
        if model.searching_focal and np.isfinite(f):
            focal_history.append(f)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            entry = {"step": step, "focal": f, **{k: float(losses[k].detach()) for k in ("loss", "flow", "tracks") if k in losses}}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", focal=f"{f:.1f}")
        if ckpt_path is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)
    loop_s = time.perf_counter() - t0

    if focal_px is not None:
        final = float(focal_px)
    elif model.learned_focal is not None:
        final = float(model.learned_focal().detach())
    elif focal_history:
        final = float(np.mean(focal_history[-cfg.focal.average_last :]))
    else:
        final = feedforward_focal(model, data, window, cfg)
    return Fit(model, final, history, warnings, loop_s)


@torch.no_grad()
def feedforward_focal(model: FlowMapModel, data: VideoTensors, window: int, cfg: OptimConfig) -> float:
    """The focal length of the model as it stands, without a gradient step (``--steps 0``).

    The softmin over candidates (FlowMap 3.3) of each window of ``window`` consecutive
    frames, on windows that tile the video (the last one ends at the last frame), at
    ``cfg.procrustes_points`` evenly strided pixels; the median over the windows.

    Returns:
        Focal length in pixels of the input frames (``model.image_size``).
    """
    h, w = data.shape
    n = data.n
    window = min(max(2, window), n)
    starts = sorted({min(s, n - window) for s in range(0, n - 1, window - 1)})
    count = min(h * w, max(1, cfg.procrustes_points))
    pixels = torch.linspace(0, h * w - 1, count, device=data.images.device).round().long()
    focals = [float(model(data, s, s + window, pixels).focal) for s in starts]
    focals = [f for f in focals if math.isfinite(f)]
    return float(np.median(focals)) if focals else math.nan

