"""The optimisation loop: fit the depth network to one video's correspondences.

Every step runs the depth network on a window of consecutive frames, derives the focal
length (softmin over candidates, later a learned value, or a known one) and the relative
poses (weighted Procrustes) from its output, and descends the flow + track objective
(METHOD.md sections 3-4). Random windows instead of all frames per step are flowmap's
main change for CPU speed: the network is shared by all frames, so a gradient on a
window improves every frame, and the cost of a step no longer grows with the video
length. At the end, the network is run once on all frames and every pose, weight and
depth map is solved from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flowmap.errors import NumericalError
from flowmap.frames import resize_images
from flowmap.geometry import K_pixels, intrinsics_from_focal, pixel_grid, sample_image
from flowmap.model.depth import DepthNet, DepthNetConfig
from flowmap.model.intrinsics import FocalConfig, LearnedFocal, softmin_focal
from flowmap.model.poses import apply_bridges, bridge_pose, chain, pair_samples, relative_poses
from flowmap.model.weights import CorrespondenceWeights, WeightMLPConfig
from flowmap.objective import ObjectiveConfig, flow_loss, track_loss
from flowmap.types import Correspondences, Frames, Reconstruction


@dataclass
class OptimConfig:
    """Model, objective and schedule.

    Attributes:
        steps: Adam steps.
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

    steps: int = 2000
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


@dataclass
class _Data:
    """Correspondences as torch tensors with flows flattened over pixels."""

    images: torch.Tensor  # (N, 3, h, w) float in [0, 1]
    flow_fwd: torch.Tensor  # (N-1, h*w, 2)
    flow_bwd: torch.Tensor
    mask_fwd: torch.Tensor  # (N-1, h*w)
    mask_bwd: torch.Tensor
    tracks_xy: torch.Tensor  # (M, N, 2)
    tracks_visible: torch.Tensor  # (M, N) bool
    tracks_query: torch.Tensor  # (M,)
    grid: torch.Tensor  # (h*w, 2)


def _to_torch(images: np.ndarray, corr: Correspondences, device: str) -> _Data:
    h, w = corr.shape
    t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)  # noqa: E731
    return _Data(
        images=t(images).permute(0, 3, 1, 2).contiguous() / 255.0,
        flow_fwd=t(corr.flow_fwd).reshape(-1, h * w, 2),
        flow_bwd=t(corr.flow_bwd).reshape(-1, h * w, 2),
        mask_fwd=t(corr.mask_fwd).reshape(-1, h * w),
        mask_bwd=t(corr.mask_bwd).reshape(-1, h * w),
        tracks_xy=t(corr.tracks_xy),
        tracks_visible=t(corr.tracks_visible, torch.bool),
        tracks_query=t(corr.tracks_query, torch.long),
        grid=pixel_grid(h, w, device).reshape(-1, 2),
    )


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up then cosine decay to ``final_lr_fraction``."""
    warm = max(1, int(cfg.warmup_fraction * cfg.steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


class FlowMapModel(torch.nn.Module):
    """Depth network + correspondence-weight MLP (+ a learned focal once switched)."""

    def __init__(self, cfg: OptimConfig):
        super().__init__()
        self.depth_net = DepthNet(cfg.depth)
        self.weight_net = CorrespondenceWeights(cfg.depth.feature_dim, cfg.weights)
        self.focal: LearnedFocal | None = None


def _window_tracks(data: _Data, start: int, end: int):
    sel = (data.tracks_query >= start) & (data.tracks_query < end)
    return (
        data.tracks_xy[sel][:, start:end],
        data.tracks_visible[sel][:, start:end],
        data.tracks_query[sel] - start,
    )


def _step_losses(
    model: FlowMapModel,
    data: _Data,
    start: int,
    end: int,
    focal: torch.Tensor | None,
    image_size: tuple[int, int],
    work_size: tuple[int, int],
    cfg: OptimConfig,
    use_tracks: bool,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Losses of one window [start, end); ``focal`` None means softmin search."""
    h, w = work_size
    dev = data.images.device
    depth, features = model.depth_net(data.images[start:end])
    idx = torch.randperm(h * w, generator=generator, device="cpu")[: cfg.procrustes_points].to(dev)
    samples = pair_samples(
        depth,
        features,
        data.flow_bwd[start : end - 1][:, idx],
        data.mask_bwd[start : end - 1][:, idx],
        data.grid[idx],
        model.weight_net,
    )
    out: dict[str, torch.Tensor] = {}
    if focal is None:
        focal, _ = softmin_focal(samples, image_size, work_size, cfg.focal)
    K = intrinsics_from_focal(focal, *image_size)
    T = relative_poses(samples, K[None])
    if cfg.loss_points and cfg.loss_points < h * w:
        lidx = torch.randperm(h * w, generator=generator, device="cpu")[: cfg.loss_points].to(dev)
    else:
        lidx = slice(None)
    out["flow"] = flow_loss(
        depth,
        K,
        T,
        data.grid[lidx],
        data.flow_fwd[start : end - 1][:, lidx],
        data.flow_bwd[start : end - 1][:, lidx],
        data.mask_fwd[start : end - 1][:, lidx],
        data.mask_bwd[start : end - 1][:, lidx],
        cfg.objective.huber_delta,
    )
    loss = cfg.objective.flow_weight * out["flow"]
    if use_tracks:
        xy, vis, query = _window_tracks(data, start, end)
        out["tracks"] = track_loss(depth, K, chain(T), xy, vis, query, cfg.objective.huber_delta)
        loss = loss + cfg.objective.track_weight * out["tracks"]
    out["loss"] = loss
    out["focal"] = focal
    return out


