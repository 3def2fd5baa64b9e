"""``acktr bench envs``: environment steps per second per backend, against SB3's and gymnasium's vector envs.

(a) Breakout with the same number of copies: our envpool and gymnasium backends vs SB3's ``make_atari_env``
    with ``DummyVecEnv`` / ``SubprocVecEnv`` (+ ``VecFrameStack(4)``); random actions.
(b) CartPole at several batch sizes: our torch-native env (tensor fast path and SB3 adapter) vs gymnasium's
    numpy ``CartPoleVectorEnv``; random actions.

Each number is the best of ``--repeats`` timed runs (the machine is shared, so the best run is the least
disturbed one); steps/s counts agent steps of single environments (vector steps x copies).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--breakout-envs", type=int, default=8, help="copies for the Breakout comparison")
    parser.add_argument(
        "--breakout-steps", type=int, default=1000, help="vector steps per timed Breakout run"
    )
    parser.add_argument("--cartpole-sizes", type=int, nargs="+", default=[16, 256, 4096])
    parser.add_argument("--cartpole-seconds", type=float, default=1.0, help="target length of a CartPole run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch intra-op threads for the torch envs"
    )
    parser.add_argument("--skip-subprocess", action="store_true", help="skip SB3's SubprocVecEnv reference")


def _best_rate(run: Callable[[], float], repeats: int) -> float:
    """Best steps/s over ``repeats`` calls of ``run`` (each returns its own steps/s)."""
    return max(run() for _ in range(repeats))


def _vec_env_rate(venv, vector_steps: int, repeats: int, seed: int = 0) -> float:
    """Steps/s of an SB3 VecEnv under uniformly random discrete actions."""
    rng = np.random.default_rng(seed)
    n_envs, n_actions = venv.num_envs, int(venv.action_space.n)
    venv.reset()
    for _ in range(20):  # warm-up
        venv.step(rng.integers(0, n_actions, size=n_envs))

    def run() -> float:
        actions = rng.integers(0, n_actions, size=(vector_steps, n_envs))
        start = time.perf_counter()
        for t in range(vector_steps):
            venv.step(actions[t])
        return vector_steps * n_envs / (time.perf_counter() - start)

    rate = _best_rate(run, repeats)
    venv.close()
    return rate


def _breakout_rows(args: argparse.Namespace) -> tuple[list[tuple[str, str]], dict[str, float]]:
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack

    from acktr.envs import make_env

    n, steps, repeats = args.breakout_envs, args.breakout_steps, args.repeats
    rates: dict[str, float] = {}
    rates["acktr envpool"] = _vec_env_rate(
        make_env("Breakout", n_envs=n, seed=0, backend="envpool"), steps, repeats
    )
    rates["acktr gymnasium (DummyVecEnv)"] = _vec_env_rate(
        make_env("Breakout", n_envs=n, seed=0, backend="gymnasium"), steps // 4, repeats
    )
    notes: list[tuple[str, str]] = []
    if importlib.util.find_spec("cv2") is None:
        notes.append(("SB3 make_atari_env", "n/a: SB3's AtariWrapper needs opencv-python(-headless)"))
        return notes, rates
    sb3_id = "ale_py:BreakoutNoFrameskip-v4"  # the module prefix registers ALE ids in subprocess workers
    dummy = VecFrameStack(make_atari_env(sb3_id, n_envs=n, seed=0, vec_env_cls=DummyVecEnv), 4)
    rates["SB3 make_atari_env + DummyVecEnv"] = _vec_env_rate(dummy, steps // 4, repeats)
    if not args.skip_subprocess:
        subproc = VecFrameStack(make_atari_env(sb3_id, n_envs=n, seed=0, vec_env_cls=SubprocVecEnv), 4)
        rates["SB3 make_atari_env + SubprocVecEnv"] = _vec_env_rate(subproc, steps // 4, repeats)
    return notes, rates


def _cartpole_rates(size: int, seconds: float, repeats: int) -> dict[str, float]:
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    from acktr.envs import make_env, make_torch_env

    rates: dict[str, float] = {}
    # calibrate the number of vector steps so that one run lasts about `seconds` (1 ms per step guess first)
    vector_steps = max(50, int(seconds / (2e-5 + size * 2e-8)))

    numpy_env = CartPoleVectorEnv(num_envs=size)
    numpy_env.reset(seed=0)
    rng = np.random.default_rng(0)

    def run_numpy() -> float:
        start = time.perf_counter()
        for _ in range(vector_steps):
            numpy_env.step(rng.integers(0, 2, size=size))
        return vector_steps * size / (time.perf_counter() - start)

    torch_env = make_torch_env("CartPole", n_envs=size, seed=0, device="cpu")
    torch_env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)

    def run_torch() -> float:
        start = time.perf_counter()
        for _ in range(vector_steps):
            torch_env.step(torch.randint(0, 2, (size,), generator=generator))
        return vector_steps * size / (time.perf_counter() - start)

    adapter = make_env("CartPole", n_envs=size, seed=0, backend="torch", device="cpu")
    adapter.reset()

    def run_adapter() -> float:
        start = time.perf_counter()
        for _ in range(vector_steps):
            adapter.step(rng.integers(0, 2, size=size))
        return vector_steps * size / (time.perf_counter() - start)

    runs = {"gymnasium numpy": run_numpy, "acktr torch": run_torch, "acktr torch SB3 adapter": run_adapter}
    for fn in runs.values():  # warm-up
        fn()
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):  # interleave so that load changes hit all three alike
        for name, fn in runs.items():
            best[name] = max(best[name], fn())
    rates.update(best)
    return rates


def _fmt(rate: float) -> str:
    return f"{rate:,.0f}"


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.torch_threads)
    lines = [
        "# Environment throughput",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s), CPU only. Steps/s count single-environment agent steps; "
        f"each number is the best of {args.repeats} runs.",
        "",
        f"## Breakout, {args.breakout_envs} copies, random actions",
        "",
        "| implementation | steps/s | vs SB3 DummyVecEnv |",
        "|---|---:|---:|",
    ]
    notes, breakout = _breakout_rows(args)
    reference = breakout.get("SB3 make_atari_env + DummyVecEnv")
    for name, rate in breakout.items():
        ratio = f"{rate / reference:.2f}x" if reference else "n/a"
        lines.append(f"| {name} | {_fmt(rate)} | {ratio} |")
    for name, note in notes:
        lines.append(f"| {name} | {note} | |")
    if reference:
        ratio = breakout["acktr envpool"] / reference
        verdict = "met" if ratio >= 3.0 else "NOT met"
        lines += ["", f"Goal envpool >= 3x SB3 DummyVecEnv: {ratio:.2f}x, {verdict}."]
    lines += [
        "",
        "## CartPole, random actions",
        "",
        "| copies | gymnasium numpy CartPoleVectorEnv | acktr torch (CPU, tensor path) | ratio | "
        "acktr torch via SB3 VecEnv adapter |",
        "|---:|---:|---:|---:|---:|",
    ]
    verdict_4096 = None
    for size in args.cartpole_sizes:
        rates = _cartpole_rates(size, args.cartpole_seconds, args.repeats)
        ratio = rates["acktr torch"] / rates["gymnasium numpy"]
        if size == 4096:
            verdict_4096 = ratio
        lines.append(
            f"| {size} | {_fmt(rates['gymnasium numpy'])} | {_fmt(rates['acktr torch'])} | {ratio:.2f}x | "
            f"{_fmt(rates['acktr torch SB3 adapter'])} |"
        )
    if verdict_4096 is not None:
        verdict = "met" if verdict_4096 >= 1.0 else "NOT met"
        lines += [
            "",
            f"Goal torch CartPole on CPU >= 1.0x numpy at 4096 copies: {verdict_4096:.2f}x, {verdict}.",
        ]
    return "\n".join(lines) + "\n"
