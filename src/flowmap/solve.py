"""The final solve: the fitted model run once on all frames -> a :class:`~flowmap.types.Solution`.

After the optimisation the depth network is run on every frame; every consecutive
pair's relative pose is solved by weighted Procrustes at all pixels (as in the loop,
with the final focal length); bridges over cuts (pairs without usable flow, found by
:mod:`flowmap.correspondences.bridges`) then re-route the chain: the pose across a
cut comes from the sparse matches of its bridge pair (:func:`bridge_pose`), and the far
side of the cut is rescaled to the near side's units (:func:`bridged_poses`). The
result is checked (finite, orthonormal, positive depth) before anyone writes it
(:func:`check_solution`).

Conventions (see :mod:`flowmap.types`): ``T[i] = T_{i <- i+1}`` (camera i+1 to camera i),
c2w camera-to-world with frame 0 = identity, OpenCV camera axes, z-depth, ``K`` of the
Solution in pixels of the input frames.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from flowmap.errors import NumericalError
from flowmap.geometry import K_pixels, intrinsics_from_focal, sample_image
from flowmap.model.flowmap import FlowMapModel, VideoTensors
from flowmap.model.poses import chain, relative_poses
from flowmap.objective import flow_loss_sums, track_loss
from flowmap.types import Bridges, Solution


@torch.no_grad()
def solve(
    model: FlowMapModel,
    data: VideoTensors,
    focal_px: float,
    bridges: Bridges | None = None,
    huber_delta: float = 0.01,
    chunk: int = 4,
) -> Solution:
    """Run the network on every frame and solve all poses, weights and the final losses.

    Args:
        model: the fitted model.
        data: the video's tensors (all N frames).
        focal_px: the final focal length in pixels of the input frames
            (``model.image_size``).
        bridges: bridges over cuts (None or empty: the plain chain).
        huber_delta: Huber threshold of the reported losses (the objective's).
        chunk: frames per forward pass of the network, and pairs whose per-pixel
            samples (features at both ends, the weight MLP's activations) are held at
            once. 4: the solve's peak on tum-rpy (60 frames) was 1.50 GB at 16 and 0.98 GB
            at 4 (the run's peak moved to the refinement, 0.98 GB), with the same
            losses to the last digit and 5-15 % less time (tum-rpy-long 7.9-8.0 -> 6.9-7.5 s).

    Returns:
        :class:`Solution` (c2w (N, 4, 4) float64, K (3, 3) input pixels, depth
        (N, h, w), weights (N-1, h, w), losses ``flow`` and ``tracks`` over the video).

    Raises:
        NumericalError: the result is not a valid camera set (:func:`check_solution`).
    """
    h, w = data.shape
    N = data.n
    image_size = model.image_size
    focal = torch.tensor(float(focal_px), dtype=torch.float32, device=data.images.device)
    K = intrinsics_from_focal(focal, *image_size)
    # The network runs on ``chunk`` frames at a time and their pairs are solved at once,
    # the previous chunk's last frame carried over: only ``chunk`` + 1 frames' features
    # are held (0.32 MB a frame at 176 x 240; holding all of them and their concatenation,
    # the solve peaked at 1.74 GB on tum-rpy-long's 229 frames against 1.46-1.51 GB).
    depths, Ts, weights = [], [], []
    last = None  # (depth, features) of the previous chunk's last frame
    for s in range(0, N, chunk):
        d, f = model.depth_net(data.images[s : s + chunk])
        depths.append(d)
        start = s if last is None else s - 1
        d_run, f_run = (d, f) if last is None else (torch.cat([last[0], d]), torch.cat([last[1], f]))
        if len(d_run) >= 2:
            e = start + len(d_run)
            samples = model.pair_samples(d_run, f_run, data.flow_bwd[start : e - 1], data.mask_bwd[start : e - 1], data.grid)
            Ts.append(relative_poses(samples, K[None]))
            weights.append(samples.weights)
        last = (d[-1:], f[-1:])
    depth = torch.cat(depths)
    T = torch.cat(Ts)
    if bridges is not None and len(bridges):
        T_np, scales = bridged_poses(T, depth, K, bridges, w)
        T = torch.as_tensor(T_np, dtype=T.dtype, device=T.device)
        depth = depth * torch.as_tensor(scales, dtype=depth.dtype, device=depth.device)[:, None, None]
    flow = _flow_loss_in_chunks(depth, K, T, data, huber_delta, chunk)
    c2w = chain(T.double())
    tracks = track_loss(depth, K, c2w.float(), data.tracks_xy, data.tracks_visible, data.tracks_query, huber_delta)
    K_px = K_pixels(intrinsics_from_focal(focal.cpu().double(), *image_size), *image_size)
    solution = Solution(
        c2w=c2w.cpu().numpy(),
        K=K_px,
        depth=depth.cpu().numpy().astype(np.float32),
        weights=torch.cat(weights).reshape(N - 1, h, w).cpu().numpy().astype(np.float32),
        image_size=tuple(image_size),
        losses={"flow": float(flow), "tracks": float(tracks)},
    )
    check_solution(solution)
    return solution


def _flow_loss_in_chunks(depth: torch.Tensor, K: torch.Tensor, T: torch.Tensor, data: VideoTensors, delta: float, chunk: int) -> torch.Tensor:
    """:func:`flowmap.objective.flow_loss` of the whole video, summed over ``chunk`` pairs
    at a time (every pair's per-pixel terms at once took 0.5 GB on tum-rpy-long)."""
    error = weight = torch.zeros((), dtype=depth.dtype, device=depth.device)
    for s in range(0, depth.shape[0] - 1, chunk):
        e = min(depth.shape[0], s + chunk + 1)
        pairs = slice(s, e - 1)
        a, b = flow_loss_sums(
            depth[s:e], K, T[pairs], data.grid, data.flow_fwd[pairs], data.flow_bwd[pairs], data.mask_fwd[pairs], data.mask_bwd[pairs], delta
        )
        error, weight = error + a, weight + b
    return error / (weight + 1e-8)


def check_solution(solution: Solution) -> None:
    """Refuse a result that is not finite or not a valid camera set.

    Raises:
        NumericalError: non-finite poses, depths or focal length, non-positive depths,
            or rotations that are not orthonormal with determinant +1 (tolerance 1e-4).
    """
    c2w, depth, focal = solution.c2w, solution.depth, float(solution.K[0, 0])
    if not (np.isfinite(c2w).all() and np.isfinite(depth).all() and np.isfinite(focal)):
        raise NumericalError("the optimisation produced non-finite poses or depths; try another --seed or fewer --steps")
    if focal <= 0 or (depth <= 0).any():
        raise NumericalError("the optimisation produced a non-positive focal length or depth; try another --seed")
    R = c2w[:, :3, :3]
    eye = np.eye(3)
    if np.abs(R @ np.transpose(R, (0, 2, 1)) - eye).max() > 1e-4 or np.abs(np.linalg.det(R) - 1).max() > 1e-4:
        raise NumericalError("the optimisation produced invalid rotations; try another --seed")


def bridged_poses(
    T: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, bridges: Bridges, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Relative poses with each cut pair re-routed through its bridge, and per-frame depth scales.

    Cuts are handled in order. For each solvable bridge (c, a, b) the frames after the
    cut, up to the next cut, are brought to the scale of the frames before it (their
    relative translations and depths multiplied by 1 / depth_ratio), then the cut pair's
    pose is replaced so that the chain passes through the bridge (:func:`apply_bridges`).

    Args:
        T: (N-1, 4, 4) relative poses T_{i <- i+1} from Procrustes.
        depth: (N, h, w) predicted depths.
        K: (3, 3) normalised intrinsics.
        bridges: the bridges (cuts in increasing order).
        width: working width in pixels (the RANSAC threshold's pixels).

    Returns:
        T: (N-1, 4, 4) float64 relative poses T_{i <- i+1}.
        scales: (N,) float64 factors for the depth maps.
    """
    K_np = K.detach().cpu().double().numpy()
    T_np = T.detach().cpu().double().numpy().copy()
    n = T_np.shape[0] + 1
    scales = np.ones(n)
    cuts = [int(c) for c in bridges.pairs[:, 0]]
    for j, ((c, a, b), m, v) in enumerate(zip(bridges.pairs.tolist(), bridges.xy, bridges.valid)):
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


def bridge_pose(
    xy_a: np.ndarray, xy_b: np.ndarray, depth_a: np.ndarray, depth_b: np.ndarray, K: np.ndarray, threshold_px: float, width: int
) -> tuple[np.ndarray, float] | None:
    """Relative pose T_{a <- b} of two non-consecutive frames from sparse matches.

    The rotation and the direction of the translation come from the essential matrix
    (OpenCV ``findEssentialMat`` with RANSAC, then ``recoverPose``'s cheirality test)
    on the matches' camera rays; the length of the translation from the predicted
    depths, so that it is in the network's units like every other relative pose: the
    inliers are triangulated (``cv2.triangulatePoints``) with a unit translation and
    the translation is scaled by the median ratio of the predicted depth in frame a
    to the triangulated one.

    Args:
        xy_a, xy_b: (K, 2) normalised matched positions in frames a and b.
        depth_a, depth_b: (K,) predicted z-depths there.
        K: (3, 3) normalised intrinsics.
        threshold_px: RANSAC threshold in pixels of an image ``width`` wide.
        width: width in pixels the threshold refers to.

    Returns:
        T_ab: (4, 4) float64 T_{a <- b} (maps camera-b points to camera a) in the
            units of frame a's depth;
        depth_ratio: how much larger frame b's predicted depths are than frame a's
            units (the same triangulation scaled by frame b's depths). Frames on the
            two sides of a cut are not tied by any loss, so the network may give them
            different scales (1.45 on fox); the caller rescales the far side.
        or None when fewer than 15 matches survive.
    """
    def rays(xy: np.ndarray) -> np.ndarray:
        return np.stack([(xy[:, 0] - K[0, 2]) / K[0, 0], (xy[:, 1] - K[1, 2]) / K[1, 1]], axis=1).astype(np.float64)

    ra, rb = rays(xy_a), rays(xy_b)
    if len(ra) < 15:
        return None
    thr = threshold_px / (K[0, 0] * width)
    E, inliers = cv2.findEssentialMat(rb, ra, np.eye(3), cv2.RANSAC, 0.999, thr)
    if E is None or E.shape != (3, 3) or inliers is None or int(inliers.sum()) < 15:
        return None
    count, R, t, mask = cv2.recoverPose(E, rb, ra, np.eye(3), mask=inliers.copy())
    keep = mask.ravel() > 0
    if count < 15 or keep.sum() < 15:
        return None
    # Triangulate the inliers with the unit-length translation, then scale so that their
    # depths in frame a agree (median ratio) with the network's depths there.
    t = t.ravel() / np.linalg.norm(t)
    P_b = np.hstack([np.eye(3), np.zeros((3, 1))])
    P_a = np.hstack([R, t[:, None]])
    X_h = cv2.triangulatePoints(P_b, P_a, rb[keep].T, ra[keep].T)
    X_b = (X_h[:3] / X_h[3]).T
    z_a = (X_b @ R.T + t)[:, 2]
    ok = (X_b[:, 2] > 0) & (z_a > 0)
    if ok.sum() < 15:
        return None
    scale = float(np.median(depth_a[keep][ok] / z_a[ok]))
    scale_b = float(np.median(depth_b[keep][ok] / X_b[ok, 2]))
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = scale * t
    return T, scale_b / scale


def apply_bridges(T: np.ndarray, cuts_and_poses: list[tuple[int, int, int, np.ndarray]]) -> np.ndarray:
    """Replace the relative pose of each cut pair so the chain passes through its bridge.

    With P(i, j) = T_i ... T_{j-1} = T_{i <- j}, a bridge T_{a <- b} over the cut c
    (a <= c < b) sets T_c = P(a, c)^-1 T_{a <- b} P(c+1, b)^-1, so that chaining gives
    c2w_b = c2w_a T_{a <- b} while every other consecutive pose is unchanged.

    Args:
        T: (N-1, 4, 4) float64 T_{i <- i+1}.
        cuts_and_poses: (c, a, b, T_{a <- b}) per bridge.

    Returns:
        (N-1, 4, 4) a modified copy.
    """
    T = T.copy()

    def product(i: int, j: int) -> np.ndarray:
        P = np.eye(4)
        for k in range(i, j):
            P = P @ T[k]
        return P

    for c, a, b, T_ab in cuts_and_poses:
        T[c] = np.linalg.inv(product(a, c)) @ T_ab @ np.linalg.inv(product(c + 1, b))
    return T
