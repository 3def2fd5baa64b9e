"""``acktr bench envs``: environment steps per second per backend, against SB3's and gymnasium's vector envs.

(a) Breakout with the same number of copies: our envpool and gymnasium backends vs SB3's ``make_atari_env``
    with ``DummyVecEnv`` / ``SubprocVecEnv`` (+ ``VecFrameStack(4)``); random actions.
    Also reports process CPU time per agent step, which bounds the achievable speed-up on this machine.
(b) CartPole at several batch sizes: our torch-native env (tensor fast path and SB3 adapter) vs gymnasium's
    numpy ``CartPoleVectorEnv``; random actions drawn before timing.
(c) The whole ACKTR training loop (``learn()``: rollouts and updates) and its rollouts alone on CartPole with
    ``--loop-envs`` copies: the torch backend with device-resident rollouts, the same env through SB3's
    generic numpy rollout loop, and the gymnasium backend.

Each number is the best of ``--repeats`` timed runs (the machine is shared, so the best run is the least
disturbed one), with the runs of the implementations interleaved so that load changes hit all of them;
steps/s counts agent steps of single environments (vector steps x copies).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

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
    parser.add_argument("--loop-envs", type=int, default=256, help="copies for the training-loop comparison")
    parser.add_argument(
        "--loop-updates", type=int, default=40, help="ACKTR updates (of 5 steps) per timed training-loop run"
    )


class _VecEnvTimer:
    """Times one SB3 VecEnv under uniformly random discrete actions: wall-clock steps/s and CPU per step."""

    def __init__(self, venv, vector_steps: int, seed: int = 0, in_process: bool = True) -> None:
        self.venv, self.vector_steps, self.in_process = venv, vector_steps, in_process
        self.rng = np.random.default_rng(seed)
        self.n_envs, self.n_actions = venv.num_envs, int(venv.action_space.n)
        self.best_rate = 0.0
        self.best_cpu_ms = float("inf")
        venv.reset()
        for _ in range(20):  # warm-up
            venv.step(self.rng.integers(0, self.n_actions, size=self.n_envs))

    def run(self) -> None:
        actions = self.rng.integers(0, self.n_actions, size=(self.vector_steps, self.n_envs))
        cpu_start, start = time.process_time(), time.perf_counter()
        for t in range(self.vector_steps):
            self.venv.step(actions[t])
        agent_steps = self.vector_steps * self.n_envs
        self.best_rate = max(self.best_rate, agent_steps / (time.perf_counter() - start))
        # process CPU time covers envpool's worker threads, not SubprocVecEnv's worker processes
        self.best_cpu_ms = min(self.best_cpu_ms, (time.process_time() - cpu_start) / agent_steps * 1e3)


def _breakout_rows(
    args: argparse.Namespace,
) -> tuple[list[tuple[str, str]], dict[str, float], dict[str, float | None]]:
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecFrameStack

    from acktr.envs import make_env

    n, steps = args.breakout_envs, args.breakout_steps
    timers: dict[str, _VecEnvTimer] = {
        "acktr envpool": _VecEnvTimer(make_env("Breakout", n_envs=n, seed=0, backend="envpool"), steps),
        "acktr gymnasium (DummyVecEnv)": _VecEnvTimer(
            make_env("Breakout", n_envs=n, seed=0, backend="gymnasium"), steps // 4
        ),
    }
    notes: list[tuple[str, str]] = []
    if importlib.util.find_spec("cv2") is None:
        notes.append(("SB3 make_atari_env", "n/a: SB3's AtariWrapper needs opencv-python(-headless)"))
    else:
        sb3_id = "ale_py:BreakoutNoFrameskip-v4"  # the module prefix registers ALE ids in subprocess workers
        dummy = VecFrameStack(make_atari_env(sb3_id, n_envs=n, seed=0, vec_env_cls=DummyVecEnv), 4)
        timers["SB3 make_atari_env + DummyVecEnv"] = _VecEnvTimer(dummy, steps // 4)
        if not args.skip_subprocess:
            subproc = VecFrameStack(make_atari_env(sb3_id, n_envs=n, seed=0, vec_env_cls=SubprocVecEnv), 4)
            timers["SB3 make_atari_env + SubprocVecEnv"] = _VecEnvTimer(subproc, steps // 4, in_process=False)
    for _ in range(args.repeats):  # interleave so that load changes on the shared machine hit all alike
        for timer in timers.values():
            timer.run()
    rates = {name: timer.best_rate for name, timer in timers.items()}
    cpu_ms = {name: timer.best_cpu_ms if timer.in_process else None for name, timer in timers.items()}
    for timer in timers.values():
        timer.venv.close()
    return notes, rates, cpu_ms


def _cartpole_rates(size: int, seconds: float, repeats: int) -> dict[str, float]:
    """Steps/s of CartPole at ``size`` copies; actions are drawn before timing (a cycled pool of 64 batches).

    Pre-drawn actions time the environments alone: drawn inside the loop, numpy's ``Generator.integers``
    (about 33 us for 4096 actions here) would cost more than ``torch.randint`` (about 20 us).
    """
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    from acktr.envs import make_env, make_torch_env

    # calibrate the number of vector steps so that one run lasts about `seconds`
    vector_steps = max(50, int(seconds / (2e-5 + size * 2e-8)))
    numpy_actions = [np.random.default_rng(i).integers(0, 2, size=size) for i in range(64)]
    torch_actions = [torch.as_tensor(actions) for actions in numpy_actions]

    def timed(step: Callable[[Any], Any], actions: Sequence[Any]) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            for t in range(vector_steps):
                step(actions[t % len(actions)])
            return vector_steps * size / (time.perf_counter() - start)

        return run

    numpy_env = CartPoleVectorEnv(num_envs=size)
    numpy_env.reset(seed=0)
    torch_env = make_torch_env("CartPole", n_envs=size, seed=0, device="cpu")
    torch_env.reset(seed=0)
    adapter = make_env("CartPole", n_envs=size, seed=0, backend="torch", device="cpu")
    adapter.reset()
    runs = {
        "gymnasium numpy": timed(numpy_env.step, numpy_actions),
        "acktr torch": timed(torch_env.step, torch_actions),
        "acktr torch SB3 adapter": timed(adapter.step, numpy_actions),
    }
    for run in runs.values():  # warm-up
        run()
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):  # interleave so that load changes hit all alike
        for name, run in runs.items():
            best[name] = max(best[name], run())
    return best


LOOP_PATHS = ("torch (device-resident rollouts)", "torch through SB3's numpy rollout loop", "gymnasium")


def _loop_rates(n_envs: int, updates: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(learn() steps/s, rollout-only steps/s) of ACKTR (MlpPolicy, n_steps 5) on CartPole per path."""
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.vec_env import VecEnvWrapper

    from acktr import ACKTR
    from acktr.envs.make import make_env

    class Hidden(VecEnvWrapper):  # changes nothing, but SB3's generic loop runs
        def reset(self) -> Any:
            return self.venv.reset()

        def step_wait(self) -> Any:
            return self.venv.step_wait()

    models = {}
    for name in LOOP_PATHS:
        env = make_env(
            "CartPole-v1", n_envs=n_envs, seed=0, backend="gymnasium" if name == "gymnasium" else "torch"
        )
        if name.startswith("torch through"):
            env = Hidden(env)
        model = ACKTR("MlpPolicy", env, n_steps=5, seed=0, device="cpu")
        model.learn(n_envs * 5 * 12)  # past the cold start, curvature built
        models[name] = model
    best = {name: (0.0, 0.0) for name in LOOP_PATHS}
    steps = n_envs * 5 * updates
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(steps, reset_num_timesteps=False)
            loop = steps / (time.perf_counter() - start)
            callback = CallbackList([])
            callback.init_callback(model)
            start = time.perf_counter()
            for _ in range(updates):
                model.collect_rollouts(model.env, callback, model.rollout_buffer, 5)
            rollout = steps / (time.perf_counter() - start)
            best[name] = (max(best[name][0], loop), max(best[name][1], rollout))
    return best


