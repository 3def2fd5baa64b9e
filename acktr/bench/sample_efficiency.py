"""Sample efficiency: env steps until the 100-episode mean return first reaches a threshold.

ACKTR vs SB3's A2C and PPO, each with its zoo entry (``acktr/zoo/<algo>.yml``; the A2C/PPO entries are
rl-baselines3-zoo's), in the same run, on the same seeds. Every run is built by the run factory
(:func:`acktr.factory.build_run` from :func:`acktr.run_config.resolve_config`), i.e. exactly what
``acktr train --algo ALGO --env ENV --seed SEED`` builds: same env backend (torch-native for classic control),
same normalisation, same hyperparameters. The "100-episode mean" is SB3's training-episode window
(``ep_info_buffer``, raw returns, also under VecNormalize), checked after every vectorised env step; a run
that does not reach the threshold within the budget counts as censored at the budget. The report gives
per-seed steps, the median over seeds and the ratios ACKTR ÷ A2C and ACKTR ÷ PPO of the medians (goal: ≤ 0.5
and ≤ 1.0).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np


class _Ran(Protocol):
    """A benchmark run's result: it carries the spec it ran."""

    @property
    def spec(self) -> Any: ...


SpecT = TypeVar("SpecT")
ResultT = TypeVar("ResultT", bound=_Ran)


class Task(NamedTuple):
    threshold: float
    """Return the 100-episode training mean must reach."""
    budget: int
    """Default step budget."""
    to_budget: bool = False
    """Train to the budget even after the threshold (to report the final return at equal steps)."""


TASKS: dict[str, Task] = {
    "CartPole-v1": Task(475.0, 300_000),
    "Acrobot-v1": Task(-100.0, 500_000),
    "LunarLander-v3": Task(200.0, 1_000_000),
    "Pendulum-v1": Task(-200.0, 1_000_000),
    # MinAtar (Young & Tian 2019) with the paper's network: Atari-like learning measurable on a CPU
    "MinAtar/Breakout-v1": Task(8.0, 1_000_000, to_budget=True),
    "MinAtar/SpaceInvaders-v1": Task(40.0, 1_000_000, to_budget=True),
}
DEFAULT_ENVS = ("CartPole-v1", "Acrobot-v1", "LunarLander-v3", "Pendulum-v1")
ALGOS = ("acktr", "a2c", "ppo")  # the default comparison; --algos takes any name of acktr.algorithms


def add_selection_arguments(
    parser: argparse.ArgumentParser,
    tasks: Mapping[str, Any],
    default_envs: Sequence[str],
    default_algos: Sequence[str],
    seeds: int,
    envs_default_text: str | None = None,
) -> None:
    """``--envs``, ``--algos``, ``--seeds``, ``--first-seed``, ``--budget`` and ``--jobs`` of the seeded-run
    benchmarks (read back by :func:`parse_selection` and :func:`run_specs`); ``tasks`` maps env ids to their
    ``Task`` (with a ``budget``)."""
    parser.add_argument(
        "--envs",
        default=",".join(default_envs),
        help=f"comma-separated env ids among {', '.join(tasks)} "
        f"(default: {envs_default_text or ','.join(default_envs)})",
    )
    parser.add_argument(
        "--algos",
        default=",".join(default_algos),
        help=f"comma-separated registry names (as `acktr train --algo`; default: {','.join(default_algos)})",
    )
    parser.add_argument("--seeds", type=int, default=seeds, help=f"number of seeds (0..N-1; default {seeds})")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="ENV=STEPS",
        help="step budget for one env (repeatable); defaults: "
        + ", ".join(f"{env} {task.budget:g}" for env, task in tasks.items()),
    )
    parser.add_argument("--jobs", type=int, default=1, help="parallel worker processes (1 torch thread each)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(
        parser, TASKS, DEFAULT_ENVS, ALGOS, seeds=5, envs_default_text="the four classic-control ones"
    )
    parser.add_argument(
        "--acktr-override",
        action="append",
        default=[],
        metavar="ENV:KEY=VALUE",
        help="override one ACKTR zoo value for one env, as `acktr train -p KEY=VALUE` would, e.g. "
        "CartPole-v1:n_envs=16 (repeatable; reported)",
    )


