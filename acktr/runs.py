"""Run folders: layout, atomic writes, checkpoints, the episode log (monitor.csv) and resume truncation.

Layout of ``runs/<algo>/<Env>_<N>/``::

    config.yml              resolved hyperparameters, options and the command line
    model.zip               final model (SB3 format); vecnormalize.pkl next to it when observations
                            are normalised
    best_model.zip          best evaluation so far (with best_vecnormalize.pkl) when evaluation is on
    checkpoints/latest.yml  the commit record of the newest checkpoint: its step and file names
    checkpoints/step_<N>.zip (+ step_<N>_vecnormalize.pkl): the newest ``keep_checkpoints`` of them
                            (config.yml; 2 by default, 0 keeps all), older ones are deleted
    monitor.csv             one row per finished episode: unclipped return r, length l, time t, env step
    tb/                     TensorBoard events

Every file is written to a temporary name in its final folder and moved into place with ``os.replace``, so
a crash leaves either the old or the new version, never half a file. ``latest.yml`` is written last: a
checkpoint exists only once it names it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from acktr.errors import UserError

CONFIG_NAME = "config.yml"
MODEL_NAME = "model.zip"
VECNORMALIZE_NAME = "vecnormalize.pkl"
BEST_MODEL_NAME = "best_model.zip"
BEST_VECNORMALIZE_NAME = "best_vecnormalize.pkl"
MONITOR_NAME = "monitor.csv"
CHECKPOINT_DIR = "checkpoints"
LATEST_NAME = "latest.yml"
TB_DIR = "tb"
MONITOR_FIELDS = ("r", "l", "t", "step")
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@dataclass(frozen=True)
class RunPaths:
    """File names inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def model(self) -> Path:
        return self.root / MODEL_NAME

    @property
    def vecnormalize(self) -> Path:
        return self.root / VECNORMALIZE_NAME

    @property
    def best_model(self) -> Path:
        return self.root / BEST_MODEL_NAME

    @property
    def best_vecnormalize(self) -> Path:
        return self.root / BEST_VECNORMALIZE_NAME

    @property
    def monitor(self) -> Path:
        return self.root / MONITOR_NAME

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def tb(self) -> Path:
        return self.root / TB_DIR


