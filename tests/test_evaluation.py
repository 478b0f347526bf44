"""Tests for flowmap.evaluation: known answers on transformed and perturbed real trajectories."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flowmap.errors import InputError
from flowmap.evaluation import align_sim3, ate_paper, evaluate, evaluate_run, read_ground_truth
from flowmap.layout import write_intrinsics, write_poses
from conftest import SHARED_DATA, needs_data, require_data

DATA = SHARED_DATA
FOX = DATA / "fox"


@pytest.fixture(scope="module")
def fox_gt() -> tuple[list[str], np.ndarray, dict]:
    require_data("fox")
    return read_ground_truth(FOX)


def random_sim3(seed: int, scale: float) -> np.ndarray:
    """4x4 matrix [s R | t] of a random similarity."""
    rng = np.random.default_rng(seed)
    A = np.eye(4)
    A[:3, :3] = scale * Rotation.random(random_state=seed).as_matrix()
    A[:3, 3] = rng.normal(scale=3.0, size=3)
    return A


def transform_c2w(c2w: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Apply a similarity A to camera-to-world poses (rotations stay orthonormal)."""
    s = np.cbrt(np.linalg.det(A[:3, :3]))
    out = A @ c2w
    out[:, :3, :3] /= s
    return out


def perturbation_without_sim3_component(positions: np.ndarray, seed: int, size: float) -> np.ndarray:
    """Random (n, 3) offsets orthogonal to the tangent space of Sim(3) at the identity
    (translations, scaling, rotations of the centred positions), so the best Sim(3)
    fit of positions + offsets onto positions is exactly the identity."""
    rng = np.random.default_rng(seed)
    centred = positions - positions.mean(axis=0)
    basis = [np.tile(np.eye(3)[k], (len(positions), 1)) for k in range(3)]
    basis.append(centred)
    basis += [np.cross(np.eye(3)[k], centred) for k in range(3)]
    B = np.stack([b.ravel() for b in basis], axis=1)
    e = rng.normal(size=positions.size)
    e -= B @ np.linalg.lstsq(B, e, rcond=None)[0]
    e *= size / np.sqrt(np.mean(e.reshape(-1, 3) ** 2 * 3))
    return e.reshape(-1, 3)


def test_align_sim3_recovers_known_transform(fox_gt):
    src = fox_gt[1][:, :3, 3]
    A = random_sim3(3, 0.37)
    dst = src @ A[:3, :3].T + A[:3, 3]
    s, R, t = align_sim3(src, dst)
    assert s == pytest.approx(0.37, rel=1e-9)
    np.testing.assert_allclose(R, A[:3, :3] / 0.37, atol=1e-9)
    np.testing.assert_allclose(t, A[:3, 3], atol=1e-9)
    assert np.linalg.det(R) == pytest.approx(1.0)