@dataclass(frozen=True)
class RunSpec:
    algo: str
    env_id: str
    seed: int
    threshold: float
    budget: int
    overrides: tuple[str, ...] = ()
    to_budget: bool = False
    """``-p`` style ``KEY=VALUE`` overrides of the zoo entry."""


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    steps: int | None  # None: threshold not reached within the budget
    seconds: float
    final_mean: float | None = None  # 100-episode training mean when training stopped (None: no episode)


def parse_override(item: str) -> tuple[str, str]:
    """``"ENV:KEY=VALUE"`` -> (env, ``"KEY=VALUE"``)."""
    env_id, _, assignment = item.partition(":")
    key, _, value = assignment.partition("=")
    if not env_id or not key or not value:
        raise SystemExit(f"sample-efficiency: --acktr-override expects ENV:KEY=VALUE, got {item!r}")
    return env_id, assignment


def run_config(algo: str, env_id: str, seed: int, overrides: tuple[str, ...] = ()) -> Any:
    """The :class:`~acktr.run_config.RunConfig` ``acktr train`` would resolve for this run (on the CPU)."""
    from acktr.run_config import TrainOptions, resolve_config

    options = TrainOptions(
        env=env_id, algo=algo, seed=seed, device="cpu", overrides=list(overrides), tensorboard=False
    )
    return resolve_config(options)


def build_model(algo: str, env_id: str, seed: int, overrides: tuple[str, ...] = ()) -> Any:
    """The agent ``acktr train`` would build for this run, on its training env."""
    from acktr.factory import build_run

    _, model = build_run(run_config(algo, env_id, seed, overrides))
    return model


def steps_to_threshold(
    model: Any, threshold: float, budget: int, window: int = 100, horizon: int | None = None
) -> int | None:
    """Train ``model`` until the mean of its last ``window`` training episodes reaches ``threshold``.

    :param horizon: total steps passed to ``learn()``, i.e. the span of the learning-rate schedule (the zoo's
        ``n_timesteps``, as rl-zoo would run it); training still stops at ``budget``. Default: ``budget``.
    :return: env steps taken at that moment, or None if not reached within ``budget`` steps.
    """
    return measure(model, threshold, budget, window, horizon, to_budget=False)[0]


