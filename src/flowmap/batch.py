"""Many sources in one command: one :func:`flowmap.pipeline.run` per source, on Ray.

``flowmap batch SOURCES... -o OUT_ROOT`` runs every source (video file, image folder, or a
text file listing them) into ``OUT_ROOT/<name>/`` through the same pipeline function as
``flowmap run`` (there is no second orchestration). The engine is Ray (Moritz et al.,
OSDI 2018): with no address an embedded local Ray is started for the batch and stopped
after it; with ``address`` (``ray://HOST:PORT`` for Ray Client, ``HOST:PORT`` for a
cluster's GCS, or ``RAY_ADDRESS``) the tasks go to an existing cluster, whose nodes must
have flowmap installed and see OUT_ROOT and the sources at the same paths.

Robustness: a failed source, a missing one included, does not stop the others (its
one-line error is recorded); options, OUT_ROOT and the Ray address are checked before
anything is written, and OUT_ROOT is locked (:func:`flowmap.io.lock_out`);
every run writes its OUT atomically, so a batch killed at any moment leaves each output
either complete or absent (an interrupted run leaves only its ``OUT.cache`` checkpoint);
``resume`` skips finished sources and resumes interrupted ones from their checkpoints.
``OUT_ROOT/batch.json`` (rewritten atomically after every source) and
``OUT_ROOT/batch.html`` summarise the batch.
"""

from __future__ import annotations

import html
import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from flowmap.config import RunConfig
from flowmap.errors import FlowmapError, InputError
from flowmap.frames import source_names
from flowmap.io import atomic_write, lock_out
from flowmap.validate import check_out_folder, validate_run

__all__ = ["BatchConfig", "BatchSource", "read_sources", "run_batch", "format_batch_table"]

INSTALL_HINT = "flowmap batch needs Ray: pip install -e '.[batch]' (or pip install 'ray>=2.9')"
CONNECT_TIMEOUT_S = 5.0
"""Seconds a Ray address may take to accept a TCP connection before the batch is refused."""


