"""Exploration: the fraction of seeds that solve a sparse-reward task within a fixed budget.

NoisyACKTR (weights sampled from its K-FAC posterior) vs ACKTR with its entropy bonus vs SB3's PPO, each with
its zoo entry, in the same run, on the same seeds. Runs are built exactly as the sample-efficiency benchmark
builds them (:func:`acktr.bench.sample_efficiency.run_config` and the run factory, i.e. what ``acktr train
--algo ALGO --env ENV --seed SEED`` builds). Per run it records when the 100-episode training mean first
reached the task's threshold ("solved"), when a training episode first reached the goal at all
(``goal_return``: on MountainCar an episode shorter than the 200-step limit), and the 100-episode mean when
training stopped (at the solve, or at the budget). Every run may use the whole budget: ``learn()`` spans
``max(zoo n_timesteps, budget)``, so a zoo entry with a shorter schedule (rl-zoo's PPO on
MountainCarContinuous: 20k) is not cut short.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from acktr.bench.sample_efficiency import (
    add_selection_arguments,
    parse_override,
    parse_selection,
    run_config,
    run_specs,
)


class Task(NamedTuple):
    threshold: float
    """The 100-episode training mean that counts as solved (gymnasium's ``reward_threshold``)."""
    goal_return: float
    """An episode with a return above this reached the goal."""
    budget: int
    """Default step budget."""


TASKS: dict[str, Task] = {
    # -1 a step, 200-step limit: a return above -200 means the car reached the flag. 1M steps: at 300k no
    # method solved more than 1 seed in 5 (zoo/benchmarks/exploration.md)
    "MountainCar-v0": Task(-110.0, -200.0, 1_000_000),
    # +100 at the flag minus the action cost: a positive return means the car reached it
    "MountainCarContinuous-v0": Task(90.0, 0.0, 100_000),
    # MinAtar Breakout: a (denser) Atari-like game; the sample-efficiency benchmark's threshold
    "MinAtar/Breakout-v1": Task(8.0, 0.0, 1_000_000),
}
DEFAULT_ENVS = ("MountainCar-v0", "MountainCarContinuous-v0")
ALGOS = ("noisy-acktr", "acktr", "ppo")
# ACKTR "with its entropy bonus", on the settings NoisyACKTR's entries use (zoo/noisy_acktr.yml): ACKTR's own
# MountainCar-v0 entry (SB2's) has no entropy bonus, and it has no MountainCarContinuous entry (the default
# block already has ent_coef 0.01; the env settings follow NoisyACKTR's).
DEFAULT_ACKTR_OVERRIDES: dict[str, tuple[str, ...]] = {
    "MountainCar-v0": ("ent_coef=0.01",),
    "MountainCarContinuous-v0": ("normalize=true", "n_envs=16"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(
        parser, TASKS, DEFAULT_ENVS, ALGOS, seeds=5, envs_default_text="the two MountainCar tasks"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="ALGO:ENV:KEY=VALUE",
        help="override one zoo value of one algorithm on one env, as `acktr train -p KEY=VALUE` would "
        "(repeatable; reported). Default: ACKTR gets "
        + "; ".join(f"{env}: {', '.join(items)}" for env, items in DEFAULT_ACKTR_OVERRIDES.items()),
    )


@dataclass(frozen=True)
class RunSpec:
    algo: str
    env_id: str
    seed: int
    budget: int
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    solved_at: int | None
    """Env steps when the 100-episode training mean first reached the threshold (None: not within budget)."""
    goal_at: int | None
    """Env steps when a training episode first reached the goal (None: never)."""
    final_mean: float | None
    seconds: float
    noise_scale: float | None = None
    """NoisyACKTR: the noise scale and the measured KL of its last rollout."""
    kl_perturbation: float | None = None


def train_and_watch(
    model: Any, task: Task, budget: int, horizon: int
) -> tuple[int | None, int | None, float | None]:
    """Train until solved or ``budget`` steps: (steps at solve, steps at the first goal episode, final
    mean)."""
    from stable_baselines3.common.callbacks import BaseCallback

    window = 100

    class Watch(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.solved_at: int | None = None
            self.goal_at: int | None = None

        def _on_step(self) -> bool:
            if self.goal_at is None:
                for info in self.locals.get("infos", ()):
                    episode = info.get("episode")
                    if episode is not None and episode["r"] > task.goal_return:
                        self.goal_at = self.num_timesteps
                        break
            episodes = list(self.model.ep_info_buffer or [])[-window:]
            if len(episodes) >= window and np.mean([info["r"] for info in episodes]) >= task.threshold:
                self.solved_at = self.num_timesteps
                return False
            return self.num_timesteps < budget

    watch = Watch()
    model.learn(horizon, callback=watch)
    episodes = list(model.ep_info_buffer or [])[-window:]
    final = float(np.mean([info["r"] for info in episodes])) if episodes else None
    return watch.solved_at, watch.goal_at, final


def run_one(spec: RunSpec) -> RunResult:
    import torch as th

    from acktr.factory import build_run

    th.set_num_threads(1)
    start = time.perf_counter()
    config = run_config(spec.algo, spec.env_id, spec.seed, spec.overrides)
    venv, model = build_run(config)
    try:
        solved, goal, final = train_and_watch(
            model, TASKS[spec.env_id], spec.budget, max(config.n_timesteps, spec.budget)
        )
    finally:
        venv.close()
    return RunResult(
        spec,
        solved,
        goal,
        final,
        time.perf_counter() - start,
        getattr(model, "noise_scale", None),
        getattr(model, "kl_perturbation", None),
    )


def _steps(values: list[int | None]) -> str:
    return ", ".join("—" if v is None else f"{v / 1e3:.0f}" for v in values)


def format_report(
    results: list[RunResult], envs: list[str], algos: list[str], seeds: list[int], wall: float
) -> str:
    import stable_baselines3
    import torch

    budgets = {r.spec.env_id: r.spec.budget for r in results}
    overrides = sorted({(r.spec.algo, r.spec.env_id, item) for r in results for item in r.spec.overrides})
    lines = [
        "# Exploration: fraction of seeds that solve a sparse-reward task within a budget",
        "",
        f"Run: envs {', '.join(envs)}; algos {', '.join(algos)}; seeds {seeds}; budgets "
        + ", ".join(f"{env} {budgets[env]:,}" for env in envs if env in budgets)
        + f"; wall time {wall / 60:.1f} min.",
        f"Versions: stable-baselines3 {stable_baselines3.__version__}, torch {torch.__version__}, CPU, "
        "1 torch thread per run.",
        "Runs built by acktr's run factory, as `acktr train` builds them, with each algorithm's zoo entry "
        "(noisy_acktr.yml, acktr.yml, ppo.yml = rl-zoo3's); every run may use the whole budget. Solved: the "
        "100-episode training mean reached the threshold (training stops there). Goal: a training episode "
        "reached the goal at least once. Final: the 100-episode training mean when training stopped.",
        "Overrides of the zoo entries: "
        + ("; ".join(f"{algo} on {env}: {item}" for algo, env, item in overrides) or "none")
        + ".",
        "",
        "| env | threshold | algo | solved | steps to solve (k, per seed) | reached goal | first goal (k) "
        "| final mean (median) | per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for env_id in envs:
        for algo in algos:
            runs = [r for r in results if r.spec.env_id == env_id and r.spec.algo == algo]
            if not runs:
                continue
            finals = [r.final_mean for r in runs if r.final_mean is not None]
            median = f"{statistics.median(finals):.1f}" if finals else "—"
            per_seed = ", ".join("—" if r.final_mean is None else f"{r.final_mean:.1f}" for r in runs)
            solved = sum(r.solved_at is not None for r in runs)
            goal = sum(r.goal_at is not None for r in runs)
            lines.append(
                f"| {env_id} | {TASKS[env_id].threshold:g} | {algo} | {solved}/{len(runs)} | "
                f"{_steps([r.solved_at for r in runs])} | {goal}/{len(runs)} | "
                f"{_steps([r.goal_at for r in runs])} | {median} | {per_seed} |"
            )
    noisy = [r for r in results if r.noise_scale is not None]
    if noisy:
        lines += [
            "",
            "NoisyACKTR's noise at the end of each run (scale s, measured KL(π_mean ‖ π_perturbed)):",
            "",
            "| env | seed | noise scale | KL of the last rollout |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r.spec.env_id} | {r.spec.seed} | {r.noise_scale:.3g} | {r.kl_perturbation:.3g} |"
            for r in noisy
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    from acktr.algorithms import algorithm_names

    envs, algos, budgets, seeds = parse_selection(args, TASKS, "exploration")
    known = algorithm_names()
    overrides: dict[tuple[str, str], list[str]] = {
        ("acktr", env): list(items) for env, items in DEFAULT_ACKTR_OVERRIDES.items()
    }
    if args.override:
        overrides = {}  # explicit overrides replace the defaults
    for item in args.override:
        algo, _, rest = item.partition(":")
        env, assignment = parse_override(rest)
        if algo not in known or env not in TASKS:
            raise SystemExit(f"exploration: --override expects ALGO:ENV:KEY=VALUE, got {item!r}")
        overrides.setdefault((algo, env), []).append(assignment)
    specs = [
        RunSpec(algo, env, seed, budgets[env], tuple(overrides.get((algo, env), [])))
        for env in envs
        for algo in algos
        for seed in seeds
    ]
    start = time.perf_counter()
    results = run_specs(
        specs,
        run_one,
        lambda result: (
            f"solved at {result.solved_at}, goal at {result.goal_at}, final {result.final_mean} "
            f"({result.seconds:.0f} s)"
        ),
        args.jobs,
    )
    return format_report(results, envs, algos, seeds, time.perf_counter() - start)
