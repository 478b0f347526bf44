"""Configuration and result types of the refinement stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL")
FEATURES = ("opencv", "colmap")


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`flowmap.refine.refine`.

    The defaults are the fast refinement (``--refine fast``, issue 23): OpenCV SIFT, a
    linear pair graph above 12 frames, the global mapper's light variant when FlowMap's
    chain disagrees with the verified pairs, and a 2 px inlier bound. The refinement of
    flowmap 0.1 before it (COLMAP's DSP-SIFT, 8192 features, 4 px) is
    :meth:`RefineConfig.colmap` (``--refine colmap``). Measured from 25-step starts of
    the shipped network on the six shared sequences (``benchmarks/refine_eval.py``,
    2026-12-04, and ``flowmap bench`` of 20:16): refined ATE 0.75-1.01x COLMAP
    incremental's on five of them; tum-rpy 0.055-0.060 against COLMAP global's
    0.048-0.065 over the day's runs (1.2x in that bench); every focal error within
    COLMAP's + 0.3 points.

    Features (SIFT, Lowe IJCV 2004; matching and verification by COLMAP, Schönberger &
    Frahm CVPR 2016):
        features: "opencv": OpenCV's SIFT on the 2x upsampled frame (precise upscaling,
            RootSIFT descriptors) written into COLMAP's database, about a third of
            COLMAP's extraction time at the same keypoint precision (0.8 s against 2.5 s
            for tum-office's 17 frames); "colmap": COLMAP's own SIFT with the sift_*
            options below (DSP-SIFT by default, twice COLMAP's plain cost again).
            COLMAP's SIFT without upsampling (``sift_first_octave`` 0, as cheap as
            OpenCV's) lost accuracy: tum-office ATE 0.00129 (1.23x COLMAP's), llff-fern
            0.00121 (1.57x) and focal 3.0 %; aligning its keypoints along each track by
            Lucas-Kanade did not recover it (0.00114-0.00119, 0.00116-0.00121).
        forward_features, forward_motion_min_cos: on forward motion (the median |cos|
            between FlowMap's camera steps and the optical axis above this,
            :func:`flowmap.refine.core.forward_motion`), the refinement uses COLMAP's
            SIFT with 8,192 features ("colmap", plain or DSP: ``forward_sift_dsp``;
            None: keep ``features``). On kitti-06 (driving, 0.95) OpenCV's SIFT left the
            focal 5.3-5.7 % off whatever the pairs, filter or camera model (COLMAP
            global: 0.55 %); COLMAP's DSP-SIFT gave 0.98 % at ATE 0.00014 (features
            11-13 s against 2-3 s), its plain SIFT 0.39-0.57 % at 0.00009-0.00010. The
            six shared sequences and tartanair-hospital measure 0.13-0.33.
        forward_sift_dsp: COLMAP's SIFT on forward motion with domain-size pooling
            (DSP-SIFT) or without. Without, from kitti-06's saved 10-step start
            (``benchmarks/refine_eval.py``, 2026-12-05 session 29): ATE 0.00009-0.00010,
            focal 0.39-0.57 % (3 runs), features 4-6 s; with DSP: 0.00014-0.00016,
            0.44-1.34 % over the day's runs, 9 s (COLMAP global 0.00011-0.00013). Holding
            KITTI's true principal point instead of the centre changed nothing (0.00016).
        low_texture_features, low_texture_max_density: on low texture (OpenCV's SIFT finds
            fewer than ``low_texture_max_density`` keypoints per 10,000 pixels, median
            over the frames: :func:`flowmap.refine.core.keypoint_density`; judged on a
            sample first, see ``texture_sample_frames``),
            the refinement uses COLMAP's DSP-SIFT with 8,192 features ("colmap"; None:
            keep ``features``). Densities: tartanair-hospital (white walls) 7.9, tum-rpy
            15.9, tum-rpy-long 18.8, the other shared sequences 41-82. On
            tartanair-hospital from its saved 10-step start (``benchmarks/refine_eval.py``,
            2026-12-05 session 29) OpenCV's SIFT gave ATE 0.0217, 0.0109, 0.0118 and
            DSP-SIFT 0.0087, 0.0047, 0.0034 (refinement 34 s against 14 s).
        texture_sample_frames, texture_sample_margin: the texture is judged first on
            ``texture_sample_frames`` frames spread over the video; a sample density under
            ``texture_sample_margin`` x ``low_texture_max_density`` goes to the
            low-texture features at once (tartanair-hospital: 8.4 on 8 frames, every
            frame 8.2; its OpenCV extraction of all 189 frames, 4-5 s, is no longer
            thrown away), anything else extracts the remaining frames (the sample's
            features are kept) and decides on every frame as before (tum-rpy's sample
            13.9, every frame 14.4).
        max_num_features: SIFT keypoints per frame (cap). 4096: OpenCV finds fewer than
            that on most frames here; 8192 with a lower threshold gave 2.5x the tracks,
            twice the matching and adjustment time and no better ATE.
        max_image_side: longest side in pixels at which SIFT runs (None: input resolution);
            COLMAP rescales keypoints back to input pixels.
        sift_first_octave: COLMAP's first_octave (-1: the image is upsampled 2x first, as
            COLMAP's default; 0: input resolution, about 3x cheaper extraction).
        sift_peak_threshold: DoG peak threshold (COLMAP default 0.02 / octave_resolution;
            for OpenCV, contrastThreshold = 6x this, the same test); lower finds more,
            weaker keypoints.
        sift_dsp: domain-size pooling (DSP-SIFT, Dong & Soatto CVPR 2015) descriptors
            (``features`` "colmap" only). On there: measured from the 300-step starts, ATE (paper) tum-office
            0.00113 -> 0.00095-0.00098 (3 runs), llff-fern 0.00074 -> 0.00069-0.00073,
            at about 2x the extraction time with ``sift_dsp_scales`` 4. first_octave 0
            instead (3x cheaper) lost accuracy: fern 0.00074 -> 0.00116, office 0.00128.
        sift_dsp_scales: number of pooled scales of DSP-SIFT (COLMAP default 10; cost grows
            with it).
        sift_affine: affine-shape estimation of the keypoints (COLMAP option).
        guided_matching: COLMAP's guided matching after verification (matches re-searched
            along the verified epipolar geometry).
        verify_max_error_px: RANSAC inlier threshold (pixels) of the two-view verification
            (COLMAP default 4).
        verify_min_trials: fewest RANSAC trials of the two-view verification (COLMAP's
            default floor is 100; the adaptive stopping rule, confidence 0.999, ends far
            earlier on video pairs with mostly correct matches). 30: fox's 525 pairs
            verified in 0.86 s instead of 1.26 s with the same 491 pairs kept (73,454
            inliers against 73,545), and the same refined ATE on the six shared
            sequences (``benchmarks/refine_eval.py`` from 10-step starts, 2026-12-05).
    Pair graph (chosen from the FlowMap cameras, see :mod:`flowmap.refine.pairs`):
        exhaustive_max_frames: all pairs when N is at most this (12: llff-fern's 20
            frames on the graph, 182 pairs instead of 190 then, 106 with
            ``temporal_window`` 3 and ``max_pairs_per_frame`` 4, where fox lost its
            re-initialisation: ATE 0.048; castle-P30's 435 pairs -> 163 on the graph cut
            matching 23 s -> 6-8 s with ATE 0.00112 -> 0.00076-0.00102).
        temporal_window: always match frames i, i +- 1 .. k.
        max_axis_angle_deg: a non-temporal pair needs optical axes closer than this.
        min_overlap: fraction of frame i's depth samples that land inside frame j (and the
            reverse) for a non-temporal pair.
        max_pairs_per_frame: at most this many overlap pairs per frame (best overlap first).
            4 (8 before 2026-12-05 session 28): from the 10-step starts the six shared
            sequences refine to the same or better ATE (castle-P30 0.00100, fox 0.00024
            against 0.00028, llff-fern 0.00069, tum-rpy 0.0501 against 0.0574) while fox
            matches 0.6 s less (525 -> about 380 pairs); with 6, fox 0.00028 and
            llff-fern 0.00074.
    Adjustment (COLMAP's Ceres bundle adjuster; Triggs et al. 2000):
        camera_model: "SIMPLE_PINHOLE" (f; default), "PINHOLE" (fx, fy), "SIMPLE_RADIAL"
            (f, k1). The principal point is refined only when refine_principal_point.
        rounds: at most this many rounds of adjust -> filter -> re-triangulate. 2 (3
            before 2026-12-05 session 27, 4 before that): from the 10-step starts of the
            shipped network with the other defaults (``benchmarks/refine_eval.py``)
            castle-P30 0.00100 against 0.00101 with 3, fox 0.00028 with both (0.00028 in
            a whole run too), llff-fern 0.00070, tum-rpy 0.0574 against 0.0608;
            fountain-P11, llff-fern and tum-office stop at 2 anyway. The
            third round had cost castle-P30, fox and tum-rpy a triangulation and an
            adjustment (0.8-1 s each). From 25-step starts (before the flow and pair
            changes of 2026-12-05) stopping at 2 had cost castle-P30 0.00098 -> 0.00134.
        rounds_long, long_from_frames: from ``long_from_frames`` frames on, at most
            ``rounds_long`` rounds. On tum-rpy-long (229 frames, rotation-dominant) rounds
            3 and 4 took 25-30 s each and left the ATE where it was (0.0194-0.0210 with 4,
            0.0201 with 2): the tiny trajectory keeps "moving" by 10-40 % of its extent
            between rounds while the points re-triangulate. With ``rounds`` 2 (the default
            since 2026-12-05) this cap only matters when ``rounds`` is raised.
        converge_tol: the rounds stop when no camera centre moved by more than this
            fraction of the trajectory extent and the focal by less than this fraction.
            1e-2 (1e-3 before 2026-12-05 session 28): after the global mapper's start the
            first round moves llff-fern's cameras by 0.006 of the extent and
            fountain-P11's by 0.001, and a second round (0.45 s on llff-fern) left their
            ATE where it was (llff-fern 0.00073 against 0.00070, fountain-P11 0.00015,
            ``benchmarks/refine_eval.py`` from the 10-step starts); castle-P30, fox,
            tum-office and tum-rpy move 0.012-0.29 in the first round and still get the
            second.
        max_iterations: Ceres iterations per round.
        function_tolerance: Ceres stops a round when the cost falls by less than this
            fraction in an iteration. 1e-4 since 2026-12-05 session 28: from the
            10-step starts, with the global mapper's start, the six shared sequences keep
            their ATE (castle-P30 0.00101, fox 0.00028, llff-fern 0.00071, tum-office
            0.00101, tum-rpy 0.0564 against 0.0574) and their adjustment takes 10-40 %
            less. Before, 1e-5 (1e-6 before, 1e-7 before that): from the
            25-step starts (``benchmarks/refine_eval.py``, 2026-12-05) the adjustment took
            castle-P30 2.5 s against 3.8, fox 1.3 against 2.0, llff-fern 1.3 against 2.1,
            tum-rpy-long 12 against 31, at the same ATE and focal class (castle-P30
            0.00098, fox 0.00025, llff-fern 0.00071, tum-office 0.00103); 1e-4 lost
            castle-P30 (0.00209).
        forward_function_tolerance: on forward motion (see ``forward_features``) the
            rounds use at most this tolerance instead (None: ``function_tolerance``).
            kitti-06's focal travels from FlowMap's 242 px to about 365 px over the
            rounds; at 1e-5 it stopped 1.9 % off (0.9-1.1 % at 1e-6).
        forward_max_pairs_per_frame, forward_converge_tol: on forward motion the pair
            graph keeps up to this many overlap pairs per frame (at least
            ``max_pairs_per_frame``) and the rounds stop at this tolerance (at most
            ``converge_tol``); None: the general setting. The focal of a forward-moving
            camera is fixed by the long pairs along the axis, and it is still travelling
            after the first round: on kitti-06 (``benchmarks/refine_eval.py``, 10-step
            start, 2026-12-05) 4 pairs and one round left it 1.7-2.0 % off (ATE
            0.00011, 3 runs), 8 pairs and two rounds 0.72 % (ATE 0.00016).
        final_function_tolerance: the same for the last plain least-squares
            adjustment (a few iterations).
        loss: "cauchy", "soft_l1", "huber" or "trivial"; loss_scale in pixels.
        final_loss: loss of one last adjustment after the rounds, on the filtered
            inliers (None: skip). Plain least squares ("trivial") there, as COLMAP's
            global adjustment does, measured better on tum-office (ATE 0.00110 ->
            0.00096, focal 1.50 -> 1.30 %).
        filter_max_error_px: observations beyond this reprojection error are removed
            after each round (2 px with OpenCV's keypoints: fountain-P11's ATE 0.00023 ->
            0.00015, none of the six worse; 4 px, COLMAP's default, for ``colmap``).
        min_tri_angle_deg: minimum triangulation angle of kept points.
        tri_refinements: refinement passes of COLMAP's point triangulator (points-only
            bundle adjustment with the cameras fixed, track completion and merging,
            filtering; its ``ba_global_max_refinements``, COLMAP default 5). The rounds
            adjust the points with the cameras right after, so 1 pass keeps the result:
            fox's three triangulations 1.7 -> 1.0 s, the six shared sequences at the same
            ATE (castle-P30 0.00101, fox 0.00028, llff-fern 0.00070 from 10-step starts,
            2026-12-05). 0 passes (no track completion) lost castle-P30 (0.0051).
    Re-initialisation (GLOMAP, Pan et al. ECCV 2024, pycolmap.global_mapping):
        reinit: "auto" (when FlowMap's relative rotations disagree with the verified
            two-view geometry), "never" or "always".
        reinit_rotation_deg: median disagreement (degrees) over verified pairs that
            triggers "auto".
        reinit_frame_deg: with "auto", the re-initialisation also runs after an adjustment
            from the FlowMap cameras when a frame's median disagreement with its verified
            pairs exceeds this (degrees); the result with the better worst frame is kept.
            Measured after the adjustment from the 300-step starts: castle-P30 2.1 (after
            re-initialisation), fountain-P11 0.5, llff-fern 0.8, tum-office 1.2, tum-rpy
            2.7 (after re-initialisation), and fox 9.1 where frames 44-48 ended 9-15
            degrees off (ATE 0.0035 against 0.00023 from the global mapper's cameras)
            because its median disagreement before was 2.97, just under
            ``reinit_rotation_deg``.
        reinit_frame_before_deg: with "auto", the re-initialisation runs straight away
            (no adjustment from the FlowMap cameras first) when a frame's median
            disagreement with its verified pairs exceeds this before any adjustment
            (degrees, with FlowMap's focal). Measured on the 300-step starts: fox 79
            (frames 6-8, 31, 36-37, 42 and 44-49 above 10), fountain-P11, llff-fern and
            tum-office at most 3.2; castle-P30 and tum-rpy re-initialise on the median.
            It saves fox the adjustment that ``reinit_frame_deg`` would reject (~45 s).
        reinit_ba_rounds: bundle-adjustment rounds inside the global mapper (GLOMAP's
            ba_num_iterations, COLMAP default 3); the rounds below adjust again anyway.
            1 with no re-triangulation saves ~3 s but tum-rpy's ATE was 0.051-0.058
            (3 runs) against 0.047-0.053 with COLMAP's defaults, so those stay for
            short sequences.
        reinit_light_from_frames: from this many frames on, the global mapper runs with
            one adjustment round and no re-triangulation (the full mapper took 207 s of
            a loaded machine on tum-rpy-long's 229 frames, more than COLMAP's whole run).
            0 (always light) with the fast defaults: the rounds below adjust to
            convergence anyway (castle-P30 0.00098 against 0.00097 with the full mapper,
            in a third of its time).
        reinit_retriangulate: let the global mapper re-triangulate before its last
            adjustment (the rounds below re-triangulate from the matches anyway).
        reinit_tracks_per_view: the global mapper's global positioning uses only enough
            of the tracks for each frame to see this many (COLMAP's
            ``track_required_tracks_per_view``; None: every track). Its positioning
            solve dominates the mapper: fox 2.9 s of 3.7 with all 3,743 tracks, 0.1-0.5 s
            with 50-200 per frame; the rounds below triangulate every match again. 200:
            the same ATE on the six shared sequences (castle-P30 0.00100 against
            0.00098); 100 and 300 left castle-P30's weakly matched last frame 8 degrees
            off its pairs (ATE 0.005). When a frame stays more than
            ``reinit_frame_deg`` off its verified pairs after the adjustment, the mapper
            runs again with every track and the better agreement is kept.
        reinit_skip_fixed_rotation: skip the first stage of the global mapper's bundle
            adjustment, which adjusts positions and points with the averaged rotations
            held fixed, and go straight to the joint adjustment. From the 10-step starts
            (``benchmarks/refine_eval.py``, 2026-12-05 session 28) the six shared
            sequences refine to the same ATE (castle-P30 0.00100, fountain-P11 0.00015,
            fox 0.00024, llff-fern 0.00071, tum-office 0.00102, tum-rpy 0.0498 against
            0.0503), tum-rpy-long 0.01848 against 0.01857 with its mapper 12.4 -> 9.1 s,
            kitti-06 0.00015 / focal 0.99 %, tartanair-hospital 0.0115 (0.0109). With at
            most ``few_views_max_frames`` frames the stage is kept
            (:func:`flowmap.refine.core.settings_for_few_views`): without it fountain-P11
            every 3rd frame ended 10 degrees off.
        reinit_ba_function_tolerance: Ceres' function tolerance of the global mapper's
            own bundle adjustment (None: COLMAP's 1e-5). 1e-3 took fox's mapper from 1.04
            to 0.59 s and left the refined ATE of the six shared sequences, kitti-06,
            tartanair-hospital and tum-rpy-long where it was from saved 10-step starts
            (``benchmarks/refine_eval.py``, 2026-12-05), but in a whole ``flowmap run`` of
            fox, together with ``rounds`` 2, it left the weakly matched last frame 12 % of
            the trajectory off (ATE 0.0046 against 0.00028 with either change alone), so
            the default stays COLMAP's.
    Safety:
        repose_weak_fraction, repose_min_inliers: after the adjustment, a frame with
            fewer observations than this fraction of the median frame's is posed again
            from its verified matches to the other frames' points
            (:func:`flowmap.refine.adjust.repose`, at least ``repose_min_inliers``
            inliers and twice its observations), and the rounds run again (0: off).
        min_observations_per_frame: a frame with fewer adjusted observations keeps its
            FlowMap pose (after the global similarity) and is named in a warning.
        max_jump: largest allowed camera displacement after the similarity, as a
            fraction of the trajectory extent (plus median scene depth), when the
            adjustment started from the FlowMap cameras; more means "cameras jumping".
        max_focal_ratio: the adjusted focal must stay within [1/r, r] x FlowMap's.
        max_focal_ratio_explained, focal_explained_max_disagreement_deg: a focal beyond
            those bounds (up to this ratio) is kept when the adjusted cameras explain the
            matches: median disagreement with the verified pairs' rotations at most this
            (degrees) and, from FlowMap's cameras, no growth of the reprojection error
            (issue 24: on kitti-06 FlowMap's focal is 44 % low and the adjustment's
            348 px, 5.7 % from the truth, was thrown away: ATE 0.0061 instead of 0.00014).
        max_focal_ratio_reinit: the same bound when the cameras were re-initialised from
            the verified pairs (their geometry, not FlowMap's focal, then sets the start):
            a feed-forward tum-office start (``--steps 0``, focal 35 % low) adjusted to
            focal error 1.27 % and ATE 0.00096 but was rejected at 1.5.
        max_weak_fraction: more unconstrained frames than this fraction of N rejects
            the refinement, unless the cameras were re-initialised from the verified
            pairs (FlowMap's chain disagreed with them) and at least 3 frames are
            constrained: then, with ``report_unregistered``, the refinement is kept and
            the unconstrained frames are reported as not registered (issue 24: a few
            wide-baseline photos where FlowMap's flow fails between some of them).
        report_unregistered: see ``max_weak_fraction`` and ``few_views_max_frames``.
        few_views_max_frames: with at most this many frames (a few photos), a rejected
            refinement whose verified pairs contradict FlowMap's cameras (a frame's median
            rotation disagreement above ``max_rotation_disagreement_deg``) poses no frame,
            and the run says so (castle-P30 every 10th frame, fountain-P11 every 5th: COLMAP builds no
            model either, FlowMap's cameras were 30-50 degrees off).
        few_views_start: how a few photos (at most ``few_views_max_frames`` frames) get
            their start (issue 24: "decide the start from the verified geometry").
            "incremental": COLMAP's incremental mapper (two-view initialisation, then
            registration and triangulation) on a database made as COLMAP makes it by
            default (its plain SIFT, 8,192 features, no focal prior: ``focal_prior``
            off), then the same triangulation and adjustment rounds; photos it leaves
            out, or whose adjusted rotation stays more than ``reinit_frame_deg`` off
            their verified pairs, are reported as not registered (castle-P30 every 4th
            frame: 5 of 8 posed at ATE 0.0023, COLMAP 6 of 8 at 0.0040; fox every 8th:
            5 of 7 at 0.0037, COLMAP 6 of 7 at 0.0022; both were "none posed" with the
            global mapper's start, which joined them wrongly); when it registers
            fewer than 3 frames the run goes on as for a video (FlowMap's cameras, or
            the global mapper's when they disagree with the pairs). "flowmap": as for a
            video. Why: with 3-5 photos almost every track has 2 views and the focal is
            weakly fixed; the global mapper's start from OpenCV SIFT and FlowMap's focal
            prior ended at 698.9-699.0 px from starts of 503-800 px and at 692.4 px from
            408 px (castle-P30 every 6th frame, truth 689.9 px; ATE 0.0031 against 0.0014:
            at 3 views each 10 px of focal is 0.003 of ATE), while COLMAP's
            incremental start with the same adjustment on top gave 691.5-692.1 px, ATE
            0.00054-0.00067 (COLMAP's own: 0.00077-0.00095, 6 runs), and fountain-P11
            every 3rd frame 0.00028-0.00029 (COLMAP incremental 0.00075-0.00078, global
            0.00034), 2026-12-05 session 29.
        focal_prior: the database's camera starts at FlowMap's focal marked as a prior
            (the verification then fits essential matrices with it); off: COLMAP's
            no-EXIF default (1.2 x the larger image side) without prior.
        max_frame_disagreement_deg: a frame whose median disagreement with its verified
            pairs still exceeds this after the adjustment (degrees) is named in a warning:
            its pose is unreliable. Measured after the adjustment in the bench of
            2026-12-04: at most 2.1 on the six shared sequences, 4.3 on tum-rpy-long;
            176 for frame 17 of castle-P30 with ``temporal_window`` 10, where the global
            mapper joined frames 0-16 and 17-29 at a wrong angle (ATE 0.091) and the
            median check let it through.
        max_rotation_disagreement_deg: the adjusted cameras' relative rotations must agree
            with the verified two-view rotations of the matched pairs to this median angle
            (degrees); more rejects the refinement (an adjustment that converged to a wrong
            minimum from bad cameras: a garbage start adjusted to 84 deg of relative
            rotation error while only 2 of 16 frames were unconstrained).
    Depth:
        depth_node_px: node spacing (depth-map pixels) of the per-frame smooth
            multiplicative depth correction fitted to the adjusted points
            (:func:`flowmap.refine.depth.fit_correction`; None: per-frame scale only).
        depth_smooth: regularisation weight of that correction.
    Misc:
        num_threads: threads for COLMAP (extraction, matching, Ceres).
        seed: COLMAP random seed.
    """

    features: str = "opencv"
    forward_features: str | None = "colmap"
    forward_motion_min_cos: float = 0.8
    forward_sift_dsp: bool = False
    low_texture_features: str | None = "colmap"
    low_texture_max_density: float = 12.0
    texture_sample_frames: int = 12
    texture_sample_margin: float = 0.75
    max_num_features: int = 4096
    max_image_side: int | None = None
    sift_first_octave: int = -1
    sift_peak_threshold: float = 0.02 / 3
    sift_dsp: bool = True
    sift_dsp_scales: int = 4
    sift_affine: bool = False
    guided_matching: bool = False
    verify_max_error_px: float = 4.0
    verify_min_trials: int = 30
    exhaustive_max_frames: int = 12
    temporal_window: int = 5
    max_axis_angle_deg: float = 60.0
    min_overlap: float = 0.3
    max_pairs_per_frame: int = 4
    camera_model: str = "SIMPLE_PINHOLE"
    refine_principal_point: bool = False
    rounds: int = 2
    rounds_long: int = 2
    long_from_frames: int = 100
    converge_tol: float = 1e-2
    max_iterations: int = 200
    function_tolerance: float = 1e-4
    forward_function_tolerance: float | None = 1e-6
    forward_max_pairs_per_frame: int | None = 8
    forward_converge_tol: float | None = 1e-3
    final_function_tolerance: float = 1e-6
    loss: str = "cauchy"
    loss_scale: float = 1.0
    final_loss: str | None = "trivial"
    filter_max_error_px: float = 2.0
    min_tri_angle_deg: float = 1.5
    tri_refinements: int = 1
    reinit: str = "auto"
    reinit_rotation_deg: float = 3.0
    reinit_frame_deg: float = 5.0
    reinit_frame_before_deg: float = 10.0
    reinit_ba_rounds: int = 3
    reinit_retriangulate: bool = True
    reinit_light_from_frames: int = 0
    reinit_tracks_per_view: int | None = 200
    reinit_skip_fixed_rotation: bool = True
    reinit_ba_function_tolerance: float | None = None
    min_observations_per_frame: int = 20
    repose_weak_fraction: float = 0.25
    repose_min_inliers: int = 30
    max_jump: float = 0.5
    max_focal_ratio: float = 1.5
    max_focal_ratio_reinit: float = 2.0
    max_focal_ratio_explained: float = 4.0
    focal_explained_max_disagreement_deg: float = 1.0
    max_weak_fraction: float = 0.25
    report_unregistered: bool = True
    few_views_max_frames: int = 8
    few_views_start: str = "incremental"
    focal_prior: bool = True
    max_frame_disagreement_deg: float = 10.0
    max_rotation_disagreement_deg: float = 5.0
    depth_node_px: float | None = 16.0
    depth_smooth: float = 0.01
    num_threads: int = 2
    seed: int = 0

    @classmethod
    def colmap(cls, **overrides) -> "RefineConfig":
        """The refinement of flowmap 0.1 (``--refine colmap``): COLMAP's DSP-SIFT, 8192
        features, all pairs up to 20 frames, 4 px inlier bound, the full global mapper
        below 100 frames, 4 adjustment rounds at any length; ``overrides`` replace single
        settings."""
        settings = dict(
            features="colmap", max_num_features=8192, exhaustive_max_frames=20, filter_max_error_px=4.0, reinit_light_from_frames=100,
            rounds=4, rounds_long=4, reinit_tracks_per_view=None, verify_min_trials=100, tri_refinements=5,
            reinit_ba_function_tolerance=None, max_pairs_per_frame=8, converge_tol=1e-3, function_tolerance=1e-5,
            reinit_skip_fixed_rotation=False,
        )
        settings.update(overrides)
        return cls(**settings)

    def check(self) -> None:
        """Raise ValueError on an invalid setting."""
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.forward_features not in (None, *FEATURES) or not 0 <= self.forward_motion_min_cos <= 1:
            raise ValueError(f"forward_features must be None or one of {FEATURES}, forward_motion_min_cos in [0, 1]")
        if self.texture_sample_frames < 1 or not 0 <= self.texture_sample_margin <= 1:
            raise ValueError("texture_sample_frames must be >= 1 and texture_sample_margin in [0, 1]")
        if self.low_texture_features not in (None, *FEATURES) or not self.low_texture_max_density >= 0:
            raise ValueError(f"low_texture_features must be None or one of {FEATURES}, low_texture_max_density >= 0")
        if self.camera_model not in CAMERA_MODELS:
            raise ValueError(f"camera_model must be one of {CAMERA_MODELS}, got {self.camera_model!r}")
        if self.loss not in ("cauchy", "soft_l1", "huber", "trivial") or self.final_loss not in (None, "cauchy", "soft_l1", "huber", "trivial"):
            raise ValueError(f"loss must be cauchy, soft_l1, huber or trivial, got {self.loss!r}")
        if self.reinit not in ("auto", "never", "always"):
            raise ValueError(f"reinit must be auto, never or always, got {self.reinit!r}")
        if self.max_num_features < 64 or min(self.rounds, self.rounds_long) < 1 or self.max_iterations < 1:
            raise ValueError("max_num_features >= 64, rounds >= 1, rounds_long >= 1 and max_iterations >= 1 are required")
        if self.max_image_side is not None and self.max_image_side < 64:
            raise ValueError(f"max_image_side must be None or >= 64, got {self.max_image_side}")
        if self.sift_first_octave not in (-1, 0, 1) or self.sift_dsp_scales < 1 or self.sift_peak_threshold <= 0:
            raise ValueError("sift_first_octave must be -1, 0 or 1, sift_dsp_scales >= 1 and sift_peak_threshold > 0")
        tolerances = [
            t
            for t in (self.function_tolerance, self.final_function_tolerance, self.forward_function_tolerance, self.reinit_ba_function_tolerance)
            if t is not None
        ]
        if not all(0 < t < 1 for t in tolerances):
            raise ValueError(
                "function_tolerance, final_function_tolerance, forward_function_tolerance and reinit_ba_function_tolerance "
                f"must be in (0, 1), got {tolerances}"
            )
        if self.verify_min_trials < 1 or self.tri_refinements < 0:
            raise ValueError(f"verify_min_trials >= 1 and tri_refinements >= 0 are required, got {self.verify_min_trials}, {self.tri_refinements}")
        if (self.forward_max_pairs_per_frame is not None and self.forward_max_pairs_per_frame < 0) or (
            self.forward_converge_tol is not None and not self.forward_converge_tol > 0
        ):
            raise ValueError(
                f"forward_max_pairs_per_frame must be None or >= 0 and forward_converge_tol None or > 0, got "
                f"{self.forward_max_pairs_per_frame}, {self.forward_converge_tol}"
            )
        if self.reinit_tracks_per_view is not None and self.reinit_tracks_per_view < 1:
            raise ValueError(f"reinit_tracks_per_view must be None or >= 1, got {self.reinit_tracks_per_view}")
        if self.verify_max_error_px <= 0 or self.converge_tol <= 0 or self.reinit_ba_rounds < 1 or min(self.reinit_frame_deg, self.reinit_frame_before_deg) <= 0:
            raise ValueError(
                "verify_max_error_px > 0, converge_tol > 0, reinit_ba_rounds >= 1, reinit_frame_deg > 0 and reinit_frame_before_deg > 0 are required"
            )
        if not self.max_focal_ratio_explained >= max(self.max_focal_ratio, self.max_focal_ratio_reinit) or not self.focal_explained_max_disagreement_deg > 0:
            raise ValueError("max_focal_ratio_explained must be >= max_focal_ratio and max_focal_ratio_reinit, focal_explained_max_disagreement_deg > 0")
        if not self.max_frame_disagreement_deg > 0:
            raise ValueError(f"max_frame_disagreement_deg must be > 0, got {self.max_frame_disagreement_deg}")
        if not 0 <= self.repose_weak_fraction < 1 or self.repose_min_inliers < 4:
            raise ValueError(f"repose_weak_fraction must be in [0, 1) and repose_min_inliers >= 4, got {self.repose_weak_fraction}, {self.repose_min_inliers}")
        if self.few_views_max_frames < 0 or self.few_views_start not in ("incremental", "flowmap"):
            raise ValueError(
                f"few_views_max_frames must be >= 0 and few_views_start incremental or flowmap, got {self.few_views_max_frames}, {self.few_views_start!r}"
            )
        if self.temporal_window < 1 or self.max_pairs_per_frame < 0 or self.exhaustive_max_frames < 0:
            raise ValueError("temporal_window >= 1, max_pairs_per_frame >= 0 and exhaustive_max_frames >= 0 are required")


