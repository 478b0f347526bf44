"""Differentiable camera geometry in torch: grids, (un)projection, Procrustes, induced flow.

Conventions (see :mod:`flowmap.types`): OpenCV camera axes (x right, y down, z forward);
``xy`` normalised to [0, 1] with pixel centre i at (i + 0.5) / W; ``K`` here is the
*normalised* intrinsics matrix (first row divided by W, second by H, principal point in
normalised coordinates) unless a name says ``_px``; ``depth`` is z-depth; ``c2w`` /
``w2c`` are 4x4 camera-to-world / world-to-camera.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
import torch.nn.functional as F


def pixel_grid(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Normalised xy of every pixel centre.

    Returns:
        (height, width, 2) tensor, ``[..., 0] = (col + 0.5) / width``,
        ``[..., 1] = (row + 0.5) / height``.
    """
    y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def K_normalised(K_px: np.ndarray | Tensor, height: int, width: int) -> Tensor:
    """Pixel intrinsics (OpenCV pixel centres, u = x W - 0.5) -> normalised intrinsics.

    Args:
        K_px: (..., 3, 3) intrinsics in pixels of an image of height x width.

    Returns:
        (..., 3, 3) float32 normalised intrinsics: fx / W, fy / H, (cx + 0.5) / W,
        (cy + 0.5) / H.
    """
    K = torch.as_tensor(K_px, dtype=torch.float64).clone()
    K[..., 0, 2] = K[..., 0, 2] + 0.5
    K[..., 1, 2] = K[..., 1, 2] + 0.5
    K[..., 0, :] = K[..., 0, :] / width
    K[..., 1, :] = K[..., 1, :] / height
    return K.float()


