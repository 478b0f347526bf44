"""Typed values passed between pipeline stages.

Frames -> Correspondences -> Solution -> Reconstruction (see :func:`flowmap.pipeline.run`).
Arrays at stage boundaries are NumPy; the model works in torch internally.

Conventions used everywhere in flowmap:

* Camera axes are OpenCV's: x right, y down, z forward.
* ``c2w`` is a 4x4 camera-to-world matrix, ``w2c`` its inverse.
* ``depth`` is z-depth (distance along the optical axis), not ray length.
* Normalised image coordinates ``xy`` lie in [0, 1] x [0, 1]: (0, 0) is the top-left
  corner of the top-left pixel, (1, 1) the bottom-right corner of the bottom-right
  pixel, so the centre of pixel column ``i`` of an image ``W`` pixels wide is at
  ``x = (i + 0.5) / W``.
* Pixel coordinates follow OpenCV/COLMAP-txt: the centre of pixel column ``i`` is at
  ``u = i``, so ``u = x * W - 0.5``. Intrinsics in pixels (``K``) use this convention;
  normalised intrinsics divide the first row by ``W`` and the second by ``H`` after
  adding 0.5 to the principal point.
* ``flow`` is a displacement (dx, dy) in normalised coordinates from a pixel of the
  source frame to its match in the target frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from flowmap.camera import K_at


@dataclass(frozen=True)
class Frames:
    """Decoded input frames.

    Attributes:
        images: (N, H, W, 3) uint8 RGB frames at the input resolution.
        names: N output image names (``000000.jpg`` ...), the names used in
            ``poses.txt`` and in the COLMAP model.
        source: the video file or image folder the frames came from.
        source_indices: N indices of the frames in the source (after stride).
        fps: frames per second of a video source, None for an image folder.
    """

    images: np.ndarray
    names: list[str]
    source: Path
    source_indices: list[int]
    fps: float | None = None

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    def subset(self, keep: np.ndarray) -> "Frames":
        """The frames at the sorted indices ``keep`` (names and source indices with them)."""
        keep = np.asarray(keep, dtype=np.int64)
        return replace(
            self, images=self.images[keep], names=[self.names[k] for k in keep], source_indices=[self.source_indices[k] for k in keep]
        )

    @property
    def width(self) -> int:
        return int(self.images.shape[2])


@dataclass(frozen=True)
class Bridges:
    """Frame pairs across cuts, with sparse matches (see :mod:`flowmap.correspondences.bridges`).

    A cut is a consecutive pair (c, c+1) with almost no valid flow; its bridge is the
    pair of frames a <= c < b that shares the most verified sparse matches.

    Attributes:
        pairs: (B, 3) int64 rows (cut, a, b).
        xy: (B, K, 4) float32 normalised matches (x_a, y_a, x_b, y_b), zero-padded.
        valid: (B, K) bool, True for real (not padding) matches.
    """

    pairs: np.ndarray
    xy: np.ndarray
    valid: np.ndarray

    @staticmethod
    def none(max_matches: int = 0) -> Bridges:
        """No bridge (B = 0)."""
        return Bridges(
            np.zeros((0, 3), np.int64), np.zeros((0, max_matches, 4), np.float32), np.zeros((0, max_matches), bool)
        )

    def __len__(self) -> int:
        return int(self.pairs.shape[0])


@dataclass(frozen=True)
class Correspondences:
    """Flow and tracks at the working resolution, all coordinates normalised [0, 1].

    Attributes:
        flow_fwd: (N-1, h, w, 2) float32 flow from frame i to frame i+1, sampled at
            the pixel centres of frame i.
        flow_bwd: (N-1, h, w, 2) float32 flow from frame i+1 to frame i, sampled at
            the pixel centres of frame i+1.
        mask_fwd: (N-1, h, w) float32 validity in [0, 1] of ``flow_fwd``.
        mask_bwd: (N-1, h, w) float32 validity in [0, 1] of ``flow_bwd``.
        tracks_xy: (M, N, 2) float32 normalised position of track m in every frame
            (undefined where not visible).
        tracks_visible: (M, N) bool, True where track m is visible and tracked in
            that frame.
        tracks_query: (M,) int64 frame index in which track m was seeded.
        bridges: frame pairs across cuts and their sparse matches (:class:`Bridges`).
    """

    flow_fwd: np.ndarray
    flow_bwd: np.ndarray
    mask_fwd: np.ndarray
    mask_bwd: np.ndarray
    tracks_xy: np.ndarray
    tracks_visible: np.ndarray
    tracks_query: np.ndarray
    bridges: Bridges = field(default_factory=lambda: Bridges.none())

    @property
    def n_frames(self) -> int:
        return int(self.flow_fwd.shape[0] + 1)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.flow_fwd.shape[1]), int(self.flow_fwd.shape[2])


@dataclass(frozen=True)
class Solution:
    """The final solve over all frames (:func:`flowmap.solve.solve`): FlowMap's cameras.

    Attributes:
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV axes, frame 0 = identity,
            arbitrary global scale (the same as ``depth``), bridges over cuts applied.
        K: (3, 3) float64 intrinsics in pixels of the input frames (OpenCV pixel
            centres), shared by all frames.
        depth: (N, h, w) float32 z-depth at the working resolution (far sides of
            bridged cuts rescaled to the near side).
        weights: (N-1, h, w) float32 correspondence weights of pair (i, i+1), on the
            pixels of frame i+1.
        image_size: (H, W) of the input frames (the pixels of ``K``).
        losses: flow and track losses over the whole video at this solution.
    """

    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    weights: np.ndarray
    image_size: tuple[int, int]
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.c2w.shape[0])


@dataclass(frozen=True)
class FrameScan:
    """The cheap pass over every selected frame that chooses the keyframes
    (:func:`flowmap.frames.scan_frames`, :mod:`flowmap.keyframes`).

    Attributes:
        names: M names of the frames selected by stride / max_frames.
        source_indices: their M indices in the source.
        gray: (M, h, w) uint8 grayscale at the working resolution (for posing the
            frames that are not keyframes, :mod:`flowmap.register`).
        motion: (M-1,) float32 median flow magnitude between consecutive frames, in
            fractions of the image width.
        keys: (K,) int64 sorted positions of the keyframes among the M frames.
    """

    names: list[str]
    source_indices: list[int]
    gray: np.ndarray
    motion: np.ndarray
    keys: np.ndarray

    @property
    def n(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class NonKeyframes:
    """Poses of the selected frames that were not keyframes (:mod:`flowmap.register`).

    Attributes:
        names: M image names (the names the frames would have had as keyframes).
        source_indices: M indices of the frames in the source (video frame number or
            position in the folder).
        positions: (M,) int64 positions among the frames selected by stride / max_frames.
        c2w: (M, 4, 4) float64 camera-to-world, OpenCV axes, the keyframes' world and
            scale; identity (a placeholder, never written) where not registered.
        registered: (M,) bool, True where the pose was measured.
        inliers: (M,) int64 RANSAC inliers of the absolute pose (0: none estimated).
    """

    names: list[str]
    source_indices: list[int]
    positions: np.ndarray
    c2w: np.ndarray
    registered: np.ndarray
    inliers: np.ndarray

    @property
    def n(self) -> int:
        return len(self.names)

    def posed(self) -> "NonKeyframes":
        """Only the registered frames."""
        keep = np.flatnonzero(self.registered)
        return NonKeyframes(
            names=[self.names[k] for k in keep],
            source_indices=[self.source_indices[k] for k in keep],
            positions=self.positions[keep],
            c2w=self.c2w[keep],
            registered=self.registered[keep],
            inliers=self.inliers[keep],
        )


@dataclass(frozen=True)
class DenseDepth:
    """Multi-view depth with the refined cameras fixed (:func:`flowmap.dense.dense_depth`).

    Attributes:
        depth: (N, h, w) float32 z-depth at the dense resolution (cameras' units; 0: none).
        confidence: (N, h, w) float32 in [0, 1] of the triangulated depth (pixels below
            the stage's ``min_confidence`` hold the fill instead).
        images: (N, h, w, 3) uint8 frames at the dense resolution.
        points_xyz: (P, 3) float64 fused world points of the confident pixels.
        points_rgb: (P, 3) uint8 their colours.
        fill: N names of the fill chosen per frame ("network" or "smooth").
        stats: seconds, resolution, confident fraction ... for summary.json.
    """

    depth: np.ndarray
    confidence: np.ndarray
    images: np.ndarray
    points_xyz: np.ndarray
    points_rgb: np.ndarray
    fill: list[str]
    stats: dict = field(default_factory=dict)

    def subset(self, keep: np.ndarray) -> "DenseDepth":
        """The maps of frames ``keep`` (the fused points stay whole)."""
        return replace(
            self, depth=self.depth[keep], confidence=self.confidence[keep], images=self.images[keep],
            fill=[self.fill[k] for k in keep],
        )


@dataclass(frozen=True)
class Reconstruction:
    """The result of a flowmap run.

    Attributes:
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV axes, frame 0 = identity,
            arbitrary global scale (the same as ``depth``).
        K: (3, 3) float64 intrinsics in pixels of the input frames (OpenCV pixel
            centres), shared by all frames.
        depth: (N, h, w) float32 z-depth at the working resolution.
        weights: (N-1, h, w) float32 correspondence weights in [0, 1] of the pair
            (i, i+1), on the pixels of frame i+1 (the ones Procrustes uses).
        names: N image names.
        image_size: (H, W) of the input frames.
        images: (N, h, w, 3) uint8 frames at the working resolution (for colours).
        losses: final loss terms by name.
        history: per logged step: {"step", "loss", "flow", "tracks", "focal"} ...
        timings: seconds per stage.
        settings: the run configuration as plain data.
        warnings: human-readable warnings about the input or the result.
        flowmap_c2w: (N, 4, 4) FlowMap's cameras before the global refinement (the
            :class:`Solution`'s), same frame and scale as ``c2w``; None without one.
        flowmap_K: (3, 3) FlowMap's intrinsics before the refinement; None without one.
        refinement: what the refinement stage measured (:mod:`flowmap.refine`: pairs,
            tracks, observations, reprojection error and focal before/after, rounds,
            termination, seconds, ``applied``); empty without one.
        registered: (N,) bool, False for frames that could not be registered (their
            ``c2w`` is an unmeasured placeholder; the outputs leave them out, see
            :meth:`posed`); None: every frame is posed.
        keyframes: N indices of the frames in the source (``Frames.source_indices`` of
            the reconstructed frames, the keyframes); empty: not recorded.
        others: the selected frames that were not keyframes, posed afterwards against
            the refined keyframes (:class:`NonKeyframes`); None: every frame was a keyframe.
        dense: the dense depth stage's maps and fused points (:class:`DenseDepth`,
            written instead of ``depth``); None: the stage did not run.
    """

    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    weights: np.ndarray
    names: list[str]
    image_size: tuple[int, int]
    images: np.ndarray
    losses: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    flowmap_c2w: np.ndarray | None = None
    flowmap_K: np.ndarray | None = None
    refinement: dict = field(default_factory=dict)
    registered: np.ndarray | None = None
    keyframes: list[int] = field(default_factory=list)
    others: NonKeyframes | None = None
    dense: DenseDepth | None = None

    @property
    def n(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def posed_mask(self) -> np.ndarray:
        """(N,) bool: the frames with a measured pose."""
        return np.ones(self.n, bool) if self.registered is None else np.asarray(self.registered, bool)

    def posed(self) -> "Reconstruction":
        """This reconstruction restricted to its posed frames (itself when all are).

        The weights of a kept frame stay the ones on its own pixels (its pair with the
        frame before it in the input), so that ``weights[j - 1]`` still belongs to kept
        frame ``j``.
        """
        keep = np.flatnonzero(self.posed_mask)
        if len(keep) == self.n:
            return self
        weights = self.weights
        if weights is not None:
            weights = weights[keep[1:] - 1]  # keep is sorted, so keep[1:] >= 1
        return replace(
            self,
            c2w=self.c2w[keep],
            depth=self.depth[keep],
            weights=weights,
            names=[self.names[k] for k in keep],
            images=self.images[keep],
            flowmap_c2w=None if self.flowmap_c2w is None else self.flowmap_c2w[keep],
            registered=None,
            keyframes=[self.keyframes[k] for k in keep] if self.keyframes else [],
            dense=None if self.dense is None else self.dense.subset(keep),
        )

    @property
    def working_size(self) -> tuple[int, int]:
        return int(self.depth.shape[1]), int(self.depth.shape[2])

    def K_at(self, height: int, width: int) -> np.ndarray:
        """Intrinsics (3, 3) rescaled to an image of ``height`` x ``width`` pixels
        (:func:`flowmap.camera.K_at`: pixel centres stay pixel centres)."""
        return K_at(self.K, self.image_size, (height, width))
