"""Depth fine-tuning with the cameras held fixed: dense depth consistent with the refined cameras.

After the global refinement (:mod:`flowmap.refine`) the cameras and the focal length
have moved away from the ones the depth network was trained with, so FlowMap's depth
maps no longer agree with them (issue 10, item 3). This stage runs a short gradient
descent on the depth network only, with the refined cameras and intrinsics as
constants:

* FlowMap's flow loss (FlowMap section 4, :func:`flowmap.objective.flow_loss`): every
  sampled pixel of a frame is unprojected with its depth and the intrinsics, moved with
  the *fixed* relative pose ``T_{i <- i+1} = inv(c2w_i) @ c2w_{i+1}`` and compared with
  the observed flow, both directions, Huber penalty, on random windows of consecutive
  frames as in :mod:`flowmap.optimize`;
* FlowMap's track loss (:func:`flowmap.objective.track_loss`), same fixed poses;
* a sparse depth term from the bundle-adjusted points: each point is projected into
  each frame with the refined camera; it counts for frame i when it lands inside the
  image in front of the camera and its depth agrees with the network's current depth
  there within ``visibility_factor`` (the :class:`~flowmap.refine.Refinement` carries
  no observation lists, so this is the visibility test; it also rejects points hidden
  behind a nearer surface). The penalty is a Huber loss on
  ``log d_pred(xy) - log z_point`` (scale-free, robust).

With the poses fixed the flow and track terms fix the depth in the units of the
refined trajectory (the translation is no longer free to absorb a scale), so the
result can be written directly beside the refined cameras.

Conventions (see :mod:`flowmap.types`): c2w camera-to-world (N, 4, 4), OpenCV axes,
c2w[0] = I; ``K`` in pixels of the input frames with the centre of column i at u = i
(converted here to the normalised K of :mod:`flowmap.geometry`); z-depth at the
working resolution.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from flowmap.camera import K_at
import torch.nn.functional as F
from torch import Tensor

from flowmap.geometry import K_normalised, invert_rigid, project, sample_image, transform
from flowmap.model.flowmap import FlowMapModel, VideoTensors
from flowmap.objective import flow_loss, track_loss
from flowmap.optimize import sample_window

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune_depth", "point_observations", "points_agreement"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune_depth`.

    Attributes:
        steps: Adam steps on the depth network (0: the stage is off, the default: on
            fox its result was not kept, the refinement's correction field alone agreed
            better with the points (0.47 %), and on tum-rpy it moved the agreement 5.5 %
            -> 4.9 %, for 18-33 s of a run; ``flowmap run --finetune-steps 100`` turns
            it on).
        lr: learning rate (constant after a short linear warm-up).
        warmup_steps: linear warm-up of the learning rate.
        window: consecutive frames per step (as :class:`flowmap.optimize.OptimConfig`).
        loss_points: random pixels per frame for the flow term.
        flow_weight: weight of the flow term (FlowMap: 1000).
        track_weight: weight of the track term (FlowMap: 100).
        point_weight: weight of the sparse depth term on the adjusted points.
        point_delta: Huber threshold of the log-depth residual (0.02 = 2 %).
        huber_delta: Huber threshold of the flow and track terms (normalised units).
        visibility_factor: a point counts for a frame when its depth and the network's
            depth there differ by less than this factor.
        max_points_per_frame: at most this many points per frame (random subset).
        min_points_per_frame: a frame with fewer projecting points gets no depth term.
        init_scale: before the steps, shift the depth head's bias by the median log ratio
            of point depth to network depth (one global factor: the refined trajectory's
            scale is FlowMap's only up to the similarity the refinement fitted).
        field_node_px: after the steps, a per-frame smooth multiplicative correction with
            nodes this many depth-map pixels apart fitted to the points
            (:func:`flowmap.refine.depth.fit_correction`); None: the network's depth as is.
        field_smooth: regularisation weight of that correction.
        field_factor: visibility factor of the points used by that correction (when the
            observations are not given).
        keep_better: when ``depth_before`` is given and agrees better with the points
            than the fine-tuned depth (same points), return ``depth_before`` (stats
            ``kept``: "before" or "finetuned").
        chunk: frames per forward pass for the final depth.
        seed: seed of the window and pixel sampling.
    """

    steps: int = 0
    lr: float = 3e-4
    warmup_steps: int = 10
    window: int = 10
    loss_points: int = 8192
    flow_weight: float = 1000.0
    track_weight: float = 100.0
    point_weight: float = 1000.0
    point_delta: float = 0.02
    huber_delta: float = 0.01
    visibility_factor: float = 1.5
    max_points_per_frame: int = 4000
    min_points_per_frame: int = 10
    init_scale: bool = True
    field_node_px: float | None = 16.0
    field_smooth: float = 0.01
    keep_better: bool = True
    field_factor: float = 1.25
    chunk: int = 16
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError on an invalid setting."""
        if self.steps < 0 or self.window < 0 or self.lr <= 0 or self.visibility_factor <= 1.0:
            raise ValueError("finetune: steps >= 0, window >= 0, lr > 0 and visibility_factor > 1 are required")
        if min(self.flow_weight, self.track_weight, self.point_weight) < 0 or self.point_delta <= 0:
            raise ValueError("finetune: weights must be >= 0 and point_delta > 0")


@dataclass
class FinetuneResult:
    """What :func:`finetune_depth` produced.

    Attributes:
        depth: (N, h, w) float32 z-depth at the working resolution, units of ``c2w``.
        stats: ``steps``, ``seconds``, ``loss_before`` / ``loss_after`` (weighted total
            and each term, over all frames), ``depth_agreement_before`` /
            ``depth_agreement_after`` (median |d - z| / z over the points seen by each
            frame, :func:`points_agreement`), ``points_used`` (point-frame pairs of the
            depth term at the start).
    """

    depth: np.ndarray
    stats: dict = field(default_factory=dict)


@dataclass
class PointObservations:
    """Adjusted points projected into the frames, flattened over (frame, point).

    Attributes:
        frame: (M,) int64 frame index.
        index: (M,) int64 row of the point in ``points_xyz``.
        xy: (M, 2) normalised image position (:func:`flowmap.geometry.pixel_grid` convention).
        z: (M,) z-depth of the point in that camera (units of c2w).
        exact: True when the pairs are the reconstruction's observations (no visibility
            test needed); False when every point was projected into every frame and
            visibility is decided against the network's depth (:func:`_visible`).
    """

    frame: Tensor
    xy: Tensor
    z: Tensor
    index: Tensor
    exact: bool = False

    def subset(self, keep: Tensor) -> "PointObservations":
        return PointObservations(self.frame[keep], self.xy[keep], self.z[keep], self.index[keep], self.exact)

    def visible(self, depth: Tensor, factor: float) -> Tensor:
        """(M,) bool: the pairs that count against ``depth`` (all of them when exact)."""
        if self.exact:
            return torch.ones(len(self.frame), dtype=torch.bool, device=self.frame.device)
        return _visible(_sample(depth, self.frame, self.xy), self.z, factor)

    def of(self, frames: Tensor) -> Tensor:
        """(M,) bool: observations whose frame is in ``frames``."""
        return torch.isin(self.frame, frames)


def point_observations(
    points_xyz: np.ndarray,
    c2w: Tensor,
    K: Tensor,
    max_per_frame: int,
    generator: torch.Generator,
    observed: list[np.ndarray] | None = None,
) -> PointObservations:
    """Project world points into the cameras; keep those inside the image and in front.

    Args:
        points_xyz: (P, 3) world points (units of c2w).
        c2w: (N, 4, 4) float camera-to-world.
        K: (3, 3) normalised intrinsics.
        max_per_frame: random subset size per frame.
        generator: for the subset.
        observed: optional N int arrays, the rows of ``points_xyz`` each frame observes
            (:attr:`flowmap.refine.Refinement.observed`); only those are projected.

    Returns:
        :class:`PointObservations`; ``exact`` when ``observed`` was given, otherwise
        visibility by depth is decided later, against the network's depth.
    """
    device = c2w.device
    pts = torch.as_tensor(np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3), dtype=torch.float32, device=device)
    frames, xys, zs, ids = [], [], [], []
    w2c = invert_rigid(c2w)
    for i in range(c2w.shape[0]):
        if observed is None:
            rows = torch.arange(len(pts), device=device)
        else:
            rows = torch.as_tensor(np.asarray(observed[i], dtype=np.int64), device=device)
        cam = transform(w2c[i], pts[rows])
        xy, in_front = project(cam, K)
        ok = in_front & (xy >= 0).all(-1) & (xy <= 1).all(-1)
        idx = torch.nonzero(ok)[:, 0]
        if len(idx) > max_per_frame:
            idx = idx[torch.randperm(len(idx), generator=generator)[:max_per_frame].to(device)]
        frames.append(torch.full((len(idx),), i, dtype=torch.long, device=device))
        xys.append(xy[idx])
        zs.append(cam[idx, 2])
        ids.append(rows[idx])
    return PointObservations(torch.cat(frames), torch.cat(xys), torch.cat(zs), torch.cat(ids), exact=observed is not None)


def _sample(depth: Tensor, frame: Tensor, xy: Tensor) -> Tensor:
    """Bilinear depth of (B, h, w) maps at (M,) frames (indices into B) and (M, 2) positions -> (M,)."""
    out = torch.empty(len(frame), dtype=depth.dtype, device=depth.device)
    for b in torch.unique(frame).tolist():
        sel = frame == b
        out[sel] = sample_image(depth[b][None, None], xy[sel][None])[0, :, 0]
    return out


def _visible(d_pred: Tensor, z: Tensor, factor: float) -> Tensor:
    """(M,) bool: network depth and point depth within ``factor`` of each other."""
    return (torch.log(d_pred.clamp_min(1e-12)) - torch.log(z)).abs() < float(np.log(factor))


def points_agreement(depth: Tensor, obs: PointObservations, visible: Tensor) -> float:
    """Median |d(xy) - z| / z over the visible (frame, point) pairs (NaN when none).

    The measure of issue 10 ("median relative difference between each depth map and the
    adjusted points it sees"), with visibility by depth (:func:`_visible`).
    """
    if not bool(visible.any()):
        return float("nan")
    d = _sample(depth, obs.frame[visible], obs.xy[visible])
    z = obs.z[visible]
    return float(((d - z).abs() / z).median())


def _point_loss(depth: Tensor, frame: Tensor, xy: Tensor, z: Tensor, delta: float) -> Tensor:
    """Mean Huber penalty of log d(xy) - log z (zero with a gradient path when empty)."""
    if len(frame) == 0:
        return depth.sum() * 0.0
    r = torch.log(_sample(depth, frame, xy)) - torch.log(z)
    return F.huber_loss(r, torch.zeros_like(r), delta=delta)


def _depth_all(model: FlowMapModel, images: Tensor, chunk: int) -> Tensor:
    """(N, h, w) network depth of every frame."""
    return torch.cat([model.depth_net(images[s : s + chunk])[0] for s in range(0, images.shape[0], chunk)])


def _losses(
    depth: Tensor,
    start: int,
    end: int,
    data: VideoTensors,
    c2w: Tensor,
    K: Tensor,
    pixels: Tensor | slice,
    obs: PointObservations,
    obs_sel: Tensor,
    cfg: FinetuneConfig,
) -> dict[str, Tensor]:
    """The three terms and their weighted sum for frames [start, end) with depth (end-start, h, w)."""
    c2w_w = c2w[start:end]
    T = invert_rigid(c2w_w[:-1]) @ c2w_w[1:]  # T_{i <- i+1}
    s = slice(start, end - 1)
    out = {
        "flow": flow_loss(
            depth, K, T, data.grid[pixels], data.flow_fwd[s][:, pixels], data.flow_bwd[s][:, pixels],
            data.mask_fwd[s][:, pixels], data.mask_bwd[s][:, pixels], cfg.huber_delta,
        )
    }
    xy, vis, query = data.window_tracks(start, end)
    out["tracks"] = track_loss(depth, K, c2w_w, xy, vis, query, cfg.huber_delta)
    frame = obs.frame[obs_sel] - start
    pxy, pz = obs.xy[obs_sel], obs.z[obs_sel]
    if len(frame) and not obs.exact:
        keep = _visible(_sample(depth.detach(), frame, pxy), pz, cfg.visibility_factor)
        frame, pxy, pz = frame[keep], pxy[keep], pz[keep]
    out["points"] = _point_loss(depth, frame, pxy, pz, cfg.point_delta)
    out["loss"] = cfg.flow_weight * out["flow"] + cfg.track_weight * out["tracks"] + cfg.point_weight * out["points"]
    return out


@torch.no_grad()
def _evaluate(model, data, c2w, K, obs, cfg) -> tuple[Tensor, dict[str, float], Tensor]:
    """Depth of all frames, the losses over all frames (in windows) and the visibility mask."""
    depth = _depth_all(model, data.images, cfg.chunk)
    n = data.n
    window = n if cfg.window <= 0 else min(cfg.window, n)
    totals: dict[str, float] = {}
    starts = list(range(0, max(1, n - window + 1), max(1, window - 1)))
    if starts[-1] != n - window:
        starts.append(n - window)
    for s in starts:
        sel = (obs.frame >= s) & (obs.frame < s + window)
        terms = _losses(depth[s : s + window], s, s + window, data, c2w, K, slice(None), obs, sel, cfg)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + float(v) / len(starts)
    return depth, totals, obs.visible(depth, cfg.visibility_factor)


def finetune_depth(
    model: FlowMapModel,
    data: VideoTensors,
    c2w: np.ndarray,
    K: np.ndarray,
    points_xyz: np.ndarray,
    config: FinetuneConfig = FinetuneConfig(),
    progress: bool = False,
    depth_before: np.ndarray | None = None,
    observed: list[np.ndarray] | None = None,
) -> FinetuneResult:
    """Fine-tune the depth network with the cameras held fixed; return the new depth maps.

    Args:
        model: the fitted FlowMap model; its depth network is updated in place (the
            weight MLP and the focal length are not used: the poses are given).
        data: the video's working-resolution frames and correspondences.
        c2w: (N, 4, 4) camera-to-world (refined), OpenCV axes; held fixed.
        K: (3, 3) intrinsics in pixels of the input frames (``model.image_size``),
            centre of column i at u = i (refined); held fixed.
        points_xyz: (P, 3) adjusted 3D points in the frame and units of ``c2w``.
        config: :class:`FinetuneConfig`; ``steps=0`` returns the network's depth as is.
        progress: one line per 50 steps on stderr.
        depth_before: (N, h, w) the depth that would be written without this stage (e.g.
            the refinement's corrected depth); only for ``depth_agreement_before``
            (default: the network's depth before fine-tuning).
        observed: optional N int arrays, the rows of ``points_xyz`` each frame observes
            (:attr:`flowmap.refine.Refinement.observed`): the depth term and the
            agreement then use exactly those observations instead of a visibility test.

    Returns:
        :class:`FinetuneResult`: depth (N, h, w) float32 in the units of ``c2w``, stats.

    Raises:
        ValueError: malformed inputs or configuration.
    """
    config.check()
    n = data.n
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape != (n, 4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"finetune: c2w must be finite (N, 4, 4) with N = {n}, got {c2w.shape}")
    device = data.images.device
    t_start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    c2w_t = torch.as_tensor(c2w, dtype=torch.float32, device=device)
    K_t = K_normalised(np.asarray(K, dtype=np.float64), *model.image_size).to(device)
    if observed is not None and len(observed) != n:
        raise ValueError(f"finetune: observed must hold one index array per frame ({n}), got {len(observed)}")
    obs = point_observations(points_xyz, c2w_t, K_t, config.max_points_per_frame, generator, observed)
    counts = torch.bincount(obs.frame, minlength=n)
    enough = counts[obs.frame] >= config.min_points_per_frame
    obs = obs.subset(enough)

    if config.init_scale and config.steps > 0 and len(obs.frame):
        with torch.no_grad():
            d_init = _sample(_depth_all(model, data.images, config.chunk), obs.frame, obs.xy)
            shift = float((torch.log(obs.z) - torch.log(d_init.clamp_min(1e-12))).median())
            model.depth_net.head.bias += shift
    depth0, losses0, visible0 = _evaluate(model, data, c2w_t, K_t, obs, config)
    if depth_before is not None:
        ref = torch.as_tensor(np.asarray(depth_before, dtype=np.float32), device=device)
        visible0 = obs.visible(ref, config.visibility_factor)
        agree0 = points_agreement(ref, obs, visible0)
    else:
        agree0 = points_agreement(depth0, obs, visible0)
    stats: dict = {
        "steps": config.steps,
        "points_used": int(visible0.sum()),
        "loss_before": losses0,
        "depth_agreement_before": agree0,
        "depth_agreement_network_before": points_agreement(depth0, obs, visible0),
    }
    if config.steps == 0:
        stats.update(seconds=time.perf_counter() - t_start, loss_after=losses0, depth_agreement_after=stats["depth_agreement_network_before"])
        return FinetuneResult(depth0.cpu().numpy().astype(np.float32), stats)

    h, w = data.shape
    window = n if config.window <= 0 else min(config.window, n)
    params = list(model.depth_net.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    was_training = model.training
    model.train()
    history = []
    for step in range(config.steps):
        for g in opt.param_groups:
            g["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        start = sample_window(n, window, generator)
        end = start + window
        if config.loss_points and config.loss_points < h * w:
            pixels = torch.randperm(h * w, generator=generator)[: config.loss_points].to(device)
        else:
            pixels = slice(None)
        depth, _ = model.depth_net(data.images[start:end])
        sel = (obs.frame >= start) & (obs.frame < end)
        terms = _losses(depth, start, end, data, c2w_t, K_t, pixels, obs, sel, config)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(terms["loss"]):
            continue
        terms["loss"].backward()
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            opt.step()
        if progress and (step % 50 == 0 or step == config.steps - 1):
            print(f"[finetune] step {step}: " + ", ".join(f"{k} {float(v):.5f}" for k, v in terms.items()), file=sys.stderr, flush=True)
        if step % 10 == 0:
            history.append(float(terms["loss"].detach()))
    model.train(was_training)
    model.zero_grad(set_to_none=True)

    depth1, losses1, _ = _evaluate(model, data, c2w_t, K_t, obs, config)
    if not (torch.isfinite(depth1).all() and (depth1 > 0).all()):
        stats.update(seconds=time.perf_counter() - t_start, failed=True)
        base = depth0 if depth_before is None else torch.as_tensor(np.asarray(depth_before, dtype=np.float32))
        return FinetuneResult(base.cpu().numpy().astype(np.float32), stats)
    stats.update(loss_after=losses1, depth_agreement_network_after=points_agreement(depth1, obs, visible0), loss_history=history)
    out = depth1.cpu().numpy().astype(np.float32)
    if config.field_node_px is not None:
        out = _field_correction(out, obs, depth1, points_xyz, c2w, K, model.image_size, config)
        depth1 = torch.as_tensor(out, device=device)
    agree1 = points_agreement(depth1, obs, visible0)
    stats.update(depth_agreement_finetuned=agree1, kept="finetuned")
    if config.keep_better and depth_before is not None and np.isfinite(agree0) and not agree1 < agree0:
        out, agree1 = np.asarray(depth_before, dtype=np.float32), agree0
        stats["kept"] = "before"
    stats.update(seconds=time.perf_counter() - t_start, depth_agreement_after=agree1)
    return FinetuneResult(out, stats)


def _field_correction(depth_np, obs, depth, points_xyz, c2w, K, image_size, config) -> np.ndarray:
    """Per-frame smooth correction of ``depth`` fitted to the points visible within ``field_factor``."""
    from flowmap.refine.depth import fit_correction

    vis = obs.visible(depth, config.field_factor)
    pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
    frame, index = obs.frame[vis].cpu().numpy(), obs.index[vis].cpu().numpy()
    per_frame = [pts[index[frame == i]] for i in range(len(depth_np))]
    K_work = K_at(np.asarray(K, dtype=np.float64), tuple(image_size), depth_np.shape[1:])
    return fit_correction(depth_np, c2w, K_work, per_frame, config.field_node_px, config.field_smooth)[0]