@dataclass(frozen=True)
class BatchConfig:
    """Settings of :func:`run_batch`.

    Attributes:
        jobs: sources run in parallel (None: CPU cores // threads, at least 1).
        threads: CPU threads per task (torch and COLMAP; None: cores // jobs, at least
            1), so that parallel tasks do not oversubscribe the cores. The task requests
            that many CPUs from Ray.
        address: Ray cluster to submit to (None: ``RAY_ADDRESS`` if set, else an
            embedded local Ray for this batch).
        resume: skip sources whose output is complete; resume interrupted ones from
            their checkpoints. Without it, an OUT_ROOT holding results is refused.
        overwrite: re-run every source, replacing its output.
        retries: Ray retries of a task whose worker process died (a source's own error
            is never retried).
        progress: a progress bar over the sources on stderr.
    """

    jobs: int | None = None
    threads: int | None = None
    address: str | None = None
    resume: bool = False
    overwrite: bool = False
    retries: int = 1
    progress: bool = True

    def resolved(self, cores: int) -> tuple[int, int]:
        """(jobs, threads) for a machine with ``cores`` CPU cores."""
        if self.jobs is not None and self.jobs < 1 or self.threads is not None and self.threads < 1:
            raise InputError("--jobs and --threads must be at least 1")
        if self.jobs is None and self.threads is None:
            return max(1, cores), 1
        if self.jobs is None:
            return max(1, cores // self.threads), self.threads
        if self.threads is None:
            return self.jobs, max(1, cores // self.jobs)
        return self.jobs, self.threads


@dataclass(frozen=True)
class BatchSource:
    """One source of a batch.

    Attributes:
        path: the video file or image folder (absolute).
        name: its output folder's name under OUT_ROOT (unique in the batch).
        gt: ground-truth folder (shared layout: poses.txt, intrinsics.json) or None.
    """

    path: Path
    name: str
    gt: Path | None = None


def _gt_beside(path: Path) -> Path | None:
    """The sequence folder holding ``path`` when it has poses.txt and intrinsics.json (the
    layout of ``../shared/data``: ``SEQ/images`` with its ground truth in ``SEQ``)."""
    folder = path.parent
    if (folder / "poses.txt").is_file() and (folder / "intrinsics.json").is_file():
        return folder
    return None


def read_sources(items: list[Path]) -> list[BatchSource]:
    """The batch's sources from the command line.

    Each item is a video file, an image folder, or a text file (``.txt`` / ``.list``)
    with one source per line: ``SOURCE``, or ``SOURCE<TAB>GT_DIR`` with a ground-truth
    folder. Only a tab separates the two, so a path may hold spaces (and ``#``); relative
    paths are relative to the list file; blank lines and lines starting with ``#`` are
    skipped. Ground truth is also found beside an image folder in the shared layout
    (:func:`_gt_beside`). A source that does not exist is kept: :func:`run_batch` records
    it as failed and runs the others.

    Raises:
        InputError: no sources, a list line with more than two tab-separated fields, or
            the same source twice.
    """
    entries: list[tuple[Path, Path | None]] = []
    for item in items:
        item = Path(item)
        if item.is_file() and item.suffix.lower() in (".txt", ".list"):
            entries += _read_list(item)
        else:
            entries.append((item.resolve(), None))
    if not entries:
        raise InputError("no sources given; pass videos, image folders or a text file listing them")
    seen = set()
    for src, _ in entries:
        if src in seen:
            raise InputError(f"source listed twice: {src}; give each source once")
        seen.add(src)
    names = source_names([src for src, _ in entries])
    return [BatchSource(src, name, gt if gt is not None else _gt_beside(src)) for (src, gt), name in zip(entries, names)]


def _read_list(listing: Path) -> list[tuple[Path, Path | None]]:
    """(source, ground truth or None) of each line of a list file (see :func:`read_sources`)."""
    entries = []
    for lineno, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) > 2 or not fields[0]:
            raise InputError(
                f"{listing}:{lineno}: expected 'SOURCE' or 'SOURCE<TAB>GT_DIR', got {line!r}; separate the two with one tab"
            )
        gt = (listing.parent / fields[1]).resolve() if len(fields) == 2 and fields[1] else None
        entries.append(((listing.parent / fields[0]).resolve(), gt))
    return entries


def _missing(path: Path) -> str:
    """The error of a source that does not exist (recorded as a failed source)."""
    hint = " (in a list file, a ground-truth folder follows the source after a tab)" if " " in path.name else ""
    return f"source not found: {path}; check the path{hint}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, FlowmapError) else f"{type(exc).__name__}: {text}"


def _record(source: BatchSource, out: Path, status: str, **fields) -> dict:
    """A source's entry in ``batch.json``: name, source, out, status, then ``fields``."""
    return {"name": source.name, "source": str(source.path), "out": str(out), "status": status, **fields}


def run_source(source: BatchSource, out: Path, config: RunConfig) -> dict:
    """Run one source into ``out`` (:func:`flowmap.pipeline.run`); never raises.

    Returns:
        A record: name, source, out, status ("done" | "failed"), error (one line),
        frames, time_s, focal_px, warnings, metrics (against ``source.gt``, if any).
    """
    from flowmap.pipeline import run

    record = _record(source, out, "failed", error=None)
    t0 = time.perf_counter()
    try:
        cfg = config
        if source.gt is not None:
            cfg = replace(config, outputs=replace(config.outputs, gt_dir=source.gt))
        result = run(source.path, out, cfg, summary={"command": "flowmap batch", "batch_source": source.name})
        rec = result.reconstruction
        record.update(
            status="done",
            frames=rec.n + (0 if rec.others is None else rec.others.n),  # keyframes and the frames posed after them
            time_s=float(result.timings["total_s"]),
            focal_px=float(0.5 * (rec.K[0, 0] + rec.K[1, 1])),
            warnings=list(result.warnings),
        )
        if source.gt is not None:
            from flowmap.evaluation import evaluate_run

            record["metrics"] = {k: v for k, v in evaluate_run(out, source.gt).items() if isinstance(v, (int, float))}
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001  (a source's failure is recorded, the batch goes on)
        record["error"] = _one_line(exc)
    record["wall_s"] = time.perf_counter() - t0
    return record


def _task(source: BatchSource, out: str, config: RunConfig) -> dict:
    """The Ray task: one source (module level, so that workers import it from flowmap)."""
    return run_source(source, Path(out), config)


def _is_complete(out: Path) -> bool:
    """An output folder a run finished (``summary.json`` is written inside the atomic OUT)."""
    return (out / "summary.json").is_file()


def _connect(config: BatchConfig, jobs: int, threads: int):
    """ray.init for this batch: the given cluster, or an embedded local Ray with jobs x threads CPUs."""
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    address = ray_address(config)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address is None:
        kwargs.update(num_cpus=jobs * threads)
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001  (Ray's connection errors become one line)
        where = address or "an embedded local Ray"
        raise InputError(f"cannot start or reach Ray at {where}: {_one_line(exc)}") from None
    finally:
        if main and sigterm is not None:  # Ray's logging installs its own SIGTERM handler: keep the caller's
            signal.signal(signal.SIGTERM, sigterm)
    return ray, address


def ray_address(config: BatchConfig) -> str | None:
    """The Ray cluster of a batch: ``config.address``, else ``RAY_ADDRESS``, else None (a local Ray)."""
    return config.address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse at once a Ray address (``HOST:PORT`` or ``ray://HOST:PORT``) where nothing
    accepts a TCP connection: ``ray.init`` would retry for many minutes. Addresses
    without a port (``auto``, ``local``) are left to Ray.

    Raises:
        InputError: the connection is refused or times out.
    """
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise InputError(
            f"cannot reach Ray at {address}: {reason}; start the cluster (ray start --head) or correct --address / RAY_ADDRESS"
        ) from None


def run_batch(items: list[Path], out_root: Path, run_config: RunConfig, config: BatchConfig = BatchConfig()) -> dict:
    """Run every source into ``out_root/<name>/`` on Ray; return the batch summary.

    Args:
        items: sources (see :func:`read_sources`).
        out_root: the batch's output folder (created; must be visible to every node).
        run_config: the settings of each run (``flowmap run``'s); ``threads``,
            ``resume``, ``overwrite`` and ``progress`` are set per task by the batch.
        config: :class:`BatchConfig`.

    Returns:
        The content of ``out_root/batch.json``: ``sources`` (one record per source,
        see :func:`run_source`; status also "skipped" for outputs already complete and
        "pending" for sources not finished when the batch was interrupted), the counts
        ``done``, ``failed``, ``skipped``, ``pending``, and ``wall_s``, ``jobs``,
        ``threads``, ``address``.

    Raises:
        InputError: bad sources or options, an OUT_ROOT that is a file or lies below one,
            an OUT_ROOT with results and neither resume nor overwrite, another batch
            writing OUT_ROOT, Ray missing or unreachable (nothing is written then).
        OutputError: batch.json or batch.html cannot be written (disk full).
    """
    sources = read_sources(items)
    out_root = Path(out_root).resolve()
    check_out_folder(out_root)
    validate_run(None, None, run_config)
    jobs, threads = config.resolved(os.cpu_count() or 1)
    address = ray_address(config)
    if address is not None:
        check_reachable(address)
    outs = {s.name: out_root / s.name for s in sources}
    if not (config.resume or config.overwrite):
        existing = [n for n, o in outs.items() if o.exists() and any(o.iterdir())]
        if existing:
            raise InputError(
                f"{out_root} already holds results of {', '.join(existing)}; use --resume to continue that batch or --overwrite to redo it"
            )
    with lock_out(out_root):
        return _run_locked(sources, outs, out_root, run_config, config, jobs, threads)


def _run_locked(sources, outs, out_root: Path, run_config: RunConfig, config: BatchConfig, jobs: int, threads: int) -> dict:
    """:func:`run_batch` once its options are valid and OUT_ROOT is locked: Ray is
    reached before anything is written into OUT_ROOT."""
    task_config = replace(run_config, threads=threads, progress=False, resume=config.resume, overwrite=config.overwrite)
    records = {s.name: _record(s, outs[s.name], "pending") for s in sources}
    todo = []
    for s in sources:
        if not s.path.exists():
            records[s.name].update(status="failed", error=_missing(s.path))
        elif config.resume and not config.overwrite and _is_complete(outs[s.name]):
            records[s.name].update(status="skipped", error=None)
        else:
            todo.append(s)
    summary = {"out_root": str(out_root), "jobs": jobs, "threads": threads, "sources": list(records.values())}
    t_start = time.perf_counter()

    def save() -> None:
        counts = {k: sum(1 for r in records.values() if r["status"] == k) for k in ("done", "failed", "skipped", "pending")}
        summary.update(counts, sources=list(records.values()), wall_s=time.perf_counter() - t_start)
        atomic_write(out_root / "batch.json", json.dumps(summary, indent=2, default=str) + "\n")

    if todo:
        ray, address = _connect(config, jobs, threads)
        summary["address"] = address
        try:
            save()
            _schedule(ray, todo, outs, task_config, config, threads, records, save)
        finally:
            ray.shutdown()
    save()
    atomic_write(out_root / "batch.html", batch_html(summary))
    return summary


def _schedule(ray, todo, outs, task_config, config, threads, records, save) -> None:
    """Submit the tasks, largest sources first, and collect them as they finish."""
    from tqdm import tqdm

    gpus = ray.cluster_resources().get("GPU", 0.0) if task_config.device in ("auto", "cuda") else 0.0
    remote = ray.remote(_task).options(
        num_cpus=threads, num_gpus=1.0 if gpus >= 1 else 0.0, max_retries=config.retries, retry_exceptions=False
    )
    order = sorted(todo, key=lambda s: -_size(s.path))
    pending = {remote.remote(s, str(outs[s.name]), task_config): s for s in order}
    bar = tqdm(total=len(order), desc="batch", unit="source", disable=not config.progress)
    n_done = n_failed = 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            s = pending.pop(ready[0])
            try:
                record = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001  (the worker died: recorded, the batch goes on)
                record = _record(s, outs[s.name], "failed", error=f"worker failed: {_one_line(exc)}")
            records[s.name] = record
            n_done += record["status"] == "done"
            n_failed += record["status"] == "failed"
            bar.set_postfix(done=n_done, failed=n_failed)
            bar.update(1)
            if record["status"] == "failed":
                bar.write(f"failed: {s.name}: {record['error']}")
            save()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        save()
        raise
    finally:
        bar.close()


def _size(path: Path) -> int:
    """Bytes of a source (a folder's files summed): the scheduling order, largest first."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


TABLE_COLUMNS = (
    ("source", "name"),
    ("status", "status"),
    ("frames", "frames"),
    ("time s", "time_s"),
    ("focal px", "focal_px"),
    ("warnings", "warnings"),
    ("ate_paper", "ate_paper"),
    ("focal err %", "focal_rel_error"),
    ("error", "error"),
)


def _cells(record: dict) -> list[str]:
    out = []
    metrics = record.get("metrics") or {}
    for _, key in TABLE_COLUMNS:
        value = record.get(key, metrics.get(key))
        if value is None:
            out.append("-")
        elif key == "warnings":
            out.append(str(len(value)))
        elif key == "focal_rel_error":
            out.append(f"{100 * value:.2f}")
        elif key == "ate_paper":
            out.append(f"{value:.5f}")
        elif isinstance(value, float):
            out.append(f"{value:.1f}")
        else:
            out.append(str(value))
    return out


def format_batch_table(summary: dict) -> str:
    """Plain-text table of a batch: source, status, frames, time, focal, warnings (count),
    ATE (paper convention) and focal error where ground truth was given, error."""
    header = [c[0] for c in TABLE_COLUMNS]
    body = [_cells(r) for r in summary["sources"]]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, ["-" * w for w in widths], *body]]
    counts = ", ".join(f"{summary.get(k, 0)} {k}" for k in ("done", "failed", "skipped"))
    lines.append(f"{counts}; {summary.get('wall_s', 0.0):.0f} s with {summary['jobs']} jobs x {summary['threads']} threads")
    return "\n".join(lines)


def batch_html(summary: dict) -> str:
    """The batch report page: the table, each done source linking its ``report.html``."""
    rows = []
    for r in summary["sources"]:
        cells = [html.escape(c) for c in _cells(r)]
        report = Path(r["out"]) / "report.html"
        if report.is_file():
            cells[0] = f'<a href="{html.escape(r["name"])}/report.html">{cells[0]}</a>'
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(c[0])}</th>" for c in TABLE_COLUMNS)
    counts = ", ".join(f"{summary.get(k, 0)} {k}" for k in ("done", "failed", "skipped"))
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>flowmap batch</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>\n"
        f"<h1>flowmap batch</h1>\n<p>{html.escape(summary['out_root'])}: {counts}, "
        f"{summary.get('wall_s', 0.0):.0f} s, {summary['jobs']} jobs x {summary['threads']} threads</p>\n"
        f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n</body></html>\n"
    )