def measure(
    model: Any,
    threshold: float,
    budget: int,
    window: int = 100,
    horizon: int | None = None,
    to_budget: bool = False,
) -> tuple[int | None, float | None]:
    """Train ``model`` and return (env steps when the ``window``-episode training mean first reached
    ``threshold`` or None, that mean when training stopped). Training stops at the first crossing, or with
    ``to_budget`` at ``budget`` steps (the final return at equal steps); always at the budget or horizon."""
    from stable_baselines3.common.callbacks import BaseCallback

    def mean_return() -> float | None:
        episodes = model.ep_info_buffer
        if not episodes:
            return None
        return float(np.mean([info["r"] for info in list(episodes)[-window:]]))

    class StopAtThreshold(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.reached_at: int | None = None

        def _on_step(self) -> bool:
            if self.num_timesteps > budget:
                return False
            episodes = self.model.ep_info_buffer
            assert episodes is not None
            if self.reached_at is None and len(episodes) >= window:
                mean = mean_return()
                if mean is not None and mean >= threshold:
                    self.reached_at = self.num_timesteps
                    return to_budget
            return True

    if model.ep_info_buffer is not None and model.ep_info_buffer.maxlen < window:
        raise ValueError(f"stats_window_size must be >= {window} to measure a {window}-episode mean")
    callback = StopAtThreshold()
    model.learn(budget if horizon is None else horizon, callback=callback)
    reached_at = callback.reached_at
    return (reached_at if reached_at is not None and reached_at <= budget else None), mean_return()


def run_one(spec: RunSpec) -> RunResult:
    import torch as th

    from acktr.factory import build_run

    th.set_num_threads(1)
    start = time.perf_counter()
    config = run_config(spec.algo, spec.env_id, spec.seed, spec.overrides)
    venv, model = build_run(config)
    try:
        # Schedules (lin_*) decay over the zoo's own n_timesteps, as rl-zoo runs them, not over our budget.
        steps, final = measure(
            model, spec.threshold, spec.budget, horizon=config.n_timesteps, to_budget=spec.to_budget
        )
    finally:
        venv.close()
    return RunResult(spec, steps, time.perf_counter() - start, final)


def _median(values: list[int | None], budget: int) -> tuple[float, bool]:
    """Median with censored runs counted at the budget; second value: True if the median is censored."""
    filled = sorted(budget if v is None else v for v in values)
    median = statistics.median(filled)
    censored = any(v is None for v in values) and median >= budget
    return float(median), censored


def _fmt_steps(value: float, censored: bool) -> str:
    return f">{value / 1e3:.0f}k" if censored else f"{value / 1e3:.1f}k"


def format_report(
    results: list[RunResult], envs: list[str], algos: list[str], seeds: list[int], wall: float
) -> str:
    import stable_baselines3
    import torch

    lines = [
        "# Sample efficiency: env steps to reach the 100-episode mean threshold",
        "",
        f"Run: envs {', '.join(envs)}; algos {', '.join(algos)}; seeds {seeds}; "
        f"budgets {', '.join(f'{r.spec.env_id} {r.spec.budget:g}' for r in _first_per_env(results))}; "
        f"wall time {wall / 60:.1f} min.",
        f"Versions: stable-baselines3 {stable_baselines3.__version__}, torch {torch.__version__}, "
        f"python {platform.python_version()}, CPU, 1 torch thread per run.",
        "Runs built by acktr's run factory, as `acktr train` builds them (same env backends). "
        "Hyperparameters: zoo entries (acktr/zoo acktr.yml; a2c.yml / ppo.yml hold rl-zoo3 2.9.2's); "
        "each run's learning-rate schedule spans its own zoo n_timesteps (as rl-zoo runs it) and "
        "training stops at the budget or at the end of that zoo budget, whichever comes first. "
        "Medians count runs "
        "that did not reach the threshold at the budget ('>' marks a censored median).",
        "ACKTR overrides of its zoo entry: "
        + (
            "; ".join(
                f"{r.spec.env_id}: " + ", ".join(r.spec.overrides)
                for r in _first_per_env([r for r in results if r.spec.algo == "acktr" and r.spec.overrides])
            )
            or "none"
        )
        + ".",
        "",
        "| env | threshold | algo | median steps | reached | per seed (k steps) | ACKTR ÷ algo |",
        "|---|---|---|---|---|---|---|",
    ]
    for env_id in envs:
        by_algo = {
            algo: [r for r in results if r.spec.env_id == env_id and r.spec.algo == algo] for algo in algos
        }
        if not any(by_algo.values()):
            continue
        budget = next(r.spec.budget for runs in by_algo.values() for r in runs)
        medians = {algo: _median([r.steps for r in runs], budget) for algo, runs in by_algo.items() if runs}
        for algo, runs in by_algo.items():
            if not runs:
                continue
            median, censored = medians[algo]
            per_seed = ", ".join("—" if r.steps is None else f"{r.steps / 1e3:.0f}" for r in runs)
            ratio = ""
            if algo != "acktr" and "acktr" in medians:
                acktr_median, acktr_censored = medians["acktr"]
                bound = (
                    "≥ "
                    if acktr_censored and not censored
                    else "≤ "
                    if censored and not acktr_censored
                    else ""
                )
                ratio = "n/a" if acktr_censored and censored else f"{bound}{acktr_median / median:.2f}"
            reached = sum(r.steps is not None for r in runs)
            lines.append(
                f"| {env_id} | {TASKS[env_id].threshold:g} | {algo.upper()} | "
                f"{_fmt_steps(median, censored)} | {reached}/{len(runs)} | {per_seed} | {ratio} |"
            )
    lines += ["", "Goal: ACKTR ÷ A2C ≤ 0.5 and ACKTR ÷ PPO ≤ 1.0."]
    final_envs = [env_id for env_id in envs if TASKS[env_id].to_budget]
    if final_envs:
        lines += [
            "",
            "Final 100-episode training mean at the budget (these tasks train to the budget; mean ± std over "
            "seeds):",
            "",
            "| env | steps | algo | final return | per seed |",
            "|---|---|---|---|---|",
        ]
        for env_id in final_envs:
            for algo in algos:
                runs = [r for r in results if r.spec.env_id == env_id and r.spec.algo == algo]
                finals = [r.final_mean for r in runs if r.final_mean is not None]
                if not runs or not finals:
                    continue
                per_seed = ", ".join("—" if r.final_mean is None else f"{r.final_mean:.2f}" for r in runs)
                lines.append(
                    f"| {env_id} | {runs[0].spec.budget:,} | {algo.upper()} | "
                    f"{np.mean(finals):.2f} ± {np.std(finals):.2f} | {per_seed} |"
                )
    return "\n".join(lines)


def _first_per_env(results: list[RunResult]) -> list[RunResult]:
    seen: dict[str, RunResult] = {}
    for result in results:
        seen.setdefault(result.spec.env_id, result)
    return list(seen.values())


def parse_selection(
    args: argparse.Namespace, tasks: Mapping[str, Any], bench: str
) -> tuple[list[str], list[str], dict[str, int], list[int]]:
    """The envs, algorithms, per-env budgets and seeds asked for by ``--envs``, ``--algos``, ``--budget``,
    ``--seeds`` and ``--first-seed`` (shared by the seeded-run benchmarks); SystemExit names what is unknown.
    ``tasks`` maps env ids to their ``Task`` (with a ``budget``); ``bench`` prefixes the messages."""
    from acktr.algorithms import algorithm_names

    envs = [env.strip() for env in args.envs.split(",") if env.strip()]
    algos = [algo.strip().lower() for algo in args.algos.split(",") if algo.strip()]
    known_algos = algorithm_names()
    unknown = [env for env in envs if env not in tasks] + [algo for algo in algos if algo not in known_algos]
    if unknown:
        raise SystemExit(f"{bench}: unknown env/algo {unknown}; choose from {list(tasks)} and {known_algos}")
    budgets = {env: task.budget for env, task in tasks.items()}
    for item in args.budget:
        env, _, steps = item.partition("=")
        if env not in tasks or not steps:
            raise SystemExit(f"{bench}: --budget expects ENV=STEPS with ENV in {list(tasks)}, got {item!r}")
        budgets[env] = int(float(steps))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    return envs, algos, budgets, seeds


def run_specs(
    specs: Sequence[SpecT], run_one: Callable[[SpecT], ResultT], describe: Callable[[ResultT], str], jobs: int
) -> list[ResultT]:
    """Run every spec (in ``jobs`` worker processes when > 1), print one progress line per finished run
    (``describe(result)`` after its env, algorithm and seed) and return the results in the order of ``specs``.
    Each result has the ``spec`` it ran."""
    results: list[ResultT] = []

    def progress(result: ResultT) -> None:  # one line per finished run, so long runs can be followed
        results.append(result)
        spec = result.spec
        print(
            f"[{len(results)}/{len(specs)}] {spec.env_id} {spec.algo} seed {spec.seed}: {describe(result)}",
            file=sys.stderr,
            flush=True,
        )

    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for future in as_completed([pool.submit(run_one, spec) for spec in specs]):
                progress(future.result())
    else:
        for spec in specs:
            progress(run_one(spec))
    return sorted(results, key=lambda result: list(specs).index(result.spec))  # results carry copies


def run(args: argparse.Namespace) -> str:
    envs, algos, budgets, seeds = parse_selection(args, TASKS, "sample-efficiency")
    overrides: dict[str, list[str]] = {}
    for item in args.acktr_override:
        env, assignment = parse_override(item)
        if env not in TASKS:
            raise SystemExit(
                f"sample-efficiency: --acktr-override names unknown env {env!r}; use one of {list(TASKS)}"
            )
        overrides.setdefault(env, []).append(assignment)
    specs = [
        RunSpec(
            algo,
            env,
            seed,
            TASKS[env].threshold,
            budgets[env],
            tuple(overrides.get(env, [])) if algo == "acktr" else (),
            TASKS[env].to_budget,
        )
        for env in envs
        for algo in algos
        for seed in seeds
    ]
    start = time.perf_counter()
    results = run_specs(
        specs,
        run_one,
        lambda result: (
            ("not reached" if result.steps is None else f"{result.steps} steps")
            + f" ({result.seconds:.0f} s)"
        ),
        args.jobs,
    )
    return format_report(results, envs, algos, seeds, time.perf_counter() - start)
