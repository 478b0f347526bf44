"""Depth where stereo is not confident, from one surface for the whole video (issue 26).

On low-texture scenes (white walls, floors) a frame's stereo is confident only on edges
and seams (7-13 % of the pixels on tartanair-hospital); filling the rest frame by frame
from those pixels (edge-aware smoothing, the network's depth) leaves whole walls at the
wrong depth. Every surface is seen by many frames, though, and is constrained in some
of them. The surface fill therefore works on the whole video:

1. **Surface** (:func:`poisson_surface`): the confident pixels of all frames, lifted with
   the fixed cameras, become one oriented point cloud (normals from the neighbourhood,
   turned towards the camera that saw the point); screened Poisson reconstruction
   (Kazhdan & Hoppe, "Screened Poisson Surface Reconstruction", ToG 2013; Open3D's
   implementation) closes it into a watertight surface, whose least-supported vertices
   are trimmed. :func:`render_depth` ray-casts it into every frame (Open3D).
2. **Planes per segment** (:func:`segment_planes`): each frame is cut into regions of
   similar colour (Felzenszwalb & Huttenlocher, "Efficient Graph-Based Image
   Segmentation", IJCV 2004; OpenCV ximgproc). A plane's inverse depth is affine in the
   image (1/z = a u + b v + c), so each region gets the affine inverse depth that best
   fits its confident pixels (and those within ``border_px``, since a textureless
   panel's depth is carried by the seams around it) and, with a small weight, the
   rendered surface; iteratively reweighted least squares rejects outliers. A region's
   plane is kept where it agrees with the surface; it is *constrained* where its
   confident inliers spread in two directions.
3. **Again**: the constrained regions' planes join the confident pixels in a second
   surface, and the planes are fitted once more against it. Each round lets a wall that
   one frame pins down correct the frames that see only a seam of it.

Pixels in no kept plane take the rendered surface, and pixels the surface does not reach
keep the stage's previous fill. Measured on tartanair-hospital with its ground-truth
cameras (320 x 240): AbsRel 0.38 (edge-aware fill) -> 0.07 (see the README).

Conventions: OpenCV camera axes, c2w (4, 4) camera-to-world, z-depth in the cameras'
units, K (3, 3) in pixels of the maps, pixel centres at integer coordinates.
"""

from __future__ import annotations

import numpy as np

from flowmap.camera import unproject_pixels
from flowmap.errors import InputError

OPEN3D_HINT = "the dense stage's surface fill needs Open3D: pip install 'flowmap[dense]' (on Debian also apt-get install libusb-1.0-0)"


def open3d():
    """The ``open3d`` module. Raises InputError (install hint) where it cannot be imported."""
    try:
        import open3d as o3d  # noqa: PLC0415 (optional dependency, heavy import)
    except ImportError as exc:
        raise InputError(f"{OPEN3D_HINT} ({exc})") from None
    return o3d


def segment_frame(image: np.ndarray, sigma: float, k: float, min_size: int) -> np.ndarray:
    """Regions of similar colour (h, w) int32 labels 0..S-1 of one RGB uint8 frame (h, w, 3)
    (Felzenszwalb-Huttenlocher graph segmentation, OpenCV ximgproc; ``sigma``: Gaussian
    pre-smoothing, ``k``: scale of the merging threshold, larger = larger regions,
    ``min_size``: pixels a region has at least)."""
    import cv2

    seg = cv2.ximgproc.segmentation.createGraphSegmentation(sigma, k, min_size)
    return seg.processImage(np.ascontiguousarray(image[..., ::-1])).astype(np.int32)


def _neighbour_labels(labels: np.ndarray, border_px: int) -> list[np.ndarray]:
    """The labels of the pixels at most ``border_px`` away (a square window), edge-clamped,
    so that a pixel also counts for the regions next to it."""
    if border_px <= 0:
        return []
    h, w = labels.shape
    b = min(border_px, h - 1, w - 1)
    pad = np.pad(labels, b, mode="edge")
    return [pad[b + dy : b + dy + h, b + dx : b + dx + w] for dy in range(-b, b + 1) for dx in range(-b, b + 1) if dy or dx]