def test_align_sim3_rejects_bad_shapes():
    with pytest.raises(ValueError):
        align_sim3(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        align_sim3(np.zeros((2, 3)), np.zeros((2, 3)))


def test_similarity_transformed_copy_scores_zero(fox_gt):
    c2w_gt = fox_gt[1]
    pred = transform_c2w(c2w_gt, random_sim3(1, 0.05))
    m = evaluate(pred, c2w_gt)
    assert m["ate_paper"] < 1e-9
    assert m["ate"] < 1e-9
    assert m["rpe_rot_deg"] < 1e-6
    assert m["rpe_trans"] < 1e-9
    assert m["registration_rate"] == 1.0 and m["n_frames"] == m["n_registered"] == len(c2w_gt)
    assert math.isnan(m["focal_rel_error"])


def test_known_position_perturbation_gives_expected_ate_and_rpe(fox_gt):
    c2w_gt = fox_gt[1]
    pos = c2w_gt[:, :3, 3]
    e = perturbation_without_sim3_component(pos, seed=2, size=0.05)
    noisy = c2w_gt.copy()
    noisy[:, :3, 3] += e
    pred = transform_c2w(noisy, random_sim3(4, 2.5))
    m = evaluate(pred, c2w_gt)
    # The best fit of g + e onto g is R = I, t = 0 (e has no translation or rotation
    # component) and s = |G|^2 / (|G|^2 + |e|^2) (Umeyama, G the centred positions),
    # leaving the residual (s - 1) g + s e, whose two parts are orthogonal.
    G = pos - pos.mean(axis=0)
    s = np.sum(G**2) / (np.sum(G**2) + np.sum(e**2))
    expected_ate = np.sqrt(((s - 1) ** 2 * np.sum(G**2) + s**2 * np.sum(e**2)) / len(pos))
    assert m["ate"] == pytest.approx(expected_ate, rel=1e-9)
    assert m["ate"] == pytest.approx(0.05, rel=0.01)
    expected_rpe_trans = np.mean(np.linalg.norm((s - 1) * np.diff(pos, axis=0) + s * np.diff(e, axis=0), axis=1))
    assert m["rpe_trans"] == pytest.approx(expected_rpe_trans, rel=1e-9)
    assert m["rpe_rot_deg"] < 1e-6


def test_ate_paper_matches_its_definition(fox_gt):
    pos = fox_gt[1][:, :3, 3]
    rng = np.random.default_rng(5)
    pred = pos @ Rotation.random(random_state=5).as_matrix().T * 3.0 + rng.normal(scale=0.3, size=pos.shape)
    # Definition: centre, scale to tr(X X^T) = 1, best rotation (reflection allowed, as in
    # scipy) and scale of the prediction onto the ground truth, RMSE over all coordinates.
    G = pos - pos.mean(axis=0)
    G /= np.linalg.norm(G)
    P = pred - pred.mean(axis=0)
    P /= np.linalg.norm(P)
    U, S, Vt = np.linalg.svd(P.T @ G)
    residual = G - S.sum() * P @ (U @ Vt)
    expected = np.sqrt(np.mean(residual**2))
    assert expected > 1e-3
    assert ate_paper(pred, pos) == pytest.approx(expected, rel=1e-9)
    c2w_pred = np.tile(np.eye(4), (len(pos), 1, 1))
    c2w_pred[:, :3, 3] = pred
    assert evaluate(c2w_pred, fox_gt[1])["ate_paper"] == pytest.approx(expected, rel=1e-9)


def test_collapsed_prediction_has_worst_paper_ate(fox_gt):
    pos = fox_gt[1][:, :3, 3]
    assert ate_paper(np.zeros_like(pos), pos) == pytest.approx(np.sqrt(1 / pos.size))


def test_known_rotation_perturbation_gives_expected_rpe(fox_gt):
    c2w_gt = fox_gt[1]
    delta = Rotation.from_rotvec([0.0, 0.0, np.radians(2.0)]).as_matrix()
    pred = c2w_gt.copy()
    pred[1::2, :3, :3] = pred[1::2, :3, :3] @ delta  # every other camera turned by 2 deg
    m = evaluate(pred, c2w_gt)
    assert m["rpe_rot_deg"] == pytest.approx(2.0, rel=1e-6)
    assert m["ate"] < 1e-9


def test_focal_error():
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, :3, 3] = np.random.default_rng(0).normal(size=(4, 3))
    assert evaluate(c2w, c2w, focal_pred=500.0, focal_gt=400.0)["focal_rel_error"] == pytest.approx(0.25)
    assert evaluate(c2w, c2w, focal_pred=300.0, focal_gt=400.0)["focal_rel_error"] == pytest.approx(0.25)


def test_registration_rate_and_only_registered_frames_count(fox_gt):
    c2w_gt = fox_gt[1]
    pred = transform_c2w(c2w_gt, random_sim3(6, 0.5))
    registered = np.ones(len(c2w_gt), bool)
    registered[::5] = False
    pred[~registered, :3, 3] = 1e6  # garbage where unregistered must not matter
    pred[1, :, :] = np.nan  # a non-finite pose counts as unregistered too
    m = evaluate(pred, c2w_gt, registered=registered)
    n_reg = int(registered.sum()) - 1
    assert m["n_registered"] == n_reg
    assert m["registration_rate"] == pytest.approx(n_reg / len(c2w_gt))
    assert m["ate"] < 1e-9 and m["ate_paper"] < 1e-9


def test_too_few_registered_frames_give_nan_pose_metrics(fox_gt):
    c2w_gt = fox_gt[1][:5]
    m = evaluate(c2w_gt, c2w_gt, registered=np.array([True, True, False, False, False]))
    assert m["registration_rate"] == pytest.approx(0.4)
    assert all(math.isnan(m[k]) for k in ("ate_paper", "ate", "rpe_rot_deg", "rpe_trans"))


# --- evaluate_run on folders -----------------------------------------------------------


