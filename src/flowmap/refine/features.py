"""SIFT features and pose-guided matching through COLMAP's database (pycolmap).

COLMAP's feature extraction (SIFT), brute-force matching with ratio and cross check, and
two-view geometric verification (Schönberger & Frahm, CVPR 2016) on the pairs chosen by
:mod:`flowmap.refine.pairs`. Nothing here is re-implemented: the frames are written to
a temporary folder as PNG and COLMAP works on its own database.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowmap.refine.colmap_io import camera_params, extract_sift, sift_options


def image_names(n: int) -> list[str]:
    """File names of the N frames in the temporary image folder."""
    return [f"{i:06d}.bmp" for i in range(n)]


def write_images(images: np.ndarray, folder: Path) -> list[str]:
    """Write (N, H, W, 3) uint8 RGB frames as BMP (uncompressed, lossless) into ``folder``;
    their names. BMP, not PNG: 60 frames of 640 x 480 take 0.05 s instead of 1.3 s
    (PNG at compression level 1), and COLMAP finds the same keypoints in both."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = image_names(len(images))
    for name, image in zip(names, images):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / name)
    return names


def opencv_sift(image: np.ndarray, max_features: int, peak_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV SIFT (Lowe, IJCV 2004; the image is upsampled 2x first, as COLMAP's default)
    of one RGB frame in COLMAP's formats.

    Returns:
        keypoints (M, 4) float32 ``x y scale orientation`` with COLMAP's pixel convention
        (centre of column i at x = i + 0.5), orientation in radians; descriptors (M, 128)
        uint8 as COLMAP stores them: RootSIFT (Arandjelovic & Zisserman, CVPR 2012: L1
        normalised, square root), times 512, clipped to 255.
    """
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    # OpenCV's DoG threshold is 0.5 * contrastThreshold / nOctaveLayers (3): COLMAP's peak_threshold.
    sift = cv2.SIFT_create(nfeatures=int(max_features), contrastThreshold=6.0 * peak_threshold, enable_precise_upscale=True)
    kps, desc = sift.detectAndCompute(gray, None)
    if desc is None or not kps:
        return np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8)
    xy = np.array([k.pt for k in kps], np.float32) + 0.5
    scale = np.array([k.size for k in kps], np.float32) / 2.0
    angle = np.radians(np.array([k.angle for k in kps], np.float32))
    d = desc.astype(np.float32)
    d = np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-12))
    d = np.clip(np.round(512.0 * d), 0, 255).astype(np.uint8)
    return np.column_stack([xy, scale, angle]).astype(np.float32), d


def opencv_sift_frames(images: np.ndarray, indices, cfg) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """:func:`opencv_sift` of the frames ``indices`` of ``images`` (N, H, W, 3), on
    ``cfg.num_threads`` threads (OpenCV releases the GIL): frame index -> (keypoints,
    descriptors)."""
    from concurrent.futures import ThreadPoolExecutor

    indices = [int(i) for i in indices]
    with ThreadPoolExecutor(max(1, cfg.num_threads)) as pool:
        found = pool.map(lambda i: opencv_sift(images[i], cfg.max_num_features, cfg.sift_peak_threshold), indices)
        return dict(zip(indices, found))


def extract_opencv(
    database: Path, image_dir: Path, names: list[str], images: np.ndarray, K: np.ndarray, cfg,
    done: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[int]:
    """OpenCV SIFT on every frame into ``database`` (frames imported by COLMAP's own
    image reader, one shared camera initialised from K as :func:`extract` does); the
    number of keypoints of each frame.

    OpenCV's SIFT finds keypoints on the 2x upsampled image like COLMAP's default
    (``first_octave`` -1) at about a third of COLMAP's extraction time here (0.88 s
    against 2.5 s for tum-office's 17 frames, 2 threads), so the refinement keeps the
    precise small-scale keypoints that COLMAP's cheaper ``first_octave`` 0 loses (see
    :class:`flowmap.refine.RefineConfig`). ``done``: features of some frames already
    extracted (:func:`opencv_sift_frames`), not extracted again.
    """
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    pycolmap.Database.open(database).close()  # an empty database for the import
    pycolmap.import_images(database, image_dir, pycolmap.CameraMode.SINGLE, names, reader)
    done = dict(done or {})
    done.update(opencv_sift_frames(images, [i for i in range(len(images)) if i not in done], cfg))
    found = [done[i] for i in range(len(images))]
    db = pycolmap.Database.open(database)
    try:
        ids = {img.name: img.image_id for img in db.read_all_images()}
        for name, (kps, desc) in zip(names, found):
            db.write_keypoints(ids[name], kps)
            db.write_descriptors(ids[name], pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, desc))
    finally:
        db.close()
    _set_camera(database, K, cfg)
    return [len(kps) for kps, _ in found]


def _set_camera(database: Path, K: np.ndarray, cfg) -> None:
    """The shared camera gets ``cfg.camera_model`` with FlowMap's intrinsics as a focal
    prior; without ``cfg.focal_prior`` COLMAP's no-EXIF default focal (its
    ``default_focal_length_factor`` x the larger image side) and no prior, as COLMAP
    itself starts."""
    import pycolmap

    db = pycolmap.Database.open(database)
    try:
        for camera in db.read_all_cameras():
            start = np.array(K, dtype=np.float64, copy=True)
            if not cfg.focal_prior:
                start[0, 0] = start[1, 1] = pycolmap.ImageReaderOptions().default_focal_length_factor * max(camera.width, camera.height)
            camera.params = camera_params(start, cfg.camera_model)
            camera.has_prior_focal_length = bool(cfg.focal_prior)
            db.update_camera(camera)
    finally:
        db.close()


def extract(database: Path, image_dir: Path, names: list[str], K: np.ndarray, cfg) -> None:
    """SIFT on every frame into ``database``; one shared camera initialised from K.

    The camera gets ``cfg.camera_model`` and the FlowMap intrinsics (principal point
    shifted by +0.5 to COLMAP's convention) marked as a focal prior, so that the
    verification and any re-initialisation start from FlowMap's focal length.
    """
    import pycolmap

    extraction = sift_options(cfg.num_threads, cfg.max_num_features)
    extraction.sift.first_octave = int(cfg.sift_first_octave)
    extraction.sift.domain_size_pooling = bool(cfg.sift_dsp)
    extraction.sift.peak_threshold = float(cfg.sift_peak_threshold)
    extraction.sift.dsp_num_scales = int(cfg.sift_dsp_scales)
    extraction.sift.estimate_affine_shape = bool(cfg.sift_affine)
    if cfg.max_image_side is not None:
        extraction.max_image_size = int(cfg.max_image_side)
    extract_sift(database, image_dir, names, cfg.camera_model, extraction)
    _set_camera(database, K, cfg)


def match_pairs(database: Path, pairs: list[tuple[int, int]], names: list[str], workdir: Path, cfg) -> None:
    """Match and geometrically verify the given (i, j) frame pairs (COLMAP's imported pairing)."""
    import pycolmap

    pair_file = workdir / "pairs.txt"
    pair_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    matching.guided_matching = bool(cfg.guided_matching)
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(pair_file)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.compute_relative_pose = True
    verification.ransac.random_seed = cfg.seed
    verification.ransac.max_error = float(cfg.verify_max_error_px)
    verification.ransac.min_num_trials = int(cfg.verify_min_trials)
    pycolmap.match_image_pairs(
        database,
        matching_options=matching,
        pairing_options=pairing,
        verification_options=verification,
        device=pycolmap.Device.cpu,
    )


def read_verified(database: Path, names: list[str]) -> list[dict]:
    """Verified pairs from the database.

    Returns:
        list of dicts ``i``, ``j`` (frame indices, i < j), ``inliers`` (count), ``config``
        (COLMAP TwoViewGeometryConfiguration as int), ``R`` (3, 3) and ``t`` (3,) of
        cam_j_from_cam_i when COLMAP verified an essential matrix (else None),
        ``matches`` (M, 2) inlier keypoint indices (column 0 in frame i).
    """
    import pycolmap

    index = {name: k for k, name in enumerate(names)}
    db = pycolmap.Database.open(database)
    try:
        id_to_frame = {img.image_id: index[img.name] for img in db.read_all_images() if img.name in index}
        pair_ids, geometries = db.read_two_view_geometries()
        out = []
        for pair_id, geom in zip(pair_ids, geometries):
            a, b = pycolmap.pair_id_to_image_pair(pair_id)
            n_in = len(geom.inlier_matches)
            if n_in == 0 or a not in id_to_frame or b not in id_to_frame:
                continue
            i, j = id_to_frame[a], id_to_frame[b]
            R = t = None
            pose = geom.cam2_from_cam1
            config = int(geom.config)
            # Only an essential matrix (calibrated configuration) gives a trustworthy pose.
            if pose is not None and config == int(pycolmap.TwoViewGeometryConfiguration.CALIBRATED):
                m = pose.matrix()
                R, t = m[:, :3].copy(), m[:, 3].copy()
            matches = np.asarray(geom.inlier_matches, dtype=np.int64).reshape(-1, 2)
            if i > j:  # store as cam_j_from_cam_i with i < j
                i, j = j, i
                matches = matches[:, ::-1]
                if R is not None:
                    R, t = R.T, -R.T @ t
            out.append({"i": i, "j": j, "inliers": n_in, "config": config, "R": R, "t": t, "matches": matches})
        return out
    finally:
        db.close()