def K_pixels(K: Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised intrinsics -> (3, 3) float64 pixel intrinsics (inverse of :func:`K_normalised`)."""
    K_px = np.array(torch.as_tensor(K).detach().cpu().double().numpy(), copy=True)
    K_px[..., 0, :] *= width
    K_px[..., 1, :] *= height
    K_px[..., 0, 2] -= 0.5
    K_px[..., 1, 2] -= 0.5
    return K_px


def intrinsics_from_focal(focal: Tensor, height: int, width: int) -> Tensor:
    """Normalised intrinsics for focal length(s) in pixels, principal point at the centre.

    Args:
        focal: (...,) focal length in pixels (square pixels).

    Returns:
        (..., 3, 3) normalised K with fx = f / W, fy = f / H, cx = cy = 0.5.
    """
    focal = torch.as_tensor(focal)
    K = torch.zeros(*focal.shape, 3, 3, dtype=focal.dtype, device=focal.device)
    K[..., 0, 0] = focal / width
    K[..., 1, 1] = focal / height
    K[..., 0, 2] = 0.5
    K[..., 1, 2] = 0.5
    K[..., 2, 2] = 1.0
    return K


def unproject(xy: Tensor, depth: Tensor, K: Tensor) -> Tensor:
    """Lift normalised pixels to camera-space points: X = depth * K^-1 [x, y, 1]^T.

    Args:
        xy: (..., P, 2) normalised coordinates.
        depth: (..., P) z-depth.
        K: (..., 3, 3) normalised intrinsics (broadcast over P).

    Returns:
        (..., P, 3) points in camera coordinates (OpenCV axes).
    """
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    x = (xy[..., 0] - cx) / fx * depth
    y = (xy[..., 1] - cy) / fy * depth
    return torch.stack(torch.broadcast_tensors(x, y, depth), dim=-1)


def project(points: Tensor, K: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Perspective projection: x = fx X / Z + cx, y = fy Y / Z + cy.

    Args:
        points: (..., P, 3) camera-space points.
        K: (..., 3, 3) normalised intrinsics.
        eps: smallest |Z| used in the division (points behind or on the camera plane
            get a finite but meaningless projection; see the returned mask).

    Returns:
        xy: (..., P, 2) normalised coordinates.
        in_front: (..., P) bool, Z > eps.
    """
    z = points[..., 2]
    in_front = z > eps
    z_safe = torch.where(in_front, z, torch.full_like(z, eps))
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    x = fx * points[..., 0] / z_safe + cx
    y = fy * points[..., 1] / z_safe + cy
    return torch.stack([x, y], dim=-1), in_front


def transform(T: Tensor, points: Tensor) -> Tensor:
    """Apply rigid transforms: R p + t.

    Args:
        T: (..., 4, 4) transforms.
        points: (..., P, 3).

    Returns:
        (..., P, 3).
    """
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    return points @ R.transpose(-1, -2) + t[..., None, :]


def invert_rigid(T: Tensor) -> Tensor:
    """Inverse of rigid transforms (..., 4, 4): [R^T, -R^T t]."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


class PolarRotation(torch.autograd.Function):
    """Closest rotation R = U diag(1, 1, det(U V^T)) V^T to a 3x3 matrix M = U S V^T.

    Forward by SVD. Backward by the differential of the orthogonal polar factor
    (Papadopoulo and Lourakis, "Estimating the Jacobian of the SVD", ECCV 2000,
    section 3): with the sign fix folded into V' = V diag(1, 1, d) and signed singular
    values s' = s * (1, 1, d), dR = U X V'^T with X_ij = (A_ij - A_ji) / (s'_i + s'_j)
    and A = U^T dM V'. Only sums of singular values appear, so repeated singular
    values (frequent for near-planar or near-degenerate point sets) give a finite
    gradient, where ``torch.linalg.svd``'s backward returns NaN. Denominators are
    clamped away from zero at ``1e-12`` relative to the largest singular value.

    Input (B, 3, 3), output (B, 3, 3) rotations; use in double precision.
    """

    @staticmethod
    def forward(ctx, M: Tensor) -> Tensor:  # type: ignore[override]
        U, s, Vh = torch.linalg.svd(M)
        d = torch.sign(torch.linalg.det(U @ Vh))
        d = torch.where(d == 0, torch.ones_like(d), d)
        signs = torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1)
        V = Vh.transpose(-1, -2) * signs[..., None, :]
        R = U @ V.transpose(-1, -2)
        ctx.save_for_backward(U, s * signs, V)
        return R

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        U, s, V = ctx.saved_tensors
        H = U.transpose(-1, -2) @ grad @ V
        D = s[..., :, None] + s[..., None, :]
        tiny = 1e-12 * s.abs().amax(dim=-1, keepdim=True)[..., None].clamp_min(1e-30)
        D = torch.where(D.abs() < tiny, torch.where(D < 0, -tiny, tiny), D)
        Y = (H - H.transpose(-1, -2)) / D
        return U @ Y @ V.transpose(-1, -2)


def procrustes(p: Tensor, q: Tensor, weights: Tensor, eps: float = 1e-8) -> Tensor:
    """Weighted orthogonal Procrustes (Kabsch/Umeyama without scale): q ≈ R p + t.

    Minimises sum_k w_k ||R p_k + t - q_k||^2 in closed form (FlowMap section 3.2;
    Umeyama 1991 eq. 40 without the scale): weighted centroids, 3x3 weighted
    covariance, SVD, sign fix so that det R = +1, t = c_q - R c_p. The rotation's
    gradient is :class:`PolarRotation`'s, which stays finite where the SVD's own
    backward divides by zero (repeated singular values).

    Args:
        p: (B, P, 3) source points.
        q: (B, P, 3) target points.
        weights: (B, P) non-negative weights; ``eps`` is added to each.

    Returns:
        (B, 4, 4) transforms T with T[:3, :3] = R, T[:3, 3] = t.
    """
    # A tiny floor keeps the solve defined (uniform weights) when every weight is zero,
    # e.g. a frame pair without any valid flow.
    weights = weights + eps
    w = weights / weights.sum(dim=-1, keepdim=True)
    cp = (w[..., None] * p).sum(dim=-2)
    cq = (w[..., None] * q).sum(dim=-2)
    pc = p - cp[..., None, :]
    qc = q - cq[..., None, :]
    cov = (w[..., None] * qc).transpose(-1, -2) @ pc  # (B, 3, 3) = sum w q p^T
    R = PolarRotation.apply(cov.double()).to(p.dtype)
    t = cq - (R @ cp[..., None])[..., 0]
    T = torch.zeros(*p.shape[:-2], 4, 4, dtype=p.dtype, device=p.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def sample_image(image: Tensor, xy: Tensor, mode: str = "bilinear") -> Tensor:
    """Bilinear lookup of a (B, C, H, W) map at normalised xy (B, P, 2) -> (B, P, C).

    Uses ``grid_sample`` with ``align_corners=False``, which matches the pixel-centre
    convention of :func:`pixel_grid`; samples outside the image use the border value.
    """
    grid = (xy * 2.0 - 1.0)[:, :, None, :]  # (B, P, 1, 2)
    out = F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


def induced_flow(xy: Tensor, depth: Tensor, K: Tensor, T_target_from_source: Tensor) -> tuple[Tensor, Tensor]:
    """Flow induced by camera motion: project(T unproject(xy, depth)) - xy.

    Args:
        xy: (B, P, 2) normalised source pixels.
        depth: (B, P) source z-depth.
        K: (B, 3, 3) normalised intrinsics (shared by source and target).
        T_target_from_source: (B, 4, 4) maps source-camera points to the target
            camera (w2c_target @ c2w_source).

    Returns:
        flow: (B, P, 2) normalised displacement.
        valid: (B, P) bool, the point lands in front of the target camera.
    """
    points = transform(T_target_from_source, unproject(xy, depth, K))
    xy_target, valid = project(points, K)
    return xy_target - xy, valid


def rotation_angle_deg(R: Tensor | np.ndarray) -> np.ndarray:
    """Rotation angle(s) in degrees of (..., 3, 3) rotation matrices."""
    R = torch.as_tensor(R).double()
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).numpy()
