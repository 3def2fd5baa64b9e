"""``acktr bench throughput``: env steps/s of a whole training process, ours against SB3 A2C's Atari pipeline.

Five measurements, each in its own freshly spawned process (so peak memory is that run's alone), run one
after the other on the same machine with the same torch thread count:

1. **acktr**: the run ``acktr train --env ENV`` builds (zoo defaults, the run factory, its env backend),
   warmed up, then ``learn()`` timed over ``--steps`` env steps; the share of that time spent in ``train()``
   (the update) is measured by wrapping it.
2. **SB3 A2C**: ``A2C("CnnPolicy", VecFrameStack(make_atari_env("<Game>NoFrameskip-v4", n_envs=16), 4))``
   with A2C's defaults, the same warm-up and timing, as its users run it (``OMP_WAIT_POLICY`` unset);
   and once more with the OpenMP wait policy the ``acktr`` command sets (``PASSIVE``), so that what the
   setting buys and what the engine buys are reported apart.
3. **env only**: our env backend for the same ``n_envs`` stepped with random actions (the ceiling).
4. **SB3 env only**: SB3's pipeline of 2. stepped with random actions, for its memory.

Ratios printed: acktr ÷ A2C (target ≥ 2), acktr ÷ env-only (target ≥ 0.5), peak RSS acktr ÷ A2C (≤ 1.2), and
each agent's memory above its own env process (peak RSS minus the env-only run's), which separates what the
agent holds from what its env pipeline holds (32 envpool copies against SB3's 16 ALE copies).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import time
from typing import Any

from acktr.cli import OPENMP_WAIT_POLICY

ATARI_REFERENCE_ENVS = 16  # SB3 / rl-zoo's A2C Atari setting


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="Breakout", help="an Atari game (short name or ALE id)")
    parser.add_argument("--steps", type=int, default=20_000, help="env steps timed per measurement")
    parser.add_argument("--warmup", type=int, default=4_000, help="env steps run before timing")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both agents (default: acktr train's)"
    )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _timed_learn(model: Any, warmup: int, steps: int) -> dict[str, float]:
    """Steps/s of ``model.learn`` after a warm-up, and the share of the time spent in ``train()``."""
    train = model.train
    spent = {"train": 0.0}

    def timed_train() -> None:
        start = time.perf_counter()
        train()
        spent["train"] += time.perf_counter() - start

    model.train = timed_train
    model.learn(warmup)
    spent["train"] = 0.0
    start_steps, start = model.num_timesteps, time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    done = model.num_timesteps - start_steps
    return {"steps_per_s": done / elapsed, "train_share": spent["train"] / elapsed, "n_envs": model.n_envs}


def _measure_ours(env: str, warmup: int, steps: int, threads: int | None) -> dict[str, Any]:
    from acktr.factory import build_run, set_threads
    from acktr.run_config import TrainOptions, resolve_config

    config = resolve_config(TrainOptions(env=env, seed=0))
    used = set_threads(config, threads)
    venv, model = build_run(config)
    try:
        result = _timed_learn(model, warmup, steps)
    finally:
        venv.close()
    return {**result, "threads": used, "backend": config.backend_used, "rss_mb": _peak_rss_mb()}


def _measure_sb3_a2c(env: str, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from acktr.envs import resolve_env_id

    gym.register_envs(ale_py)
    game = resolve_env_id(env).removeprefix("ALE/").split("-")[0]
    torch.set_num_threads(threads)
    venv = VecFrameStack(make_atari_env(f"{game}NoFrameskip-v4", n_envs=ATARI_REFERENCE_ENVS, seed=0), 4)
    try:
        result = _timed_learn(A2C("CnnPolicy", venv, seed=0, device="cpu"), warmup, steps)
    finally:
        venv.close()
    return {**result, "threads": threads, "rss_mb": _peak_rss_mb()}


def _random_steps_per_s(venv: Any, steps: int) -> float:
    """Env steps/s of ``venv`` under uniformly random discrete actions (about ``steps`` env steps, the
    actions drawn before timing); closes ``venv``."""
    import numpy as np

    try:
        venv.reset()
        n_envs = venv.num_envs
        vector_steps = max(1, steps // n_envs)
        actions = np.random.default_rng(0).integers(0, int(venv.action_space.n), size=(vector_steps, n_envs))
        start = time.perf_counter()
        for t in range(vector_steps):
            venv.step(actions[t])
        elapsed = time.perf_counter() - start
    finally:
        venv.close()
    return vector_steps * n_envs / elapsed


def _measure_sb3_env_only(env: str, steps: int) -> dict[str, Any]:
    import ale_py
    import gymnasium as gym
    import stable_baselines3  # noqa: F401  (imported as in the A2C run, for a comparable baseline)
    import torch  # noqa: F401
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    from acktr.envs import resolve_env_id

    gym.register_envs(ale_py)
    game = resolve_env_id(env).removeprefix("ALE/").split("-")[0]
    venv = VecFrameStack(make_atari_env(f"{game}NoFrameskip-v4", n_envs=ATARI_REFERENCE_ENVS, seed=0), 4)
    return {"steps_per_s": _random_steps_per_s(venv, steps), "rss_mb": _peak_rss_mb()}


def _measure_env_only(env: str, n_envs: int, backend: str, steps: int) -> dict[str, Any]:
    from acktr.envs import make_env

    venv = make_env(env, n_envs=n_envs, seed=0, backend=backend)
    return {"steps_per_s": _random_steps_per_s(venv, steps), "rss_mb": _peak_rss_mb()}


def _in_fresh_process(function: Any, *args: Any, openmp_wait_policy: str | None = None) -> dict[str, Any]:
    """``function(*args)`` in a freshly spawned process; ``openmp_wait_policy`` sets its
    ``OMP_WAIT_POLICY`` (None: unset, OpenMP's default of spinning a while before sleeping)."""
    saved = os.environ.get("OMP_WAIT_POLICY")
    if openmp_wait_policy is None:
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = openmp_wait_policy
    try:  # a spawned child takes the environment at its start
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(function, args)
    finally:
        if saved is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = saved


def run(args: argparse.Namespace) -> str:
    from acktr.envs import is_atari, resolve_env_id

    if not is_atari(resolve_env_id(args.env)):
        raise SystemExit(f"bench throughput: {args.env!r} is not an Atari game; pass e.g. --env Breakout")
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("bench throughput: --steps must be >= 1 and --warmup >= 0")
    # acktr as `acktr train` runs it (its OpenMP wait policy, or the user's); SB3 A2C as its users run it
    # (OpenMP's default) and with acktr's policy, so the engine and the setting are compared apart
    policy = os.environ.get("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)
    ours = _in_fresh_process(
        _measure_ours, args.env, args.warmup, args.steps, args.threads, openmp_wait_policy=policy
    )
    print(f"acktr: {ours['steps_per_s']:,.0f} steps/s", flush=True)
    a2c = _in_fresh_process(_measure_sb3_a2c, args.env, args.warmup, args.steps, ours["threads"])
    print(f"SB3 A2C: {a2c['steps_per_s']:,.0f} steps/s", flush=True)
    a2c_same = _in_fresh_process(
        _measure_sb3_a2c, args.env, args.warmup, args.steps, ours["threads"], openmp_wait_policy=policy
    )
    print(f"SB3 A2C (OMP_WAIT_POLICY={policy}): {a2c_same['steps_per_s']:,.0f} steps/s", flush=True)
    env_only = _in_fresh_process(_measure_env_only, args.env, ours["n_envs"], ours["backend"], args.steps)
    print(f"env only: {env_only['steps_per_s']:,.0f} steps/s", flush=True)
    sb3_env = _in_fresh_process(_measure_sb3_env_only, args.env, args.steps)
    print(f"SB3 env only: {sb3_env['steps_per_s']:,.0f} steps/s", flush=True)
    ours_above_env = ours["rss_mb"] - env_only["rss_mb"]
    a2c_above_env = a2c["rss_mb"] - sb3_env["rss_mb"]

    lines = [
        f"# Training throughput on {args.env}: `acktr train` vs SB3 A2C's Atari pipeline",
        "",
        f"Each row is one fresh process: {args.warmup:,} warm-up steps, then {args.steps:,} timed env steps "
        f"of `learn()`; torch threads {ours['threads']} for both agents. acktr: the zoo entry as "
        f"`acktr train --env {args.env}` builds it ({ours['n_envs']} envs, backend {ours['backend']}, "
        f"OMP_WAIT_POLICY={policy} as the acktr command sets it). "
        "SB3 A2C: `A2C('CnnPolicy')` with its defaults on "
        f"`make_atari_env(..., n_envs={ATARI_REFERENCE_ENVS})` + `VecFrameStack(4)`, run as its users run it "
        f"(OpenMP's default wait policy: idle threads spin a while) and with OMP_WAIT_POLICY={policy}. "
        "Env only: our backend "
        "stepped with random actions; SB3 env only: SB3's pipeline stepped the same way. Machine: "
        f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores.",
        "",
        "| run | env steps/s | time in train() | peak RSS MB |",
        "|---|---:|---:|---:|",
        f"| acktr | {ours['steps_per_s']:,.0f} | {ours['train_share']:.0%} | {ours['rss_mb']:,.0f} |",
        f"| SB3 A2C | {a2c['steps_per_s']:,.0f} | {a2c['train_share']:.0%} | {a2c['rss_mb']:,.0f} |",
        f"| SB3 A2C, OMP_WAIT_POLICY={policy} | {a2c_same['steps_per_s']:,.0f} | "
        f"{a2c_same['train_share']:.0%} | {a2c_same['rss_mb']:,.0f} |",
        f"| env only | {env_only['steps_per_s']:,.0f} | — | {env_only['rss_mb']:,.0f} |",
        f"| SB3 env only | {sb3_env['steps_per_s']:,.0f} | — | {sb3_env['rss_mb']:,.0f} |",
        "",
        f"- acktr ÷ SB3 A2C: **{ours['steps_per_s'] / a2c['steps_per_s']:.2f}×** (target ≥ 2.0)",
        f"- acktr ÷ SB3 A2C with the same OpenMP wait policy: "
        f"**{ours['steps_per_s'] / a2c_same['steps_per_s']:.2f}×**",
        f"- acktr ÷ env only: **{ours['steps_per_s'] / env_only['steps_per_s']:.2f}** (target ≥ 0.5)",
        f"- peak RSS acktr ÷ SB3 A2C: **{ours['rss_mb'] / a2c['rss_mb']:.2f}×** (target ≤ 1.2)",
        f"- memory above the env process (peak RSS − env-only peak RSS): acktr {ours_above_env:,.0f} MB, "
        f"SB3 A2C {a2c_above_env:,.0f} MB; env processes {env_only['rss_mb']:,.0f} MB "
        f"({ours['n_envs']} envs, {ours['backend']}) vs {sb3_env['rss_mb']:,.0f} MB "
        f"({ATARI_REFERENCE_ENVS} envs, SB3)",
    ]
    return "\n".join(lines) + "\n"
