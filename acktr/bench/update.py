"""``acktr bench update``: one ACKTR update vs one SB3 A2C update on the same batch, side by side.

Both algorithms get SB3's Nature-CNN actor-critic (``CnnPolicy``) on Atari-shaped observations
``(4, 84, 84)`` uint8 with 4 actions, and identical rollout-buffer contents (``n_envs × n_steps``
transitions of random data). What is timed is ``algorithm.train()``, i.e. everything one update does:

- **ACKTR**: forward, sampled-Fisher backward with K-FAC statistics, training-loss backward,
  ``KFAC.precondition()`` (eigendecompositions refreshed every ``update_inverses_every`` updates, so
  their cost is amortised in the mean), SGD-with-momentum step, post-step KL measurement;
- **A2C**: forward, backward, grad-norm clipping, RMSprop step.

The two are timed interleaved (one of each per round) so that machine load affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

OBSERVATION_SHAPE = (4, 84, 84)
N_ACTIONS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batches",
        default="16x5,32x20",
        help="comma-separated N_ENVSxN_STEPS rollout shapes (default: 16x5 = 80 and 32x20 = 640)",
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed updates per batch size and algorithm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates before timing")
    parser.add_argument("--inverse-every", type=int, default=10, help="ACKTR update_inverses_every")
    parser.add_argument(
        "--inverse-method", choices=("eigen", "cholesky"), default="eigen", help="K-FAC inverse method"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device")


class AtariShapedEnv(gym.Env):
    """Observation/action spaces of a preprocessed Atari game; dynamics are irrelevant here."""

    observation_space = spaces.Box(0, 255, OBSERVATION_SHAPE, np.uint8)
    action_space = spaces.Discrete(N_ACTIONS)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return np.zeros(OBSERVATION_SHAPE, np.uint8), {}

    def step(self, action: int):
        return np.zeros(OBSERVATION_SHAPE, np.uint8), 0.0, False, False, {}


def _make_algorithms(n_envs: int, n_steps: int, args: argparse.Namespace) -> dict[str, Any]:
    from stable_baselines3 import A2C
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import DummyVecEnv

    from acktr.agents import ACKTR

    algorithms: dict[str, Any] = {}
    for name in ("ACKTR", "A2C"):
        venv = DummyVecEnv([AtariShapedEnv] * n_envs)
        if name == "ACKTR":
            algorithm = ACKTR(
                "CnnPolicy",
                venv,
                n_steps=n_steps,
                cold_iter=0,  # time K-FAC steps, not the plain-SGD warm-up
                update_inverses_every=args.inverse_every,
                kfac_kwargs={"inverse_method": args.inverse_method},
                seed=0,
                device=args.device,
            )
        else:
            algorithm = A2C("CnnPolicy", venv, n_steps=n_steps, seed=0, device=args.device)
        algorithm.set_logger(configure(folder=None, format_strings=[]))
        algorithms[name] = algorithm
    return algorithms


def _fill_buffers(algorithms: dict[str, Any], n_envs: int, n_steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    device = next(iter(algorithms.values())).device
    transitions = [
        (
            rng.integers(0, 256, (n_envs, *OBSERVATION_SHAPE), dtype=np.uint8),
            rng.integers(0, N_ACTIONS, (n_envs, 1)),
            rng.normal(size=n_envs).astype(np.float32),
            np.zeros(n_envs, dtype=np.float32),
            torch.as_tensor(rng.normal(size=n_envs), dtype=torch.float32, device=device),
            torch.as_tensor(-rng.random(n_envs) - 1.0, dtype=torch.float32, device=device),
        )
        for _ in range(n_steps)
    ]
    for algorithm in algorithms.values():
        buffer = algorithm.rollout_buffer
        buffer.reset()
        for transition in transitions:
            buffer.add(*transition)
        buffer.compute_returns_and_advantage(
            last_values=torch.zeros(n_envs, device=device), dones=np.zeros(n_envs, dtype=bool)
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for spec in str(args.batches).split(","):
        n_envs, n_steps = (int(part) for part in spec.lower().split("x"))
        algorithms = _make_algorithms(n_envs, n_steps, args)
        _fill_buffers(algorithms, n_envs, n_steps, seed=n_envs * n_steps)
        times: dict[str, list[float]] = {name: [] for name in algorithms}
        for round_index in range(args.warmup + args.rounds):
            for name, algorithm in algorithms.items():
                _synchronize(device)
                start = time.perf_counter()
                algorithm.train()
                _synchronize(device)
                if round_index >= args.warmup:
                    times[name].append(1000.0 * (time.perf_counter() - start))
        ours_mean, a2c_mean = statistics.fmean(times["ACKTR"]), statistics.fmean(times["A2C"])
        ours_median, a2c_median = statistics.median(times["ACKTR"]), statistics.median(times["A2C"])
        rows.append(
            f"| {n_envs}×{n_steps} = {n_envs * n_steps} | {ours_mean:.0f} | {a2c_mean:.0f} "
            f"| **{ours_mean / a2c_mean:.2f}×** | {ours_median:.0f} | {a2c_median:.0f} "
            f"| {ours_median / a2c_median:.2f}× |"
        )
    header = (
        f"ACKTR.train() vs SB3 A2C.train() (RMSprop) on SB3's Nature-CNN `CnnPolicy`, device={device}, "
        f"torch threads={torch.get_num_threads()}, K-FAC inverses every {args.inverse_every} updates "
        f"({args.inverse_method}), {args.rounds} interleaved rounds after {args.warmup} warm-up.\n"
        "The mean includes the amortised eigendecompositions; target ratio ≤ 1.25×.\n\n"
        "| batch | ACKTR mean ms | A2C mean ms | mean ratio "
        "| ACKTR median ms | A2C median ms | median ratio |\n"
        "|---:|---:|---:|---:|---:|---:|---:|"
    )
    return header + "\n" + "\n".join(rows)
