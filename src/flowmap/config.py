"""The run's configuration: :class:`RunConfig`, and :class:`TrainConfig` for ``flowmap train``.

:mod:`flowmap.validate`, the stages and :mod:`flowmap.pipeline` import it; it imports
only the stage configs that live with their stage (``CorrespondenceConfig``,
``OptimConfig``, ``RefineConfig``, ``FinetuneConfig``, ``CheckConfig``), from modules
that import neither this module nor :mod:`flowmap.validate`. The configs of the stages
whose modules do (:class:`FrameConfig`, :class:`MemoryConfig`, :class:`OutputConfig`,
:class:`TrainConfig`) live here and are re-exported where they lived. So imports only go
downward: ``tests/test_imports.py`` checks that the package has no import cycle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from flowmap.checks import CheckConfig
from flowmap.correspondences import CorrespondenceConfig
from flowmap.dense.config import DenseConfig
from flowmap.finetune import FinetuneConfig
from flowmap.optimize import OptimConfig
from flowmap.refine.config import RefineConfig
from flowmap.register import RegisterConfig

__all__ = ["FrameConfig", "KeyframeConfig", "MemoryConfig", "OutputConfig", "RunConfig", "TrainConfig"]


@dataclass
class FrameConfig:
    """Which frames to use and the working resolution of the optimisation.

    Attributes:
        max_frames: keep at most this many frames (after ``stride``); None keeps all.
        stride: keep every ``stride``-th frame of the source (1 keeps all).
        pixel_budget: target number of pixels h * w of the working resolution
            (43200 = 180 x 240, the resolution of the FlowMap reference, METHOD.md 3.1).
        multiple: the working height and width are multiples of this (16 suits the
            depth CNN's downsampling).
    """

    max_frames: int | None = None
    stride: int = 1
    pixel_budget: int = 43200
    multiple: int = 16


@dataclass
class KeyframeConfig:
    """Which of the selected frames are reconstructed (keyframes); the others are posed
    afterwards against the refined keyframes (:mod:`flowmap.register`).

    Selection happens after ``stride`` / ``max_frames`` (:class:`FrameConfig`), on the
    motion between consecutive frames measured on a cheap low-resolution pass
    (:mod:`flowmap.keyframes`).

    Attributes:
        target: "auto" (the default: every frame of an input of at most ``auto_all_max``
            frames, else ``auto_target`` keyframes chosen by motion; fewer in both cases
            when the motion holds fewer steps of ``auto_min_step``), "all" (every
            frame is a keyframe, the behaviour before issue 25), or a number of
            keyframes (at least 3; the input's frames when it has fewer).
        auto_all_max: "auto" keeps every frame of inputs up to this many frames (every
            shared sequence, 11-229 frames: their runs already take less time than
            COLMAP's, README "Keyframes") unless their motion holds fewer steps of
            ``auto_min_step``: tabletop-slide.mp4's first 200 frames (a slow 1080p
            slide) took 486 s with all 200 frames, a static-camera warning and a focal of
            1549 px. The shared sequences' motion holds 59-1047 such steps, more than
            their 11-229 frames, so they keep every frame (scanning them costs
            0.03-0.37 s).
        auto_target: the keyframe count "auto" aims at for longer inputs.
        auto_min_step: "auto" never chooses more keyframes than the motion holds steps
            of this fraction of the width (accumulated motion / ``auto_min_step`` + 1,
            at most ``auto_target``): a slow clip gets fewer, farther keyframes. 0.01:
            tabletop-slide.mp4 (243 frames of 1080p, a slow slide accumulating 17.6 %
            of the width) got 100 keyframes 0.18 % apart before, a static-camera warning,
            a refinement that lost its observations (28,380 -> 47) and was rejected,
            108 s; with 19 keyframes (1 % apart) 25 s, refinement applied (0.37 px), every
            frame posed. room-walkin (3.35 widths) keeps 100; every shared sequence
            holds more than 1 % a frame (and keeps every frame anyway).
        thumb_width: width in pixels of the grayscale thumbnails whose DIS flow
            measures the motion.
        max_step: the most motion between consecutive keyframes, as a fraction of the
            image width (median flow magnitude accumulated over the frames between
            them), so that consecutive keyframes keep most of their view in common for
            FlowMap's chain and the refinement's matching; more keyframes are added
            where a target would exceed it. 0.25 leaves ``--keyframes 60`` at 60 on
            tum-rpy-long (0.15 would add 48: its roll-pitch-yaw shaking accumulates
            4.6 % of the width per frame) and never binds at 100 on room-walkin.
    """

    target: int | str = "auto"
    auto_all_max: int = 240
    auto_target: int = 100
    auto_min_step: float = 0.01
    thumb_width: int = 160
    max_step: float = 0.25


@dataclass
class MemoryConfig:
    """Attributes:
        check: refuse runs whose estimated peak memory exceeds the available memory.
        margin: the estimate is multiplied by this before the comparison (the linear
            model of :class:`~flowmap.memory.MemoryModel` underestimates by up to 10 %).
    """

    check: bool = True
    margin: float = 1.15


@dataclass
class OutputConfig:
    """What the output stage writes.

    Attributes:
        colmap: write the COLMAP model ``OUT/colmap`` (images + sparse/0).
        colmap_text: also write the COLMAP model as ``.txt``.
        transforms: write nerfstudio's ``OUT/transforms.json`` and 16-bit depth PNGs.
        ply: write the point cloud ``OUT/points.ply``.
        report: write the report (``flowmap.outputs.report.write_report``).
        gt_dir: a ground-truth folder (shared data layout: ``poses.txt``,
            ``intrinsics.json``) whose Sim(3)-aligned trajectory and metrics the report
            shows; None: none.
        max_points: the most points in ``points.ply``.
        colmap_max_points: the most points3D in the COLMAP model (each point stores an
            observation in every frame that sees it, so the model grows with
            points x frames; 50,000 points over 50 frames is about 60 MB).
        min_weight: a pixel's correspondence weight must be at least this fraction of
            the 99th percentile of its pair's weights to give a point.
        depth_tol: relative depth tolerance of the neighbour-consistency filter and of
            the occlusion check of COLMAP observations.
        jpeg_quality: JPEG quality of the exported frames.
        seed: seed of the point subsampling.
        keyframes_only: write the keyframes only (``--write-keyframes-only``): the
            frames that were not keyframes are posed but left out of ``poses.txt``, the
            COLMAP model and ``transforms.json`` (``summary.json`` still lists them).
    """

    colmap: bool = True
    colmap_text: bool = False
    transforms: bool = True
    ply: bool = True
    report: bool = True
    gt_dir: Path | None = None
    max_points: int = 100_000
    colmap_max_points: int = 50_000
    min_weight: float = 0.5
    depth_tol: float = 0.05
    jpeg_quality: int = 95
    seed: int = 0
    keyframes_only: bool = False


@dataclass
class RunConfig:
    """Everything a run depends on; defaults are METHOD.md's unless the README says why.

    Attributes:
        frames: frame selection and working resolution.
        keyframes: which selected frames are reconstructed; the others are posed
            against them after the refinement (:class:`KeyframeConfig`).
        register: how frames that are not keyframes are posed
            (:class:`flowmap.register.RegisterConfig`).
        correspondences: flow, tracks and bridges (also the cache key).
        optim: model, objective and optimisation schedule.
        refine: the global refinement of the cameras (:class:`flowmap.refine.RefineConfig`);
            None skips it (``--refine none``).
        finetune: the depth fine-tuning with the refined cameras held fixed
            (:class:`flowmap.finetune.FinetuneConfig`; ``steps=0`` skips it); runs only
            when a refinement was applied.
        dense: the dense depth stage after the refinement, cameras held fixed
            (:class:`flowmap.dense.DenseConfig`; ``enabled=False`` skips it); runs only
            when a refinement was applied.
        focal: known focal length in pixels of the input frames (skips the search).
        device: "auto" (CUDA when available), "cpu" or "cuda".
        seed: random seed of the network initialisation and the sampling.
        progress: show progress bars on stderr.
        checks: thresholds of the degenerate-content warnings.
        memory: the refuse-before-work memory check.
        outputs: what is written to OUT (when a run has one).
        overwrite: replace a non-empty OUT (only once the new one is complete).
        resume: continue from the cache of an interrupted run with the same settings.
        init: where the networks start (``--init``): "default" (the checkpoint shipped
            in the package, trained across videos by ``flowmap train``;
            :mod:`flowmap.pretrained`; the default since issue 23, with 25 descent
            steps), "none" (random weights, scratch training as in the FlowMap paper:
            give it more steps, the CLI uses 100) or the path of a checkpoint
            ``flowmap train`` wrote.
        threads: CPU threads of the run (torch's intra-op threads and OpenCV's during the
            run, and COLMAP's in the refinement); None: the cores that other processes
            leave idle when the run starts, at most torch's default (all cores, or
            ``OMP_NUM_THREADS``; :mod:`flowmap.cores`), recorded in ``summary.json``.
            With 1, a run on the CPU is bit-reproducible (measured: outputs
            byte-identical).
    """

    frames: FrameConfig = field(default_factory=FrameConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    correspondences: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    refine: RefineConfig | None = field(default_factory=RefineConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    focal: float | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    checks: CheckConfig = field(default_factory=CheckConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)
    overwrite: bool = False
    resume: bool = False
    init: str = "default"
    threads: int | None = None

    def to_dict(self) -> dict:
        """The settings as plain data (paths as text), as ``summary.json`` lists them."""
        d = asdict(self)
        gt = d["outputs"].get("gt_dir")
        d["outputs"]["gt_dir"] = None if gt is None else str(gt)
        return d


@dataclass
class TrainConfig:
    """Settings of ``flowmap train``.

    Attributes:
        steps: Adam steps over all training videos.
        lr: peak learning rate (warm-up and cosine decay as in a run,
            :func:`flowmap.optimize.lr_factor`).
        warmup_fraction, final_lr_fraction: the schedule.
        val_every: steps between validation losses (and at the end).
        val_windows: fixed windows per validation video.
        checkpoint_every: steps between the weights file and the loop state being written.
        log_every: steps between history entries.
        max_bad_steps: non-finite steps tolerated (each skipped, learning rate halved).
        seed: seed of the initialisation and the sampling.
        frames: frame selection and working resolution of every source (as in a run).
        correspondences: flow and tracks (as in a run; also the cache key).
        optim: the model (depth network, weight MLP, focal candidates), the objective,
            the window and pixels per step; its ``steps`` and ``lr`` are not used.
    """

    steps: int = 6000
    lr: float = 1e-3
    warmup_fraction: float = 0.02
    final_lr_fraction: float = 0.1
    val_every: int = 250
    val_windows: int = 8
    checkpoint_every: int = 100
    log_every: int = 10
    max_bad_steps: int = 50
    seed: int = 0
    frames: FrameConfig = field(default_factory=FrameConfig)
    correspondences: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def schedule(self) -> OptimConfig:
        """The :class:`OptimConfig` whose schedule fields are this training's (for ``lr_factor``)."""
        return replace(
            self.optim, steps=self.steps, lr=self.lr, warmup_fraction=self.warmup_fraction,
            final_lr_fraction=self.final_lr_fraction,
        )