@dataclass
class Refinement:
    """Result of :func:`flowmap.refine.refine`, in FlowMap's frame (c2w[0] = I, FlowMap's scale).

    Attributes:
        c2w: (N, 4, 4) float64 refined camera-to-world, OpenCV axes.
        K: (3, 3) float64 refined intrinsics, pixels of the input frames, pixel centre of
            column i at u = i.
        depth_scale: (N,) float64 factors; depth[i] * depth_scale[i] agrees with the
            refined cameras (1 where a frame sees too few points, see warnings).
        points_xyz: (P, 3) float64 adjusted 3D points, same frame and units as c2w.
        points_rgb: (P, 3) uint8 colours.
        stats: measurements (see :func:`flowmap.refine.refine`).
        warnings: human-readable warnings.
        applied: False when the FlowMap cameras were kept (c2w and K are then the input).
        depth: (N, h, w) float32 depth consistent with the refined cameras (input depth
            times a smooth per-frame correction field, or times depth_scale when
            ``depth_node_px`` is None); None when not applied.
        observed: N int64 arrays, the rows of ``points_xyz`` each frame observes in the
            adjusted reconstruction (empty lists when not applied).
        registered: (N,) bool, False for the frames the refinement could not register
            (their ``c2w`` is FlowMap's pose relative to the nearest registered frame, not
            a measurement: the outputs leave them out); None: every frame.
    """

    c2w: np.ndarray
    K: np.ndarray
    depth_scale: np.ndarray
    points_xyz: np.ndarray
    points_rgb: np.ndarray
    stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    applied: bool = True
    depth: np.ndarray | None = None
    observed: list[np.ndarray] = field(default_factory=list)
    registered: np.ndarray | None = None

    def points_seen(self) -> list[np.ndarray]:
        """N arrays (P_i, 3): the adjusted points each frame observes."""
        return [self.points_xyz[idx] for idx in self.observed]