def write_output(folder: Path, names: list[str], c2w: np.ndarray, intrinsics: dict) -> None:
    """poses.txt and intrinsics.json as a flowmap run writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    write_poses(folder / "poses.txt", names, c2w)
    K = np.array([[intrinsics["fx"], 0, intrinsics["cx"]], [0, intrinsics["fy"], intrinsics["cy"]], [0, 0, 1]])
    write_intrinsics(folder / "intrinsics.json", K, int(intrinsics["width"]), int(intrinsics["height"]), "test")


@needs_data("fox")
def test_evaluate_run_fox_against_itself():
    m = evaluate_run(FOX, FOX)
    assert m["ate_paper"] < 1e-9 and m["ate"] < 1e-9 and m["rpe_rot_deg"] < 1e-6
    assert m["focal_rel_error"] == 0.0 and m["registration_rate"] == 1.0 and m["n_frames"] == 50
    assert "note" not in m


@needs_data("fox")
def test_evaluate_run_perturbed_copy(fox_gt, tmp_path):
    names, c2w_gt, intr = fox_gt
    pos = c2w_gt[:, :3, 3]
    e = perturbation_without_sim3_component(pos, seed=7, size=0.02)
    noisy = c2w_gt.copy()
    noisy[:, :3, 3] += e
    pred = transform_c2w(noisy, random_sim3(8, 0.2))
    keep = np.ones(len(names), bool)
    keep[[3, 17, 40]] = False
    # half the resolution, focal 10 % too long
    half = {"width": intr["width"] // 2, "height": intr["height"] // 2, "fx": 1.1 * intr["fx"] / 2,
            "fy": 1.1 * intr["fy"] / 2, "cx": intr["width"] / 4, "cy": intr["height"] / 4}
    write_output(tmp_path / "out", [n for n, k in zip(names, keep) if k], pred[keep], half)
    m = evaluate_run(tmp_path / "out", FOX)
    assert m["n_registered"] == 47 and m["registration_rate"] == pytest.approx(47 / 50)
    assert m["focal_rel_error"] == pytest.approx(0.1, rel=1e-6)
    assert m["focal_gt_px"] == pytest.approx(0.5 * (intr["fx"] + intr["fy"]))
    # only the registered frames enter: compare with the metric on those frames alone
    expected = evaluate(pred[keep], c2w_gt[keep])
    assert m["ate"] == pytest.approx(expected["ate"], rel=1e-6)
    assert m["ate"] == pytest.approx(np.sqrt(np.mean(np.sum(e[keep] ** 2, axis=1))), rel=0.05)
    assert m["ate"] > 0.005


@needs_data("fox")
def test_evaluate_run_matches_by_order_when_names_differ(fox_gt, tmp_path):
    names, c2w_gt, intr = fox_gt
    write_output(tmp_path / "out", [f"frame_{i:04d}.png" for i in range(len(names))], c2w_gt, intr)
    m = evaluate_run(tmp_path / "out", FOX)
    assert "order" in m["note"] and m["ate"] < 1e-6 and m["registration_rate"] == 1.0
    write_output(tmp_path / "out2", [f"frame_{i:04d}.png" for i in range(10)], c2w_gt[:10], intr)
    with pytest.raises(InputError):
        evaluate_run(tmp_path / "out2", FOX)


@needs_data("fox")
def test_evaluate_run_bad_folders(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        evaluate_run(tmp_path / "missing", FOX)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="poses.txt"):
        evaluate_run(tmp_path / "empty", FOX)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "poses.txt").write_text("000000.jpg 1 2 3\n")
    (bad / "intrinsics.json").write_text("{}")
    with pytest.raises(InputError):
        evaluate_run(bad, FOX)
    with pytest.raises(InputError):
        evaluate_run(FOX, tmp_path / "missing-gt")


@pytest.mark.parametrize("damage", ["truncated", "not a map"])
def test_eval_of_an_output_with_a_damaged_depth_map_gives_one_line(tmp_path, damage):
    """`flowmap eval` on an output whose depth file is truncated (or not 2-D): exit 2, one
    line naming the file and what to do, no traceback."""
    from typer.testing import CliRunner

    from flowmap.cli import app
    from flowmap.synthetic import make_scene, write_sequence

    scene = make_scene(n_frames=4, height=24, width=32)
    gt = write_sequence(scene, tmp_path / "gt")
    out = write_sequence(scene, tmp_path / "out")
    (out / "depth").mkdir()
    for name in scene.names:
        np.save(out / "depth" / f"{Path(name).stem}.npy", np.ones((12, 16), np.float32))
    bad = out / "depth" / f"{Path(scene.names[2]).stem}.npy"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-100])
    else:
        np.save(bad, np.ones(5, np.float32))
    result = CliRunner().invoke(app, ["eval", str(out), "--gt", str(gt)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, (result.stderr, result.exception)
    assert f"depth map {bad}" in lines[0] and "run flowmap run again" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