def env_folder_name(env_id: str) -> str:
    """``"ALE/Breakout-v5"`` -> ``"Breakout-v5"``: the environment part of a run folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", env_id.split("/")[-1])


def next_run_dir(root: str | os.PathLike[str], algo: str, env_id: str) -> Path:
    """A new, not yet existing ``<root>/<algo>/<Env>_<N>`` with N one more than the largest so far."""
    parent = Path(root) / algo
    name = env_folder_name(env_id)
    pattern = re.compile(rf"^{re.escape(name)}_(\d+)$")
    existing = [int(m.group(1)) for p in parent.glob(f"{name}_*") if (m := pattern.match(p.name))]
    return parent / f"{name}_{max(existing, default=0) + 1}"


def claim_run_dir(root: str | os.PathLike[str], algo: str, env_id: str) -> Path:
    """Create and return a new ``<root>/<algo>/<Env>_<N>`` (see :func:`next_run_dir`).

    ``mkdir`` without ``exist_ok`` is atomic: of several processes started at once into the same parent,
    exactly one creates each folder, and the others move on to the next N.
    """
    for _ in range(10_000):
        candidate = next_run_dir(root, algo, env_id)
        candidate.parent.mkdir(parents=True, exist_ok=True)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue  # another run claimed it between the listing and the mkdir
        return candidate
    raise UserError(f"cannot create a new run folder under {Path(root) / algo}; pass --run-dir")


def remove_stale_temporaries(root: Path) -> int:
    """Delete the temporary files of atomic writes that a killed process left in ``root`` (and below);
    returns how many. Only call it while no process writes into ``root``."""
    removed = 0
    for path in root.rglob(".*.tmp*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# ------------------------------------------------------------------------------------------ atomic writes


def _atomic(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path`` (ending in ``suffix``), then move it there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    _atomic(path, write)


def atomic_write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def atomic_save_model(model: Any, path: Path) -> None:
    """``model.save`` through a temporary ``.zip`` (SB3 appends ``.zip`` to names without it)."""
    _atomic(path, lambda tmp: model.save(str(tmp)), suffix=".zip")


def atomic_save_vecnormalize(venv: Any, path: Path) -> None:
    _atomic(path, lambda tmp: venv.save(str(tmp)))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise UserError(
            f"cannot read {path}: {error.__class__.__name__}; check the file or start a new run"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a mapping; restore it from the run's config or start a new run")
    return data


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    paths: RunPaths, model: Any, step: int, vecnormalize: Any | None, monitor_rows: int, keep: int = 2
) -> Path:
    """Write ``checkpoints/step_<step>.zip`` (+ VecNormalize stats), then commit it in ``latest.yml``.

    Older checkpoints beyond the newest ``keep`` are deleted after the commit (``keep=0`` keeps all).
    """
    model_path = paths.checkpoints / f"step_{step}.zip"
    atomic_save_model(model, model_path)
    record: dict[str, Any] = {"step": int(step), "model": model_path.name, "monitor_rows": int(monitor_rows)}
    if vecnormalize is not None:
        stats_path = paths.checkpoints / f"step_{step}_vecnormalize.pkl"
        atomic_save_vecnormalize(vecnormalize, stats_path)
        record["vecnormalize"] = stats_path.name
    record["time"] = time.time()
    atomic_write_yaml(paths.checkpoints / LATEST_NAME, record)
    _prune_checkpoints(paths.checkpoints, keep)
    return model_path


def _prune_checkpoints(folder: Path, keep: int) -> None:
    steps = sorted(
        int(m.group(1)) for p in folder.glob("step_*.zip") if (m := re.match(r"step_(\d+)\.zip$", p.name))
    )
    for step in steps[:-keep] if keep > 0 else []:
        for name in (f"step_{step}.zip", f"step_{step}_vecnormalize.pkl"):
            (folder / name).unlink(missing_ok=True)


def latest_checkpoint(paths: RunPaths) -> dict[str, Any] | None:
    """The newest committed checkpoint record (with absolute ``model``/``vecnormalize`` paths), or None."""
    latest = paths.checkpoints / LATEST_NAME
    if not latest.is_file():
        return None
    record = read_yaml(latest)
    record["model"] = paths.checkpoints / str(record["model"])
    if record.get("vecnormalize"):
        record["vecnormalize"] = paths.checkpoints / str(record["vecnormalize"])
    if not Path(record["model"]).is_file():
        raise UserError(f"{latest} names {record['model']}, which is missing; delete {latest} to start over")
    return record


# ------------------------------------------------------------------------------------------ episode log


class MonitorLog:
    """Appends one row per finished episode to ``monitor.csv`` (SB3 Monitor's format plus the env step).

    The first line is SB3's JSON header (``t_start``, ``env_id``); columns are ``r`` (unclipped return),
    ``l`` (length), ``t`` (seconds since ``t_start``) and ``step`` (total env steps when the episode ended).
    """

    def __init__(self, path: Path, env_id: str) -> None:
        self.path = path
        if path.is_file() and path.stat().st_size > 0:
            self.t_start = float(read_monitor_header(path).get("t_start", time.time()))
            self.rows = len(read_monitor(path))
        else:
            self.t_start = time.time()
            header = json.dumps({"t_start": self.t_start, "env_id": env_id})
            atomic_write_text(path, f"#{header}\n{','.join(MONITOR_FIELDS)}\n")
            self.rows = 0
        self._handle = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (kept open; close())
        self._writer = csv.writer(self._handle)

    def write(self, episode_return: float, length: int, step: int) -> None:
        elapsed = round(time.time() - self.t_start, 6)
        self._writer.writerow([round(float(episode_return), 6), int(length), elapsed, int(step)])
        self.rows += 1

    def flush(self, sync: bool = True) -> None:
        """Hand the rows to the OS (readers see them); ``sync`` also forces them to disk (checkpoints)."""
        self._handle.flush()
        if sync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()


def read_monitor_header(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    if not first.startswith("#"):
        return {}
    try:
        header = json.loads(first[1:])
    except json.JSONDecodeError:
        return {}
    return header if isinstance(header, dict) else {}


def read_monitor(path: Path) -> list[dict[str, float]]:
    """Rows of a ``monitor.csv`` as dicts of floats (``r``, ``l``, ``t`` and ``step`` when present)."""
    with open(path, encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    rows = []
    for row in csv.DictReader(lines):
        try:
            rows.append({key: float(value) for key, value in row.items() if key is not None and value != ""})
        except ValueError:
            continue  # a line cut short by a crash
    return rows


def truncate_monitor(path: Path, max_step: int) -> int:
    """Drop the episodes that ended after ``max_step`` (they are re-run after a resume); returns rows kept."""
    if not path.is_file():
        return 0
    header = read_monitor_header(path)
    # a row without all four fields is a line cut short by a killed process: it is dropped
    rows = [
        row for row in read_monitor(path) if set(MONITOR_FIELDS) <= row.keys() and row["step"] <= max_step
    ]
    lines = [f"#{json.dumps(header)}", ",".join(MONITOR_FIELDS)]
    lines += [f"{row['r']:.6g},{int(row['l'])},{row['t']:.6f},{int(row['step'])}" for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(rows)


# -------------------------------------------------------------------------------------------- TensorBoard


def event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("events.out.tfevents.*") if p.is_file())


def truncate_tensorboard(folder: Path, max_step: int) -> int:
    """Rewrite every event file under ``folder`` without the events logged after ``max_step``.

    Each file keeps its name (TensorBoard reads the files of a folder in name order), replaced atomically.
    Returns the number of events removed.
    """
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.summary.writer.record_writer import RecordWriter

    removed = 0
    for path in event_files(folder):
        events = list(LegacyEventFileLoader(str(path)).Load())  # unmigrated: rewritten byte for byte
        kept = [event for event in events if event.step <= max_step or event.HasField("file_version")]
        if len(kept) == len(events):
            continue
        removed += len(events) - len(kept)

        def write(tmp: Path, kept: list[Any] = kept) -> None:
            with open(tmp, "wb") as handle:
                writer = RecordWriter(handle)
                for event in kept:
                    writer.write(event.SerializeToString())
                writer.flush()

        _atomic(path, write)
    return removed


def wait_for_later_event_file_name(folder: Path) -> None:
    """Sleep (at most a second) until a new event file would be named after every one in ``folder``.

    Event files are named ``events.out.tfevents.<unix second>.<host>.<pid>...`` and read in name order: a
    resumed run starting within the same second as the killed one (a lower pid) would otherwise sort first,
    and its steps would appear before the earlier ones."""
    seconds = [
        int(match.group(1))
        for path in event_files(folder)
        if (match := re.match(r"events\.out\.tfevents\.(\d+)\.", path.name))
    ]
    if seconds:
        while time.time() < max(seconds) + 1:
            time.sleep(0.02)


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> [(step, value)] of every scalar in the event files under ``folder`` (in file order)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(folder):
        for event in EventFileLoader(str(path)).Load():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = float(value.simple_value)
                elif value.HasField("tensor"):
                    number = float(tensor_util.make_ndarray(value.tensor).item())
                else:
                    continue
                scalars.setdefault(value.tag, []).append((int(event.step), number))
    return scalars


def remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
