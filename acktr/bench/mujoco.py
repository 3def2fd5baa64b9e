"""MuJoCo: final 100-episode return at equal env steps, ACKTR and NPG against SB3 PPO and sb3-contrib TRPO.

Every run is built by the run factory exactly as ``acktr train --algo ALGO --env ENV --seed SEED`` builds
it (zoo hyperparameters: ours for ACKTR/NPG, rl-baselines3-zoo's for PPO/TRPO, observation normalisation
where the zoo asks for it, envpool backend), and trains ``--budget`` env steps with learning-rate schedules
that span the zoo's own ``n_timesteps``. Each finished run is appended to a JSON-lines results file
(``--results``), so a long bench that is interrupted resumes where it stopped and a report can be re-made
from the file alone (``--report-only``). The report gives, per env and algorithm, the final 100-episode
training mean (mean ± std over seeds, and per seed), the best 100-episode mean along the way, wall time per
run, the published references of ``DESIGN.md`` §8, and a PNG of the learning curves (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from acktr.bench.sample_efficiency import add_selection_arguments, parse_selection, run_config, run_specs


class Task(NamedTuple):
    budget: int
    """Default step budget (the published numbers are at 1M)."""
    published: dict[str, float]
    """Published final returns at 1M steps by source (DESIGN.md §8)."""


TASKS: dict[str, Task] = {
    "HalfCheetah-v5": Task(1_000_000, {"SB3 PPO zoo": 5819, "SB3 A2C zoo": 3041, "baselines ACKTR": 1450}),
    "Hopper-v5": Task(1_000_000, {"SB3 PPO zoo": 2410, "SB3 A2C zoo": 733, "baselines ACKTR": 2428}),
    "Walker2d-v5": Task(1_000_000, {"SB3 PPO zoo": 3479, "SB3 A2C zoo": 582, "baselines ACKTR": 1217}),
    "Ant-v5": Task(1_000_000, {}),
}
DEFAULT_ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")
ALGOS = ("acktr", "npg", "ppo", "trpo")
WINDOW = 100
"""Episodes in the training mean that is reported (SB3's ``ep_info_buffer`` window)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser, TASKS, DEFAULT_ENVS, ALGOS, seeds=3)
    parser.add_argument(
        "--steps", type=float, default=None, help="step budget for every env (overrides the defaults)"
    )
    parser.add_argument(
        "--results",
        default="mujoco_runs.jsonl",
        help="JSON-lines file that receives each finished run; runs already in it are not run again "
        "(default: mujoco_runs.jsonl)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: make the report from the runs already in --results",
    )
    parser.add_argument("--plot", default=None, help="also draw the learning curves into this PNG")


@dataclass(frozen=True)
class RunSpec:
    algo: str
    env_id: str
    seed: int
    budget: int


@dataclass
class RunResult:
    spec: RunSpec
    seconds: float
    episode_steps: list[int] = field(default_factory=list)
    """Env step at which each training episode ended, shape (episodes,)."""
    episode_returns: list[float] = field(default_factory=list)
    """Raw (unnormalised) return of each training episode, shape (episodes,)."""

    @property
    def final_mean(self) -> float | None:
        """Mean return of the last ``WINDOW`` training episodes (None: no episode finished)."""
        if not self.episode_returns:
            return None
        return float(np.mean(self.episode_returns[-WINDOW:]))

    @property
    def best_mean(self) -> float | None:
        """Best ``WINDOW``-episode moving mean along the run (over at least ``WINDOW`` episodes if any)."""
        from acktr.plotting import moving_average

        returns = np.asarray(self.episode_returns, dtype=np.float64)
        if returns.size == 0:
            return None
        averages = moving_average(returns, WINDOW)
        full = averages[WINDOW - 1 :] if returns.size >= WINDOW else averages[-1:]
        return float(full.max())

    def to_json(self) -> str:
        return json.dumps(
            {
                **asdict(self.spec),
                "seconds": self.seconds,
                "episode_steps": self.episode_steps,
                "episode_returns": self.episode_returns,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> RunResult:
        data = json.loads(line)
        spec = RunSpec(data["algo"], data["env_id"], int(data["seed"]), int(data["budget"]))
        return cls(spec, float(data["seconds"]), list(data["episode_steps"]), list(data["episode_returns"]))


def load_results(path: str | os.PathLike[str]) -> dict[RunSpec, RunResult]:
    """The runs recorded in a results file (the last record of a spec wins; a torn last line is ignored)."""
    results: dict[RunSpec, RunResult] = {}
    if not os.path.exists(path):
        return results
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                result = RunResult.from_json(line)
            except (ValueError, KeyError, TypeError) as error:
                print(f"mujoco: skipping unreadable line {number} of {path}: {error}")
                continue
            results[result.spec] = result
    return results


def append_result(path: str | os.PathLike[str], result: RunResult) -> None:
    """Append one run as one line, flushed and synced, so a crash loses at most the run in progress."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(result.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_one(spec: RunSpec) -> RunResult:
    """Train one run as ``acktr train`` would build it, recording every training episode's raw return."""
    import torch as th
    from stable_baselines3.common.callbacks import BaseCallback

    from acktr.factory import build_run

    th.set_num_threads(1)
    start = time.perf_counter()
    config = run_config(spec.algo, spec.env_id, spec.seed)
    venv, model = build_run(config)
    steps: list[int] = []
    returns: list[float] = []

    class RecordEpisodes(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                episode = info.get("episode")
                if episode is not None:
                    steps.append(int(self.num_timesteps))
                    returns.append(float(episode["r"]))
            return self.num_timesteps < spec.budget

    try:
        model.learn(max(spec.budget, int(config.n_timesteps)), callback=RecordEpisodes())
    finally:
        venv.close()
    return RunResult(spec, time.perf_counter() - start, steps, returns)


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):,.0f} ± {np.std(values):,.0f}"


def format_report(
    results: list[RunResult], envs: list[str], algos: list[str], seeds: list[int], plot: str | None
) -> str:
    import stable_baselines3
    import torch

    budgets = sorted({r.spec.budget for r in results})
    lines = [
        "# MuJoCo: final 100-episode training return at equal env steps",
        "",
        f"Runs: envs {', '.join(envs)}; algos {', '.join(algos)}; seeds {seeds}; "
        f"budgets {', '.join(f'{b:,}' for b in budgets) or '—'} env steps. Each run built by acktr's run "
        "factory as `acktr train --algo ALGO --env ENV --seed SEED` builds it (zoo hyperparameters; PPO and "
        "TRPO: rl-baselines3-zoo's tuned entries; envpool backend), 1 torch thread per run.",
        f"Versions: stable-baselines3 {stable_baselines3.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}, {platform.machine()} CPU, {os.cpu_count()} cores.",
        "Final: mean of the last 100 training episodes (raw returns) when training stopped; mean ± std over "
        "seeds. Best: the best 100-episode moving mean along the run.",
        "",
        "| env | algo | steps | final return | per seed | best | wall min/run | published at 1M |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for env_id in envs:
        published = "; ".join(f"{name} {value:,.0f}" for name, value in TASKS[env_id].published.items())
        for algo in algos:
            runs = sorted(
                (r for r in results if r.spec.env_id == env_id and r.spec.algo == algo),
                key=lambda r: r.spec.seed,
            )
            if not runs:
                continue
            finals = [r.final_mean for r in runs if r.final_mean is not None]
            bests = [r.best_mean for r in runs if r.best_mean is not None]
            per_seed = ", ".join("—" if r.final_mean is None else f"{r.final_mean:,.0f}" for r in runs)
            minutes = np.mean([r.seconds for r in runs]) / 60
            run_budgets = sorted({r.spec.budget for r in runs})
            lines.append(
                f"| {env_id} | {algo.upper()} | {', '.join(f'{b / 1e6:g}M' for b in run_budgets)} | "
                f"{_fmt(finals)} | {per_seed} | {_fmt(bests)} | {minutes:.1f} | {published or '—'} |"
            )
    lines += [
        "",
        "Goal (issue 12): ACKTR and NPG each above baselines' ACKTR on all three envs, and at or above SB3 "
        "PPO on at least two (at 1M steps).",
    ]
    if plot:
        lines += ["", f"Learning curves: `{Path(plot).name}`."]
    return "\n".join(lines)


def plot_curves(results: list[RunResult], envs: list[str], algos: list[str], out: str) -> Path:
    """One panel per env: per algorithm the mean over seeds of the 100-episode moving mean, min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from acktr.plotting import moving_average, on_common_grid

    shown = [env for env in envs if any(r.spec.env_id == env for r in results)]
    figure, axes_list = plt.subplots(
        1, max(1, len(shown)), figsize=(5 * max(1, len(shown)), 4), squeeze=False
    )
    for axes, env_id in zip(axes_list[0], shown, strict=True):
        for algo in algos:
            curves = [
                (np.asarray(r.episode_steps), moving_average(np.asarray(r.episode_returns), WINDOW))
                for r in results
                if r.spec.env_id == env_id and r.spec.algo == algo and len(r.episode_steps) > 1
            ]
            if not curves:
                continue
            grid, stacked = on_common_grid(curves)
            (line,) = axes.plot(grid, stacked.mean(axis=0), label=f"{algo.upper()} ({len(curves)})")
            axes.fill_between(
                grid, stacked.min(axis=0), stacked.max(axis=0), alpha=0.2, color=line.get_color()
            )
        axes.set_title(env_id)
        axes.set_xlabel("environment steps")
        axes.set_ylabel(f"return (mean of last {WINDOW} episodes)")
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
    figure.tight_layout()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path


def run(args: argparse.Namespace) -> str:
    envs, algos, budgets, seeds = parse_selection(args, TASKS, "mujoco")
    if args.steps is not None:
        budgets = {env: int(args.steps) for env in budgets}
    specs = [RunSpec(algo, env, seed, budgets[env]) for env in envs for algo in algos for seed in seeds]
    done = load_results(args.results)
    if not args.report_only:
        todo = [spec for spec in specs if spec not in done]
        if len(todo) < len(specs):
            print(f"mujoco: {len(specs) - len(todo)} of {len(specs)} runs already in {args.results}")

        def describe(result: RunResult) -> str:
            append_result(args.results, result)  # in the parent process, once per finished run
            done[result.spec] = result
            final = result.final_mean
            return (
                "no episode" if final is None else f"final {final:,.0f}"
            ) + f" ({result.seconds / 60:.1f} min)"

        run_specs(todo, run_one, describe, args.jobs)
    results = [done[spec] for spec in specs if spec in done]
    if args.plot and results:
        plot_curves(results, envs, algos, args.plot)
    return format_report(results, envs, algos, seeds, args.plot)
