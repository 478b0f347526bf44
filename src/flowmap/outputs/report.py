"""Visual report of a reconstruction: ``report.png`` and a self-contained ``report.html``.

The figure shows

* the camera trajectory from above and from the side, with each camera's viewing
  direction (its +z axis, OpenCV) as a short tick, and the ground truth aligned onto
  the prediction by a Sim(3) fit when a ground-truth folder is given;
* the loss curve from ``rec.history`` (log scale, focal length on a second axis);
* a strip of about six evenly spaced frames with their inverse depth (one shared
  robust 2-98 percentile colour range, so frames are comparable) and the
  correspondence weights that Procrustes used for the pair (i-1, i) on frame i.

"Up" in the views is the mean of the cameras' -y axes (OpenCV y points down), which is
gravity-up for handheld and tripod captures; the top view spans the plane orthogonal
to it, its first axis being the direction of largest camera motion.

The HTML page embeds the PNG (base64) and tables of the numbers: frames, intrinsics,
timings, final losses, warnings and metrics against ground truth.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flowmap.evaluation import align_sim3, evaluate_reconstruction, match_frames, read_ground_truth
from flowmap.io import atomic_write
from flowmap.types import Reconstruction

N_STRIP_FRAMES = 6
DPI = 100


def write_report(rec: Reconstruction, out_dir: Path, gt_dir: Path | None = None) -> Path:
    """Write ``out_dir/report.png`` and ``out_dir/report.html`` for a reconstruction.

    Args:
        rec: the reconstruction (c2w (N, 4, 4) OpenCV axes, K, depth (N, h, w),
            weights (N-1, h, w) on frame i+1 of pair i, images (N, h, w, 3), history ...).
        out_dir: output folder (created if missing).
        gt_dir: optional ground-truth folder (poses.txt + intrinsics.json, shared data
            layout); adds the aligned ground-truth trajectory and the metrics.

    Returns:
        Path of ``report.html``. Both files are written to a temporary name first and
        renamed, so no half-written report is left behind.

    Raises:
        InputError: ``gt_dir`` is given but missing or invalid.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_before = None
    gt_c2w = None
    if gt_dir is not None:
        metrics = evaluate_reconstruction(rec, Path(gt_dir))
        gt_c2w = ground_truth_in_prediction_frame(rec, Path(gt_dir))
        if rec.flowmap_c2w is not None:
            unrefined = dataclasses.replace(rec, c2w=rec.flowmap_c2w, K=rec.flowmap_K)
            metrics_before = evaluate_reconstruction(unrefined, Path(gt_dir))

    fig = report_figure(rec, gt_c2w, metrics)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=DPI)
    png = buffer.getvalue()

    atomic_write(out_dir / "report.png", png)
    html_path = out_dir / "report.html"
    atomic_write(html_path, report_html(rec, png, metrics, metrics_before).encode("utf-8"))
    return html_path


def ground_truth_in_prediction_frame(rec: Reconstruction, gt_dir: Path) -> np.ndarray | None:
    """Ground-truth c2w of the frames of ``rec`` mapped into its world by a Sim(3) fit.

    The similarity (s, R, t) maps ground-truth camera centres onto the predicted ones
    (:func:`flowmap.evaluation.align_sim3`); rotations become R @ R_gt, centres
    s R c_gt + t.

    Returns:
        (N, 4, 4) aligned ground-truth c2w, NaN for frames without ground truth; None if
        fewer than 3 frames can be matched.
    """
    names_gt, c2w_gt, _ = read_ground_truth(gt_dir)
    matched, _ = match_frames(list(rec.names), names_gt)
    pairs = [(m, k) for k, m in enumerate(matched) if m is not None and np.isfinite(rec.c2w[m]).all()]
    if len(pairs) < 3:
        return None
    pred_idx, gt_idx = map(np.asarray, zip(*pairs))
    s, R, t = align_sim3(c2w_gt[gt_idx, :3, 3], rec.c2w[pred_idx, :3, 3])
    aligned = np.full((rec.n, 4, 4), np.nan)
    aligned[pred_idx] = np.eye(4)
    aligned[pred_idx, :3, :3] = R @ c2w_gt[gt_idx, :3, :3]
    aligned[pred_idx, :3, 3] = s * c2w_gt[gt_idx, :3, 3] @ R.T + t
    return aligned


# --- figure ---------------------------------------------------------------------------