def _weighted_normal_equations(labels: np.ndarray, count: int, A: np.ndarray, y: np.ndarray, wts: np.ndarray):
    """Per region: sum w A A^T (S, 3, 3) and sum w A y (S, 3), A (P, 3), y (P,), w (P,)."""
    M = np.empty((count, 3, 3))
    b = np.empty((count, 3))
    for r in range(3):
        b[:, r] = np.bincount(labels, wts * A[:, r] * y, minlength=count)
        for c in range(r, 3):
            M[:, r, c] = M[:, c, r] = np.bincount(labels, wts * A[:, r] * A[:, c], minlength=count)
    return M, b


def fit_inverse_planes(
    labels: np.ndarray, count: int, u: np.ndarray, v: np.ndarray, inv_depth: np.ndarray, weight: np.ndarray,
    threshold: float, iterations: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Affine inverse depth 1/z = a u + b v + c per region, robustly.

    Iteratively reweighted least squares: a sample whose relative residual in inverse
    depth exceeds ``threshold`` has its weight divided by residual / threshold (Huber).

    Args:
        labels: (P,) region of each sample, 0..count-1.
        count: number of regions S.
        u, v: (P,) pixel coordinates of the samples.
        inv_depth: (P,) observed inverse depth (> 0).
        weight: (P,) prior weight of each sample (>= 0).
        threshold, iterations: see above.

    Returns:
        coef (S, 3) float64 (NaN rows for regions without enough samples) and the
        samples' final relative residuals (P,).
    """
    A = np.stack([u, v, np.ones_like(u)], axis=1).astype(np.float64)
    y = inv_depth.astype(np.float64)
    w = weight.astype(np.float64)
    coef = np.full((count, 3), np.nan)
    resid = np.zeros(len(y))
    for _ in range(max(iterations, 1)):
        M, b = _weighted_normal_equations(labels, count, A, y, w)
        ok = np.linalg.matrix_rank(M, tol=1e-9 * np.maximum(np.abs(M).max(axis=(1, 2)), 1e-300)) == 3
        coef[:] = np.nan
        if ok.any():
            coef[ok] = np.linalg.solve(M[ok], b[ok][..., None])[..., 0]
        pred = np.einsum("pk,pk->p", A, np.nan_to_num(coef[labels]))
        resid = np.abs(pred - y) / np.maximum(np.abs(y), 1e-12)
        w = weight / np.maximum(resid / threshold, 1.0)
    return coef, resid


def segment_planes(
    labels: np.ndarray,
    stereo: np.ndarray,
    confident: np.ndarray,
    surface: np.ndarray,
    surface_weight: float,
    border_px: int,
    threshold: float = 0.05,
    iterations: int = 5,
    max_off: float = 0.5,
    max_off_fraction: float = 0.1,
    min_spread: float = 0.15,
    min_inlier_fraction: float = 0.7,
    surface_step: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's depth from a plane per region (see the module docs).

    Args:
        labels: (h, w) int regions (:func:`segment_frame`).
        stereo: (h, w) stereo z-depth (used where ``confident``).
        confident: (h, w) bool.
        surface: (h, w) rendered surface z-depth (0: none).
        surface_weight: weight of a surface pixel against a confident one (1).
        border_px: confident pixels this close to a region count for it too.
        threshold, iterations: the robust fit (:func:`fit_inverse_planes`).
        max_off, max_off_fraction: a plane is dropped where more than
            ``max_off_fraction`` of its region's surface pixels differ from the surface
            by more than ``max_off`` (relative), or where its depth is not positive.
        min_spread: a kept plane is *constrained* when the standard deviation of its
            confident inliers along their minor axis is at least ``min_spread`` times
            the square root of the region's area (they span two directions).
        min_inlier_fraction: a plane is dropped where fewer of its region's confident
            samples than this fraction are within ``threshold`` of it (not a plane).
        surface_step: the fit takes every ``surface_step``-th surface pixel per axis
            (weighted ``surface_step``^2 times more).

    Returns:
        depth (h, w) float32 (0 where no plane is kept), kept (h, w) bool, constrained
        (h, w) bool.
    """
    h, w = labels.shape
    count = int(labels.max()) + 1
    vv, uu = np.mgrid[0:h, 0:w]
    conf = confident & np.isfinite(stereo) & (stereo > 0)
    has_surface = surface > 0
    # samples: confident pixels for their own region and the regions next to them (each region once) ...
    near = np.stack([labels] + _neighbour_labels(labels, border_px))[:, conf]  # (L, P)
    near.sort(axis=0)
    first = np.ones(near.shape, bool)
    first[1:] = near[1:] != near[:-1]
    which = np.broadcast_to(np.arange(near.shape[1]), near.shape)[first]
    n_conf = len(which)
    # ... and every ``surface_step``-th surface pixel per axis for its own, weighted for the ones left out
    sampled = has_surface.copy()
    sampled[1::surface_step] = False
    sampled[:, 1::surface_step] = False
    lab_all = np.concatenate([near[first], labels[sampled]])
    u_all = np.concatenate([uu[conf][which], uu[sampled]]).astype(np.float64)
    v_all = np.concatenate([vv[conf][which], vv[sampled]]).astype(np.float64)
    inv_all = np.concatenate([1.0 / stereo[conf][which], 1.0 / surface[sampled]])
    wt_all = np.concatenate([np.ones(n_conf), np.full(int(sampled.sum()), surface_weight * surface_step**2)])
    coef, resid = fit_inverse_planes(lab_all, count, u_all, v_all, inv_all, wt_all, threshold, iterations)

    inv = np.einsum("hwk,hwk->hw", np.stack([uu, vv, np.ones_like(uu)], -1).astype(np.float64), np.nan_to_num(coef[labels]))
    valid_region = np.isfinite(coef).all(axis=1)
    nonpositive = np.bincount(labels.ravel(), (inv <= 0).ravel(), minlength=count) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(inv > 0, 1.0 / inv, 0.0)
        rel = np.where(has_surface, np.abs(depth - surface) / np.where(has_surface, surface, 1.0), np.inf)
    area = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
    with_surface = np.bincount(labels.ravel(), has_surface.ravel(), minlength=count)
    far_off = np.bincount(labels.ravel(), (has_surface & (rel > max_off)).ravel(), minlength=count) / np.maximum(with_surface, 1)
    # a region whose confident samples the plane does not fit (a curved or textured object) keeps the surface
    c_lab = lab_all[:n_conf]
    inl = resid[:n_conf] < threshold
    m0 = np.bincount(c_lab, inl, minlength=count)  # confident inliers per region
    planar = m0 >= min_inlier_fraction * np.bincount(c_lab, minlength=count)
    keep_region = valid_region & ~nonpositive & (far_off <= max_off_fraction) & planar
    # constrained: confident inliers spread in two directions
    li, ui, vi = c_lab[inl], u_all[:n_conf][inl], v_all[:n_conf][inl]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu, mv = np.bincount(li, ui, count) / m0, np.bincount(li, vi, count) / m0
        cuu = np.bincount(li, ui * ui, count) / m0 - mu**2
        cvv = np.bincount(li, vi * vi, count) / m0 - mv**2
        cuv = np.bincount(li, ui * vi, count) / m0 - mu * mv
    minor = 0.5 * (cuu + cvv) - np.sqrt(np.maximum(0.25 * (cuu - cvv) ** 2 + cuv**2, 0.0))
    spread = np.sqrt(np.maximum(np.nan_to_num(minor), 0.0))
    constrained_region = keep_region & (m0 >= 20) & (spread >= min_spread * np.sqrt(area))
    kept = keep_region[labels]
    return np.where(kept, depth, 0.0).astype(np.float32), kept, constrained_region[labels]


def lifted_points(
    depth: np.ndarray, use: np.ndarray, K: np.ndarray, c2w: np.ndarray, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """World points (P, 3) of the pixels ``use`` of every frame (depth, use: (N, h, w);
    every ``stride``-th pixel per axis) and the centre (P, 3) of the camera that saw each."""
    n, h, w = depth.shape
    vv, uu = np.mgrid[0:h:stride, 0:w:stride]
    pts, centres = [], []
    for i in range(n):
        m = use[i, ::stride, ::stride] & np.isfinite(depth[i, ::stride, ::stride]) & (depth[i, ::stride, ::stride] > 0)
        xyz = unproject_pixels(uu[m], vv[m], depth[i, ::stride, ::stride][m], K, c2w[i])
        pts.append(xyz)
        centres.append(np.broadcast_to(c2w[i, :3, 3], xyz.shape))
    return np.concatenate(pts), np.concatenate(centres)


def poisson_surface(points: np.ndarray, centres: np.ndarray, octree_depth: int, trim: float, threads: int = 1):
    """A watertight surface (Open3D TriangleMesh) through oriented points.

    Args:
        points: (P, 3) world points.
        centres: (P, 3) the centre of the camera that saw each point (normals, estimated
            from the 30 nearest points, are turned towards it; points far from their 20
            nearest are dropped first).
        octree_depth: depth of Poisson's octree (9: 512 cells across the scene).
        trim: the fraction of vertices with the least point support removed (their
            surface is extrapolated, not observed).
        threads: Poisson's threads.

    Raises:
        InputError: Open3D is missing, or fewer than 100 points.
    """
    o3d = open3d()
    if len(points) < 100:
        raise InputError(f"a surface needs at least 100 confident points, got {len(points)}")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    pcd, kept = pcd.remove_statistical_outlier(20, 2.0)
    centres = np.asarray(centres)[np.asarray(kept, int)]
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(30))
    normals = np.asarray(pcd.normals)
    away = np.sum(normals * (centres - np.asarray(pcd.points)), axis=1) < 0
    normals[away] *= -1
    pcd.normals = o3d.utility.Vector3dVector(normals)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):  # no "bad average roots" lines for the user
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=octree_depth, n_threads=threads)
    density = np.asarray(density)
    if trim > 0 and len(density):
        mesh.remove_vertices_by_mask(density < np.quantile(density, trim))
    return mesh


