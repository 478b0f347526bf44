"""Settings of the dense depth stage (:func:`flowmap.dense.dense_depth`)."""

from __future__ import annotations

from dataclasses import dataclass

from flowmap.correspondences.flow import DIS_PRESETS

METHODS = ("sweep", "flow")
FILLS = ("auto", "network", "smooth", "none")


@dataclass(frozen=True)
class DenseConfig:
    """Multi-view depth with the refined cameras held fixed (issue 26).

    Resolution and neighbours:
        enabled: run the stage after the refinement (False: the written depth is the
            network's, corrected to the adjusted points, at the working resolution).
            Off by default (``--depth-scale 0.5`` turns it on): it costs 0.42-0.45 s per
            frame at 320 x 240 on long videos and up to 1 s on short ones (the surface's
            fixed cost), against issue 26's 0.3 s, and more than the rest of a fox run.
        scale: output resolution relative to the input frames (0.5: 320 x 240 for
            640 x 480 input; 1.0: full resolution).
        neighbours: neighbours per frame whose flow is triangulated (2-4 sensible).
        window: neighbours are searched within +-``window`` frames (keeps the cost
            linear in the number of frames).
        target_angle_deg: preferred parallax, the angle the baseline subtends at the
            frame's median scene depth (larger: better conditioned, less overlap).
        min_angle_deg: candidates below this parallax are not used.
        min_overlap: fraction of the frame's (base-depth) points a neighbour must see.

    Matching:
        method: "sweep" (plane sweep with ZNCC over the neighbours,
            :mod:`flowmap.dense.sweep`) or "flow" (DIS flow to each neighbour,
            triangulated, :mod:`flowmap.dense.triangulate`).
        planes: planes of the sweep, evenly spaced in inverse depth between the
            fill's 2nd percentile times ``near_factor`` and its 98th times ``far_factor``.
        near_factor, far_factor: see ``planes`` (the fill can be far off where the
            network's depth is).
        window_px: ZNCC window side (odd), pixels at the output resolution.
        min_texture: pixels whose window's grey-level standard deviation is lower get
            confidence 0 (sweep).

    Flow and triangulation (:mod:`flowmap.dense.triangulate`, method "flow"):
        dis_preset: OpenCV DIS preset of the flow at the output resolution.
        fb_tol_px: forward-backward flow consistency bound, pixels at the output
            resolution.
        epi_tol_px: largest distance of a flow target from its epipolar line, pixels.
        flow_sigma_px: flow noise (pixels) on well-textured pixels.
        image_noise: image noise in grey levels; with the gradient along the epipolar
            line it adds the flow noise of weak texture (see :func:`flowmap.dense.frame_depth`).
        min_parallax_px: estimates with less parallax (flow minus the flow a point at
            infinity would have) are not used.

    Fusion and confidence (:mod:`flowmap.dense.fuse`):
        agree_tol: relative depth difference within which two neighbours' estimates agree.
        max_rel_err: expected relative error at which the confidence reaches 0.
        min_confidence: pixels below it take the fill (and stay out of ``points.ply``).
        min_confident_fraction: a frame with a smaller fraction of confident pixels
            keeps the fill only (isolated matches are more often wrong than right).
        max_point_disagreement: a frame whose matched depth (confidence > 0) differs
            from the adjusted points it observes by more than this (median relative
            difference, at least 10 points) keeps the fill only (its cameras do not
            support stereo).

    Fill (:mod:`flowmap.dense.fill`):
        fill: "auto" (per frame, the network's depth or a smooth field through the
            adjusted points, whichever predicts held-out points better), "network",
            "smooth", or "none" (unconfident pixels get depth 0 = no depth).
        max_seeds: the fill of a frame is refitted (the smooth field of
            :func:`flowmap.refine.depth.fit_correction`) to its adjusted points and up
            to this many of its confident pixels.
        propagate: spread the confident pixels' depth edge-aware into the rest of the
            frame (:func:`flowmap.dense.fill.propagate`, normalised edge-aware
            smoothing), the fill weighted ``base_weight`` against them.
        smooth_lambda, smooth_sigma: strength and colour bandwidth (grey levels) of
            that smoothing (OpenCV's Fast Global Smoother).

    Surface fill (:mod:`flowmap.dense.surface`; needs Open3D, ``flowmap[dense]``):
        surface: replace the fill by the video's surface and per-region planes where
            they reach (confident pixels keep their stereo depth), if the result agrees
            with the adjusted points at least as well as the per-frame fill
            (:func:`flowmap.dense.points_error`).
        surface_min_confident: the fill is used only when at least this fraction of
            the posed frames' pixels is confident (a rotation-dominant video has almost
            none, and a surface through them would be worse than the fill).
        surface_rounds: surface -> planes rounds (the constrained planes of one round
            join the confident pixels in the next round's surface).
        surface_stride: every ``surface_stride``-th pixel per axis enters the surface.
        surface_octree_depth: Poisson's octree depth (10: 1024 cells across the scene).
        surface_trim: fraction of the surface's least-supported vertices removed.
        surface_weight: weight of a rendered-surface pixel against a confident one in a
            region's plane fit.
        surface_outlier: a confident pixel whose stereo depth is further than this
            (relative) from both its region's kept plane and the surface takes the plane.
        segment_sigma, segment_k, segment_min_px: the image regions (Felzenszwalb-
            Huttenlocher: pre-smoothing, merging scale, smallest region in pixels).
        segment_border_px: confident pixels this close to a region count for its plane.

    Point cloud (:func:`flowmap.dense.fuse.fused_points`):
        ply_tol: a confident pixel whose point an earlier frame (within ``window``)
            already holds within this relative depth is not written again.
        ply_stride: every ``ply_stride``-th pixel per axis enters the cloud.
    """

    enabled: bool = False
    scale: float = 0.5
    neighbours: int = 2
    window: int = 12
    target_angle_deg: float = 6.0
    min_angle_deg: float = 0.5
    min_overlap: float = 0.6
    method: str = "sweep"
    planes: int = 48
    near_factor: float = 0.5
    far_factor: float = 2.0
    window_px: int = 7
    min_texture: float = 2.0
    dis_preset: str = "medium"
    fb_tol_px: float = 1.0
    epi_tol_px: float = 1.0
    flow_sigma_px: float = 0.5
    image_noise: float = 2.0
    min_parallax_px: float = 2.0
    agree_tol: float = 0.05
    max_rel_err: float = 0.1
    min_confidence: float = 0.5
    min_confident_fraction: float = 0.01
    max_point_disagreement: float = 0.05
    fill: str = "auto"
    max_seeds: int = 2000
    propagate: bool = True
    base_weight: float = 0.02
    smooth_lambda: float = 2000.0
    smooth_sigma: float = 8.0
    ply_tol: float = 0.03
    ply_stride: int = 1
    surface: bool = True
    surface_min_confident: float = 0.02
    surface_rounds: int = 2
    surface_stride: int = 2
    surface_octree_depth: int = 10
    surface_trim: float = 0.02
    surface_weight: float = 0.01
    surface_outlier: float = 0.1
    segment_sigma: float = 0.8
    segment_k: float = 300.0
    segment_min_px: int = 100
    segment_border_px: int = 2

    def __post_init__(self) -> None:
        if not 0.05 <= self.scale <= 1.0:
            raise ValueError(f"dense scale must be in [0.05, 1], got {self.scale}")
        if self.neighbours < 1 or self.window < 1 or self.ply_stride < 1:
            raise ValueError("dense neighbours, window and ply_stride must be >= 1")
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(f"dense dis_preset must be one of {', '.join(DIS_PRESETS)}, got {self.dis_preset!r}")
        if self.method not in METHODS:
            raise ValueError(f"dense method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.planes < 3 or self.window_px < 3 or self.window_px % 2 == 0:
            raise ValueError(f"dense planes must be >= 3 and window_px odd >= 3, got {self.planes} and {self.window_px}")
        if self.surface_rounds < 1 or self.surface_stride < 1 or not 5 <= self.surface_octree_depth <= 12:
            raise ValueError(
                f"dense surface_rounds and surface_stride must be >= 1 and surface_octree_depth in [5, 12], got "
                f"{self.surface_rounds}, {self.surface_stride}, {self.surface_octree_depth}"
            )
        if self.fill not in FILLS:
            raise ValueError(f"dense fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