def _fmt(rate: float) -> str:
    return f"{rate:,.0f}"


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.torch_threads)
    cores = os.cpu_count() or 1
    lines = [
        "# Environment throughput",
        "",
        f"Machine: {platform.machine()}, {cores} cores (shared), torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s), CPU only. Steps/s count single-environment agent steps; "
        f"each number is the best of {args.repeats} runs, the runs of all implementations interleaved.",
        "",
        f"## Breakout, {args.breakout_envs} copies, random actions",
        "",
        "CPU ms per step: process CPU time (all threads) per agent step, best run; it does not depend on the "
        "load from other processes the way steps/s does (n/a: work in other processes).",
        "",
        "| implementation | steps/s | vs SB3 DummyVecEnv | CPU ms per step |",
        "|---|---:|---:|---:|",
    ]
    notes, breakout, cpu_ms = _breakout_rows(args)
    reference = breakout.get("SB3 make_atari_env + DummyVecEnv")
    for name, rate in breakout.items():
        ratio = f"{rate / reference:.2f}x" if reference else "n/a"
        cpu = cpu_ms[name]
        lines.append(f"| {name} | {_fmt(rate)} | {ratio} | {'n/a' if cpu is None else f'{cpu:.3f}'} |")
    for name, note in notes:
        lines.append(f"| {name} | {note} | | |")
    if reference:
        speedup = breakout["acktr envpool"] / reference
        verdict = "met" if speedup >= 3.0 else "NOT met"
        lines += ["", f"Goal envpool >= 3x SB3 DummyVecEnv: {speedup:.2f}x, {verdict}."]
        sb3_cpu, envpool_cpu = cpu_ms["SB3 make_atari_env + DummyVecEnv"], cpu_ms["acktr envpool"]
        if sb3_cpu is not None and envpool_cpu is not None:
            # SB3's DummyVecEnv runs on one core; envpool at best on all of them, at its own CPU cost per step
            lines.append(
                f"Ceiling on this machine: {cores} cores x (SB3 CPU per step / envpool CPU per step) = "
                f"{cores * sb3_cpu / envpool_cpu:.2f}x, reached only with perfect scaling on idle cores."
            )
    lines += [
        "",
        "## CartPole, random actions",
        "",
        "Tensor path: `make_torch_env(...).step(tensor)`. Actions are drawn before timing for every "
        "implementation.",
        "",
        "| copies | gymnasium numpy CartPoleVectorEnv | acktr torch (CPU, tensor path) | ratio | "
        "acktr torch via SB3 VecEnv adapter |",
        "|---:|---:|---:|---:|---:|",
    ]
    verdict_4096 = None
    for size in args.cartpole_sizes:
        rates = _cartpole_rates(size, args.cartpole_seconds, args.repeats)
        torch_vs_numpy = rates["acktr torch"] / rates["gymnasium numpy"]
        if size == 4096:
            verdict_4096 = torch_vs_numpy
        lines.append(
            f"| {size} | {_fmt(rates['gymnasium numpy'])} | {_fmt(rates['acktr torch'])} | "
            f"{torch_vs_numpy:.2f}x | "
            f"{_fmt(rates['acktr torch SB3 adapter'])} |"
        )
    if verdict_4096 is not None:
        cartpole_verdict = "met" if verdict_4096 >= 1.0 else "NOT met"
        lines += [
            "",
            f"Goal torch CartPole on CPU >= 1.0x numpy at 4096 copies: {verdict_4096:.2f}x, "
            f"{cartpole_verdict}.",
        ]
    loop = _loop_rates(args.loop_envs, args.loop_updates, args.repeats)
    reference_loop, reference_rollout = loop["gymnasium"]
    lines += [
        "",
        f"## CartPole training loop, ACKTR, {args.loop_envs} copies",
        "",
        f"`ACKTR('MlpPolicy', env, n_steps=5)` after 12 warm-up updates; {args.loop_updates} updates per "
        "timed run. Whole loop: `learn()` steps/s (rollouts and updates); rollouts: `collect_rollouts` "
        "alone.",
        "",
        "| path | whole loop steps/s | vs gymnasium | rollouts steps/s | vs gymnasium |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (whole, rollout) in loop.items():
        lines.append(
            f"| {name} | {_fmt(whole)} | {whole / reference_loop:.2f}x | {_fmt(rollout)} | "
            f"{rollout / reference_rollout:.2f}x |"
        )
    whole_ratio = loop[LOOP_PATHS[0]][0] / reference_loop
    lines += [
        "",
        f"Goal torch backend whole loop >= 3x gymnasium's at 256 copies: {whole_ratio:.2f}x, "
        f"{'met' if whole_ratio >= 3.0 else 'NOT met'}.",
    ]
    return "\n".join(lines) + "\n"