@torch.no_grad()
def solve_all(
    model: FlowMapModel,
    data: _Data,
    focal: torch.Tensor,
    image_size: tuple[int, int],
    cfg: OptimConfig,
    chunk: int = 16,
    bridges: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray | float]:
    """Run the network on every frame and solve all poses, weights and final losses.

    ``bridges`` (pairs, xy, valid) from :func:`flowmap.correspondences.bridges.find_bridges`
    re-route the chain around pairs without valid flow (:func:`apply_bridges`).

    Returns:
        dict with c2w (N, 4, 4) float64, depth (N, h, w), weights (N-1, h, w), flow and
        tracks losses over the whole video.
    """
    h, w = data.images.shape[-2:]
    N = data.images.shape[0]
    depths, feats = [], []
    for s in range(0, N, chunk):
        d, f = model.depth_net(data.images[s : s + chunk])
        depths.append(d)
        feats.append(f)
    depth, features = torch.cat(depths), torch.cat(feats)
    K = intrinsics_from_focal(focal, *image_size)
    Ts, weights = [], []
    for s in range(0, N - 1, chunk):
        e = min(N, s + chunk + 1)
        samples = pair_samples(
            depth[s:e], features[s:e], data.flow_bwd[s : e - 1], data.mask_bwd[s : e - 1], data.grid, model.weight_net
        )
        Ts.append(relative_poses(samples, K[None]))
        weights.append(samples.weights)
    T = torch.cat(Ts)
    if bridges is not None and len(bridges[0]):
        T_np, scales = _bridged(T, depth, K, bridges, w)
        T = torch.as_tensor(T_np, dtype=T.dtype, device=T.device)
        depth = depth * torch.as_tensor(scales, dtype=depth.dtype, device=depth.device)[:, None, None]
    flow = flow_loss(
        depth, K, T, data.grid, data.flow_fwd, data.flow_bwd, data.mask_fwd, data.mask_bwd, cfg.objective.huber_delta
    )
    c2w = chain(T.double())
    tracks = track_loss(
        depth, K, c2w.float(), data.tracks_xy, data.tracks_visible, data.tracks_query, cfg.objective.huber_delta
    )
    return {
        "c2w": c2w.cpu().numpy(),
        "depth": depth.cpu().numpy().astype(np.float32),
        "weights": torch.cat(weights).reshape(N - 1, h, w).cpu().numpy().astype(np.float32),
        "flow": float(flow),
        "tracks": float(tracks),
    }


CHECKPOINT_NAME = "checkpoint.pt"


