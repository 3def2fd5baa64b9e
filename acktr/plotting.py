"""``acktr plot``: learning curves (episode return vs env steps) from the runs' ``monitor.csv``.

Runs with the same algorithm and environment form one curve: the mean over runs of the moving-average
return, interpolated onto a common step grid, with the min-max band shaded. A single run shows its
moving average over the faint per-episode returns.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from acktr.errors import UserError
from acktr.runs import CONFIG_NAME, MONITOR_NAME, read_monitor, read_yaml

GRID_POINTS = 200


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each index (fewer at the start). Shape (n,) -> (n,)."""
    window = max(1, int(window))
    cumulative = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    index = np.arange(1, len(values) + 1)
    lower = np.maximum(0, index - window)
    return (cumulative[index] - cumulative[lower]) / (index - lower)


def on_common_grid(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Curves ``(steps (n_i,), values (n_i,))`` interpolated onto ``GRID_POINTS`` steps that every curve
    covers: returns (grid (G,), values (R, G)) for R curves."""
    end = min(float(steps[-1]) for steps, _ in curves)
    start = max(float(steps[0]) for steps, _ in curves)
    grid = np.linspace(start, end, GRID_POINTS) if end > start else np.array([end])
    return grid, np.stack([np.interp(grid, steps, values) for steps, values in curves])


def load_curve(run_dir: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(label, steps, returns) of a run: label ``"<algo> <env id>"``, followed by the run's ``-p`` overrides
    when it had any (so seeds of one configuration share a label and other configurations get their own),
    arrays of shape (episodes,)."""
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass folders made by acktr train")
    monitor = run_dir / MONITOR_NAME
    if not monitor.is_file():
        raise UserError(f"{run_dir} has no {MONITOR_NAME}; pass a run folder made by acktr train")
    rows = read_monitor(monitor)
    if not rows:
        raise UserError(f"{monitor} holds no finished episode yet; train longer before plotting")
    if "step" in rows[0]:
        steps = np.array([row["step"] for row in rows])
    else:  # a plain SB3 Monitor file: count steps from the episode lengths
        steps = np.cumsum([row["l"] for row in rows])
    returns = np.array([row["r"] for row in rows])
    label = run_dir.name
    if (run_dir / CONFIG_NAME).is_file():
        config = read_yaml(run_dir / CONFIG_NAME)
        label = f"{config.get('algo', '?')} {config.get('env_id', '?')}"
        overrides = config.get("overrides") or []
        if overrides:
            label += f" [{', '.join(str(override) for override in overrides)}]"
    order = np.argsort(steps, kind="stable")
    return label, steps[order], returns[order]


def plot_runs(
    run_dirs: list[str] | list[Path],
    out: str | Path = "curve.png",
    window: int = 20,
    title: str | None = None,
) -> Path:
    """Draw the learning curves of ``run_dirs`` into ``out`` (PNG, or any format matplotlib writes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for run_dir in run_dirs:
        label, steps, returns = load_curve(Path(run_dir))
        groups[label].append((steps, returns))

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, curves in groups.items():
        if len(curves) == 1:
            steps, returns = curves[0]
            (line,) = axes.plot(steps, moving_average(returns, window), label=label)
            axes.scatter(steps, returns, s=3, alpha=0.15, color=line.get_color())
            continue
        grid, smoothed = on_common_grid(
            [(steps, moving_average(returns, window)) for steps, returns in curves]
        )
        (line,) = axes.plot(grid, smoothed.mean(axis=0), label=f"{label} ({len(curves)} runs)")
        axes.fill_between(
            grid, smoothed.min(axis=0), smoothed.max(axis=0), alpha=0.25, color=line.get_color()
        )
    axes.set_xlabel("environment steps")
    axes.set_ylabel(f"episode return (moving average of {window})")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return out_path


__all__ = ["load_curve", "moving_average", "on_common_grid", "plot_runs"]