def view_axes(c2w: np.ndarray) -> np.ndarray:
    """(3, 3) rows (e1, e2, up): horizontal principal axis, second horizontal axis, up.

    ``up`` is the normalised mean of the cameras' -y axes (OpenCV: y down); e1 the
    direction of largest spread of the camera centres orthogonal to up; e2 = up x e1,
    so that (e1, e2) seen from above is not mirrored.
    """
    finite = np.isfinite(c2w).all(axis=(1, 2))
    c2w = c2w[finite] if finite.any() else np.eye(4)[None]
    up = -c2w[:, :3, 1].mean(axis=0)
    if np.linalg.norm(up) < 1e-6:
        up = np.array([0.0, -1.0, 0.0])
    up /= np.linalg.norm(up)
    centres = c2w[:, :3, 3] - c2w[:, :3, 3].mean(axis=0)
    horizontal = centres - np.outer(centres @ up, up)
    e1 = np.linalg.svd(horizontal, full_matrices=False)[2][0] if len(horizontal) > 1 else np.zeros(3)
    if np.linalg.norm(e1) < 1e-9 or abs(e1 @ up) > 0.9:
        e1 = np.cross(up, [1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.cross(up, [0.0, 0.0, 1.0])
    e1 = e1 - (e1 @ up) * up
    e1 /= np.linalg.norm(e1)
    return np.stack([e1, np.cross(up, e1), up])


def _plot_trajectory(
    ax,
    c2w: np.ndarray,
    gt_c2w: np.ndarray | None,
    axes: np.ndarray,
    dims: tuple[int, int],
    unrefined_c2w: np.ndarray | None = None,
):
    """Draw camera centres and viewing-direction ticks projected on ``axes[dims]``;
    ``unrefined_c2w`` (FlowMap's cameras before the refinement, same world) as a thin
    orange line, when given."""
    basis = axes[list(dims)]  # (2, 3)
    finite = np.isfinite(c2w).all(axis=(1, 2))
    if not finite.any():
        ax.text(0.5, 0.5, "no camera has a pose", ha="center", va="center", transform=ax.transAxes)
        return None
    centres = c2w[finite, :3, 3]
    xy = centres @ basis.T
    all_xy = xy
    if gt_c2w is not None:
        all_xy = np.concatenate([xy, gt_c2w[np.isfinite(gt_c2w).all(axis=(1, 2)), :3, 3] @ basis.T])
    extent = float(np.ptp(all_xy, axis=0).max()) if len(all_xy) > 1 else 1.0
    tick = 0.07 * (extent if extent > 0 else 1.0)

    if gt_c2w is not None:
        gt_ok = np.isfinite(gt_c2w).all(axis=(1, 2))
        gt_xy = gt_c2w[gt_ok, :3, 3] @ basis.T
        gt_dir = gt_c2w[gt_ok, :3, 2] @ basis.T
        ax.plot(gt_xy[:, 0], gt_xy[:, 1], "--", color="0.35", lw=1.2, label="ground truth (Sim(3)-aligned)")
        ax.add_collection(
            LineCollection(np.stack([gt_xy, gt_xy + tick * gt_dir], axis=1), colors="0.55", linewidths=0.8)
        )

    if unrefined_c2w is not None:
        before = unrefined_c2w[np.isfinite(unrefined_c2w).all(axis=(1, 2)), :3, 3] @ basis.T
        ax.plot(before[:, 0], before[:, 1], "-", color="tab:orange", lw=0.9, alpha=0.8, label="flowmap before refinement")
    direction = c2w[finite, :3, 2] @ basis.T
    frame_index = np.flatnonzero(finite)
    label = "flowmap" if unrefined_c2w is None else "flowmap, refined"
    ax.plot(xy[:, 0], xy[:, 1], "-", color="tab:blue", lw=1.0, alpha=0.6, label=label)
    ax.add_collection(
        LineCollection(np.stack([xy, xy + tick * direction], axis=1), colors="tab:blue", linewidths=0.9, alpha=0.8)
    )
    points = ax.scatter(xy[:, 0], xy[:, 1], c=frame_index, cmap="viridis", s=14, zorder=3)
    ax.scatter(xy[:1, 0], xy[:1, 1], marker="*", s=160, c="tab:red", zorder=4, label=f"frame {frame_index[0]}")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, lw=0.4, alpha=0.5)
    return points


def _plot_history(ax, history: list[dict[str, float]]) -> None:
    """Loss terms against step on a log axis; focal length (pixels) on a twin axis."""
    if not history:
        ax.text(0.5, 0.5, "no optimisation history", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    steps = np.array([h.get("step", i) for i, h in enumerate(history)], dtype=float)
    keys = [k for k in history[0] if k not in ("step", "focal")]
    keys.sort(key=lambda k: (k != "loss", k))
    for k in keys:
        values = np.array([h.get(k, np.nan) for h in history], dtype=float)
        values[~(values > 0)] = np.nan  # log axis: drop zeros and negatives
        if np.isfinite(values).any():
            ax.plot(steps, values, lw=2.0 if k == "loss" else 1.0, label=k)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", lw=0.4, alpha=0.5)
    ax.set_title("optimisation")
    handles, labels = ax.get_legend_handles_labels()
    focal = np.array([h.get("focal", np.nan) for h in history], dtype=float)
    if np.isfinite(focal).any():
        twin = ax.twinx()
        (line,) = twin.plot(steps, focal, color="0.3", ls=":", lw=1.2, label="focal (px)")
        twin.set_ylabel("focal (px)")
        handles.append(line)
        labels.append("focal (px)")
    # below the axes: with a twin axis "best" cannot see both curves
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(labels))


def _strip_indices(n: int, k: int = N_STRIP_FRAMES) -> np.ndarray:
    """Up to ``k`` evenly spaced frame indices in [0, n-1]."""
    return np.unique(np.round(np.linspace(0, n - 1, min(k, n))).astype(int))


def _inverse_depth_range(inv: np.ndarray) -> tuple[float, float]:
    """Robust (2nd, 98th percentile) colour range of finite inverse depths."""
    finite = inv[np.isfinite(inv)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [2, 98])
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def _plot_strip(fig, spec, rec: Reconstruction) -> None:
    """Rows: frame, inverse depth, correspondence weights, for evenly spaced frames."""
    idx = _strip_indices(rec.n)
    # a narrow last column holds the colour bars, so that the three rows stay aligned
    grid = spec.subgridspec(3, len(idx) + 1, wspace=0.04, hspace=0.08, width_ratios=[1.0] * len(idx) + [0.05])
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(rec.depth[idx] > 0, 1.0 / rec.depth[idx], np.nan)
    vmin, vmax = _inverse_depth_range(inv)
    depth_im = weight_im = None
    for col, i in enumerate(idx):
        ax_img, ax_depth, ax_w = (fig.add_subplot(grid[row, col]) for row in range(3))
        ax_img.imshow(rec.images[i])
        ax_img.set_title(f"frame {i}", fontsize=9)
        depth_im = ax_depth.imshow(inv[col], cmap="turbo", vmin=vmin, vmax=vmax)
        if i >= 1 and rec.weights.shape[0] >= i:
            weight_im = ax_w.imshow(rec.weights[i - 1], cmap="magma", vmin=0.0, vmax=1.0)
        else:
            ax_w.imshow(np.ones(rec.depth.shape[1:]), cmap="gray", vmin=0, vmax=1)
            ax_w.text(0.5, 0.5, "no pair\n(first frame)", ha="center", va="center", fontsize=8,
                      transform=ax_w.transAxes)
        for ax in (ax_img, ax_depth, ax_w):
            ax.set_xticks([])
            ax.set_yticks([])
        if col == 0:
            ax_img.set_ylabel("frame")
            ax_depth.set_ylabel("inverse depth")
            ax_w.set_ylabel("weight (pair i-1, i)")
    fig.colorbar(depth_im, cax=fig.add_subplot(grid[1, -1]), label="1 / depth")
    if weight_im is not None:
        fig.colorbar(weight_im, cax=fig.add_subplot(grid[2, -1]), label="weight")


def _title(rec: Reconstruction, metrics: dict | None) -> str:
    H, W = rec.image_size
    focal = 0.5 * (rec.K[0, 0] + rec.K[1, 1])
    parts = [f"flowmap: {rec.n} frames, {W}x{H} px, focal {focal:.1f} px"]
    if metrics is not None:
        parts.append(
            f"vs ground truth: ATE (paper) {metrics['ate_paper']:.5f}, ATE {metrics['ate']:.4g}, "
            f"RPE {metrics['rpe_rot_deg']:.3f} deg, focal error {100 * metrics['focal_rel_error']:.2f} %, "
            f"registered {metrics['n_registered']}/{metrics['n_frames']}"
        )
    return "\n".join(parts)


def report_figure(rec: Reconstruction, gt_c2w: np.ndarray | None = None, metrics: dict | None = None) -> Figure:
    """The report figure (matplotlib ``Figure``, not attached to pyplot).

    Args:
        rec: the reconstruction.
        gt_c2w: (N, 4, 4) ground truth already in the prediction's world (see
            :func:`ground_truth_in_prediction_frame`), NaN rows allowed, or None.
        metrics: the dict of :func:`flowmap.evaluation.evaluate_reconstruction`, or None.
    """
    h, w = rec.working_size
    n_cols = len(_strip_indices(rec.n))
    col_w = 13.5 / N_STRIP_FRAMES
    row_h = min(col_w * h / w, 2.9)
    top_h = 4.3
    fig = Figure(figsize=(15, top_h + 3 * row_h + 1.0), dpi=DPI, layout="constrained")
    outer = fig.add_gridspec(2, 1, height_ratios=[top_h, 3 * row_h])
    top = outer[0].subgridspec(1, 3, width_ratios=[1, 1, 1.15])

    axes = view_axes(rec.c2w)
    ax_top = fig.add_subplot(top[0])
    points = _plot_trajectory(ax_top, rec.c2w, gt_c2w, axes, (0, 1), rec.flowmap_c2w)
    ax_top.set_title("trajectory, top view (ticks: viewing direction)")
    ax_top.set_xlabel("horizontal 1 (main motion)")
    ax_top.set_ylabel("horizontal 2")
    if ax_top.get_legend_handles_labels()[0]:
        ax_top.legend(fontsize=8, loc="best")
    ax_side = fig.add_subplot(top[1])
    _plot_trajectory(ax_side, rec.c2w, gt_c2w, axes, (0, 2), rec.flowmap_c2w)
    ax_side.set_title("trajectory, side view")
    ax_side.set_xlabel("horizontal 1 (main motion)")
    ax_side.set_ylabel("up (mean camera -y)")
    if points is not None:
        bar = fig.colorbar(points, ax=[ax_top, ax_side], shrink=0.8, pad=0.01, label="frame")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    _plot_history(fig.add_subplot(top[2]), rec.history)

    if n_cols:
        _plot_strip(fig, outer[1], rec)
    fig.suptitle(_title(rec, metrics), fontsize=12)
    return fig


# --- HTML -----------------------------------------------------------------------------


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


METRIC_LABELS = {
    "ate_paper": "ate_paper (FlowMap-paper ATE, normalised, dimensionless)",
    "ate": "ate (Sim(3)-aligned, ground-truth units)",
    "rpe_rot_deg": "rpe_rot_deg (consecutive frames, degrees)",
    "rpe_trans": "rpe_trans (consecutive frames, ground-truth units)",
    "focal_rel_error": "focal_rel_error (|f - f_gt| / f_gt)",
    "focal_px": "focal_px (at the ground-truth width)",
    "focal_gt_px": "focal_gt_px",
}


def _table(title: str, rows: dict) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<h2>{html.escape(title)}</h2>\n<table>{body}</table>\n"


REFINEMENT_KEYS = (
    "applied",
    "termination",
    "reinit",
    "tracks",
    "observations",
    "reproj_px_before",
    "reproj_px_after",
    "focal_before",
    "focal_after",
    "depth_agreement_before",
    "depth_agreement_after",
    "depth_agreement",
)


def _refinement_rows(refinement: dict) -> dict:
    """The scalar entries of the refinement's statistics worth a table row (see :mod:`flowmap.refine`)."""
    rows = {k: refinement[k] for k in REFINEMENT_KEYS if k in refinement}
    if isinstance(refinement.get("seconds"), dict) and "total_s" in refinement["seconds"]:
        rows["seconds"] = refinement["seconds"]["total_s"]
    return rows


def report_html(
    rec: Reconstruction, png: bytes, metrics: dict | None = None, metrics_before: dict | None = None
) -> str:
    """Self-contained HTML page: the PNG embedded as base64 plus tables of numbers
    (``metrics_before``: FlowMap's cameras before the refinement against the ground truth)."""
    H, W = rec.image_size
    h, w = rec.working_size
    summary = {
        "frames": rec.n,
        "input size (W x H px)": f"{W} x {H}",
        "working size (w x h px)": f"{w} x {h}",
        "fx, fy (px)": f"{rec.K[0, 0]:.2f}, {rec.K[1, 1]:.2f}",
        "cx, cy (px)": f"{rec.K[0, 2]:.2f}, {rec.K[1, 2]:.2f}",
    }
    if "device_resolved" in rec.settings:
        summary["device"] = rec.settings["device_resolved"]
    warnings = "".join(f"<li>{html.escape(w_)}</li>" for w_ in rec.warnings) or "<li>none</li>"
    settings = html.escape(json.dumps(rec.settings, indent=2, default=str))
    image = base64.b64encode(png).decode("ascii")
    labelled_metrics = {METRIC_LABELS.get(k, k): v for k, v in (metrics or {}).items()}
    labelled_before = {METRIC_LABELS.get(k, k): v for k, v in (metrics_before or {}).items()}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>flowmap report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 10px; text-align: left; font-weight: normal; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
.tables {{ display: flex; flex-wrap: wrap; gap: 2em; }}
</style></head><body>
<h1>flowmap report</h1>
<img alt="trajectory, depth, weights and loss curves" src="data:image/png;base64,{image}">
<div class="tables">
<div>{_table("summary", summary)}{_table("metrics vs ground truth", labelled_metrics)}</div>
<div>{_table("metrics before refinement", labelled_before)}</div>
<div>{_table("final losses", rec.losses)}{_table("timings (s)", rec.timings)}</div>
<div>{_table("refinement", _refinement_rows(rec.refinement))}</div>
</div>
<h2>warnings</h2><ul>{warnings}</ul>
<details><summary>settings</summary><pre>{settings}</pre></details>
</body></html>
"""