def _fingerprint(cfg: OptimConfig, focal_px: float | None, seed: int, n: int, shape: tuple[int, int]) -> str:
    """Identifies the run a checkpoint belongs to (a resume must match it)."""
    blob = json.dumps([asdict(cfg), focal_px, seed, n, list(shape)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` with torch.save to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` if it exists and belongs to this run, else None.

    Loaded with ``torch.load(weights_only=True)`` (tensors and plain data only).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt or foreign file: start again
        return None
    return state if state.get("fingerprint") == fingerprint else None


def check_result(c2w: np.ndarray, depth: np.ndarray, focal: float) -> None:
    """Refuse a result that is not finite or not a valid camera set.

    Raises:
        NumericalError: non-finite poses, depths or focal length, non-positive depths,
            or rotations that are not orthonormal with determinant +1 (tolerance 1e-4).
    """
    if not (np.isfinite(c2w).all() and np.isfinite(depth).all() and np.isfinite(focal)):
        raise NumericalError("the optimisation produced non-finite poses or depths; try another --seed or fewer --steps")
    if focal <= 0 or (depth <= 0).any():
        raise NumericalError("the optimisation produced a non-positive focal length or depth; try another --seed")
    R = c2w[:, :3, :3]
    eye = np.eye(3)
    if np.abs(R @ np.transpose(R, (0, 2, 1)) - eye).max() > 1e-4 or np.abs(np.linalg.det(R) - 1).max() > 1e-4:
        raise NumericalError("the optimisation produced invalid rotations; try another --seed")


def _enable_learned_focal(
    model: FlowMapModel, opt: torch.optim.Optimizer, base_lrs: list[float], init: float, lr: float, device: str
) -> None:
    """Switch from the softmin focal to a learned one (METHOD.md 3.3): a new parameter
    group of the optimiser, whose base learning rate is appended to ``base_lrs``."""
    model.focal = LearnedFocal(init).to(device)
    opt.add_param_group({"params": model.focal.parameters(), "lr": lr})
    base_lrs.append(lr)


def _grads_finite(model: torch.nn.Module) -> bool:
    return all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def _bridged(
    T: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, bridges, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Relative poses with each cut pair re-routed through its bridge, and per-frame depth scales.

    Cuts are handled in order. For each solvable bridge (c, a, b) the frames after the
    cut, up to the next cut, are brought to the scale of the frames before it (their
    relative translations and depths multiplied by 1 / depth_ratio), then the cut pair's
    pose is replaced so that the chain passes through the bridge (:func:`apply_bridges`).

    Returns:
        T: (N-1, 4, 4) float64 relative poses T_{i <- i+1}.
        scales: (N,) float64 factors for the depth maps.
    """
    pairs, xy, valid = bridges
    K_np = K.detach().cpu().double().numpy()
    T_np = T.detach().cpu().double().numpy().copy()
    n = T_np.shape[0] + 1
    scales = np.ones(n)
    cuts = [int(c) for c in pairs[:, 0]]
    for j, ((c, a, b), m, v) in enumerate(zip(pairs.tolist(), xy, valid)):
        m = m[v]
        pts = torch.as_tensor(m, dtype=depth.dtype, device=depth.device)
        d_a = sample_image(depth[a][None, None], pts[None, :, :2])[0, :, 0].cpu().double().numpy() * scales[a]
        d_b = sample_image(depth[b][None, None], pts[None, :, 2:])[0, :, 0].cpu().double().numpy() * scales[b]
        solved = bridge_pose(m[:, :2], m[:, 2:], d_a, d_b, K_np, threshold_px=1.0, width=width)
        if solved is None:
            continue
        T_ab, ratio = solved
        end = cuts[j + 1] if j + 1 < len(cuts) else n - 1  # last frame of the far segment
        rho = 1.0 / ratio
        T_np[c + 1 : end, :3, 3] *= rho
        scales[c + 1 : end + 1] *= rho
        T_np = apply_bridges(T_np, [(c, a, b, T_ab)])
    return T_np, scales


def optimize(
    frames: Frames,
    corr: Correspondences,
    cfg: OptimConfig,
    focal_px: float | None = None,
    device: str = "cpu",
    seed: int = 0,
    checkpoint_dir=None,
    progress: bool = True,
    fault_step: int | None = None,
) -> Reconstruction:
    """Fit the FlowMap model to one video and solve all cameras and depths.

    Args:
        frames: the input frames (their size defines the focal's pixel units).
        corr: correspondences at the working resolution (h, w).
        cfg: optimisation settings.
        focal_px: known focal length in pixels of the input frames, or None to
            estimate it (softmin over candidates, then learned).
        device: torch device string.
        seed: seed of the network initialisation and sampling.
        checkpoint_dir: folder for ``checkpoint.pt``, written every
            ``cfg.checkpoint_every`` steps; when it holds a checkpoint of the same run
            (same settings, seed and input size), the run continues from it and ends
            with the same result as an uninterrupted one.
        progress: show a tqdm bar with the loss and focal length.
        fault_step: testing aid: the loss of this step is replaced by NaN.

    Returns:
        :class:`Reconstruction` (names, timings and settings filled by the caller);
        ``warnings`` lists skipped non-finite steps.

    Raises:
        NumericalError: more than ``cfg.max_bad_steps`` non-finite steps, or an
            invalid final result (see :func:`check_result`).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    h, w = corr.shape
    image_size = (frames.height, frames.width)
    images_work = resize_images(frames.images, (h, w))
    data = _to_torch(images_work, corr, device)
    N = data.images.shape[0]
    window = N if cfg.window <= 0 else min(cfg.window, N)

    model = FlowMapModel(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    base_lrs = [cfg.lr]
    switch_step = int(cfg.focal.switch_fraction * cfg.steps)
    track_start = int(cfg.objective.track_start_fraction * cfg.steps)
    known = None if focal_px is None else torch.tensor(float(focal_px), device=device)
    focal_history: list[float] = []
    history: list[dict[str, float]] = []
    warnings: list[str] = []
    lr_scale, bad_steps, first_step = 1.0, 0, 0

    fingerprint = _fingerprint(cfg, focal_px, seed, N, (h, w))
    ckpt_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    state = None if ckpt_path is None else load_checkpoint(ckpt_path, fingerprint)
    if state is not None:
        if state["learned_focal"] is not None:  # its value comes with the model's state
            _enable_learned_focal(model, opt, base_lrs, 1.0, cfg.focal_lr, device)
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
                "fingerprint": fingerprint,
                "step": next_step,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "generator": generator.get_state(),
                "focal_history": focal_history,
                "history": history,
                "lr_scale": lr_scale,
                "bad_steps": bad_steps,
                "learned_focal": None if model.focal is None else float(model.focal().detach()),
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
        if known is None and step == switch_step and model.focal is None:
            init = float(np.mean(focal_history[-cfg.focal.average_last :]))
            _enable_learned_focal(model, opt, base_lrs, init, cfg.focal_lr, device)
        factor = lr_factor(step, cfg) * lr_scale
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        start = int(torch.randint(0, N - window + 1, (1,), generator=generator))
        focal = known if known is not None else (model.focal() if model.focal is not None else None)
        out = _step_losses(
            model, data, start, start + window, focal, image_size, (h, w), cfg, step >= track_start, generator
        )
        loss = out["loss"] * float("nan") if step == fault_step else out["loss"]
        opt.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            finite = _grads_finite(model)
        if not finite:
            # Skip the update, halve the learning rate (issue 4: never corrupt the run).
            opt.zero_grad(set_to_none=True)
            bad_steps += 1
            lr_scale *= 0.5
            warnings.append(f"step {step}: non-finite loss or gradient, step skipped and learning rate halved")
            if bad_steps > cfg.max_bad_steps:
                raise NumericalError(
                    f"the optimisation diverged ({bad_steps} non-finite steps); try another --seed or check the input"
                )
        else:
            opt.step()
        f = float(out["focal"].detach())
        if known is None and model.focal is None and np.isfinite(f):
            focal_history.append(f)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            entry = {"step": step, "focal": f, **{k: float(out[k].detach()) for k in ("loss", "flow", "tracks") if k in out}}
            history.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", focal=f"{f:.1f}")
        if ckpt_path is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            checkpoint(step + 1)
    opt_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if known is not None:
        final_focal = known
    elif model.focal is not None:
        final_focal = model.focal().detach()
    else:
        final_focal = torch.tensor(float(np.mean(focal_history[-cfg.focal.average_last :])), device=device)
    bridges = (corr.bridge_pairs, corr.bridge_xy, corr.bridge_valid)
    solved = solve_all(model, data, final_focal, image_size, cfg, bridges=bridges)
    solve_s = time.perf_counter() - t0
    K = K_pixels(intrinsics_from_focal(final_focal.cpu().double(), *image_size), *image_size)
    check_result(solved["c2w"], solved["depth"], float(K[0, 0]))
    return Reconstruction(
        c2w=solved["c2w"],
        K=K,
        depth=solved["depth"],
        weights=solved["weights"],
        names=list(frames.names),
        image_size=image_size,
        images=images_work,
        losses={"flow": solved["flow"], "tracks": solved["tracks"]},
        history=history,
        timings={"optimize_loop_s": opt_s, "final_solve_s": solve_s},
        warnings=warnings,
    )