def render_depth(mesh, c2w: np.ndarray, K: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """z-depth (N, h, w) float32 of a mesh seen by cameras c2w (N, 4, 4) with K (3, 3)
    in pixels of an (h, w) image (ray casting, Open3D; 0 where a ray misses)."""
    o3d = open3d()
    h, w = shape
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    out = np.zeros((len(c2w), h, w), np.float32)
    for i, pose in enumerate(c2w):
        w2c = np.linalg.inv(pose)
        rays = scene.create_rays_pinhole(o3d.core.Tensor(K), o3d.core.Tensor(w2c), w, h)
        t = scene.cast_rays(rays)["t_hit"].numpy()
        z_per_t = (rays.numpy()[..., 3:] @ w2c[:3, :3].T)[..., 2]  # a ray's z per unit of t
        out[i] = np.where(np.isfinite(t), t * z_per_t, 0.0)
    return out


def surface_fill(
    depth: np.ndarray,
    confident: np.ndarray,
    images: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    config,
    usable: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every frame's depth from the video's surface and per-region planes (module docs).

    Args:
        depth: (N, h, w) the stage's depth so far: stereo where ``confident``, the
            previous fill elsewhere (kept where the surface does not reach).
        confident: (N, h, w) bool.
        images: (N, h, w, 3) uint8 RGB at the same resolution.
        K: (3, 3) intrinsics in pixels of the maps.
        c2w: (N, 4, 4) fixed cameras.
        config: :class:`flowmap.dense.config.DenseConfig` (its ``surface_*`` and
            ``segment_*`` settings).
        usable: (N,) bool, posed frames (others are left as they are).

    Returns:
        depth (N, h, w) float32; where each pixel's depth comes from (N, h, w) uint8: 0
        ``depth`` (confident stereo, and unposed frames), 1 the surface, 2 a plane (also
        confident pixels more than ``surface_outlier`` off both their region's plane and
        the surface), 3 the nearest pixel of those (where the surface does not reach);
        statistics (seconds, points, fractions).

    Raises:
        InputError: Open3D is missing or too few confident pixels.
    """
    import time

    import torch

    t0 = time.perf_counter()
    threads = max(1, torch.get_num_threads())
    n, h, w = depth.shape
    usable = np.ones(n, bool) if usable is None else np.asarray(usable, bool)
    conf = confident & usable[:, None, None]
    labels = [segment_frame(images[i], config.segment_sigma, config.segment_k, config.segment_min_px) for i in range(n)]
    out = np.array(depth, np.float32, copy=True)
    source = np.zeros(depth.shape, np.uint8)
    use = conf
    stats: dict = {"rounds": config.surface_rounds}
    for r in range(config.surface_rounds):
        pts, centres = lifted_points(np.where(conf, depth, out), use, K, c2w, config.surface_stride)
        mesh = poisson_surface(pts, centres, config.surface_octree_depth, config.surface_trim, threads)
        rendered = render_depth(mesh, c2w, K, (h, w))
        constrained = np.zeros_like(conf)
        planes = np.zeros_like(out)
        for i in np.flatnonzero(usable):
            planes[i], _, constrained[i] = segment_planes(
                labels[i], depth[i], conf[i], rendered[i], config.surface_weight, config.segment_border_px
            )
        source = np.where(planes > 0, 2, np.where(rendered > 0, 1, 0))
        # stereo outliers: off both their region's plane and the surface
        off_plane = conf & (planes > 0) & (np.abs(depth - planes) > config.surface_outlier * planes)
        off_plane &= (rendered > 0) & (np.abs(depth - rendered) > config.surface_outlier * rendered)
        source = np.where(usable[:, None, None] & (~conf | off_plane), source, 0).astype(np.uint8)
        out = np.choose(source, [depth, rendered, planes])
        use = conf | constrained
        stats[f"round{r}_points"] = int(len(pts))
        stats[f"round{r}_constrained_fraction"] = float(constrained[usable].mean()) if usable.any() else 0.0
        stats[f"round{r}_plane_fraction"] = float((planes[usable] > 0).mean()) if usable.any() else 0.0
        stats[f"round{r}_surface_fraction"] = float((rendered[usable] > 0).mean()) if usable.any() else 0.0
    holes = usable[:, None, None] & ~conf & (source == 0)
    for i in np.flatnonzero(holes.reshape(n, -1).any(axis=1)):
        out[i] = nearest_filled(out[i], ~holes[i])
    source[holes] = 3
    stats["seconds"] = time.perf_counter() - t0
    return out.astype(np.float32), source, stats


def nearest_filled(depth: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """``depth`` (h, w) with every pixel outside ``filled`` (h, w bool) given the value of
    the nearest filled pixel (Euclidean, OpenCV's distance transform); unchanged where
    nothing is filled."""
    import cv2

    if not filled.any() or filled.all():
        return depth
    _, nearest = cv2.distanceTransformWithLabels((~filled).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    values = np.zeros(int(nearest.max()) + 1, depth.dtype)
    values[nearest[filled]] = depth[filled]
    return np.where(filled, depth, values[nearest])
