"""``acktr bench update``: one ACKTR update vs one SB3 A2C update on the same batch, side by side.

Both algorithms get the same SB3 actor-critic policy — the Nature CNN (``--policy cnn``, Atari-shaped
``(4, 84, 84)`` uint8 observations, 4 actions) or a 64-64 MLP (``--policy mlp``, CartPole-shaped 4-d
observations, 2 actions) — and identical rollout-buffer contents (``n_envs × n_steps`` transitions of random
data). What is timed is ``algorithm.train()``, i.e. everything one update does:

- **ACKTR**: forward, sampled-Fisher backward with K-FAC statistics (on a subset with
  ``--statistics-fraction``), training-loss backward, ``KFAC.precondition()`` (decompositions refreshed every
  ``update_inverses_every`` updates, amortised in the mean), SGD-with-momentum step, KL measurement;
- **A2C**: forward, backward, grad-norm clipping, RMSprop step.

The two are timed interleaved (one of each per round) so that machine load affects both alike. ACKTR's
phases (``time/update_*_ms``) are averaged into a second table. ``--memory`` also measures the peak resident
memory each algorithm's updates add (CPU: in a forked child per algorithm; CUDA: max allocated).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from acktr.curvature.approximations import APPROXIMATIONS

POLICIES: dict[str, tuple[tuple[int, ...], np.dtype, int, str]] = {
    # name -> (observation shape, dtype, number of actions, SB3 policy alias)
    "cnn": ((4, 84, 84), np.dtype(np.uint8), 4, "CnnPolicy"),
    "mlp": ((4,), np.dtype(np.float32), 2, "MlpPolicy"),
}
PHASES = ("forward", "fisher_backward", "backward", "step", "kl")
# ACKTR's own K-FAC configuration (agents/acktr.py DEFAULT_KFAC_OPTIONS), the benchmark's default
ACKTR_DEFAULT: dict[str, Any] = {
    "curvature": "lowrank",
    "statistics_fraction": "auto",
    "row_fraction": 0.25,
    "sketch_min_dim": 2048,
    "update_factors_every": "auto",
}
# Named K-FAC configurations for --presets (the Pareto table of zoo/benchmarks/update.md); "acktr-default" is
# ACKTR's DEFAULT_KFAC_OPTIONS, "lowrank-subsampled" the zoo's Atari/MinAtar setting.
PRESETS: dict[str, dict[str, Any]] = {
    "exact": {"curvature": "eigen", "statistics_fraction": 1.0, "row_fraction": 1.0},
    "exact-subsampled": {"curvature": "eigen", "statistics_fraction": 0.25, "row_fraction": 1.0},
    "acktr-default": dict(ACKTR_DEFAULT),
    "lowrank-subsampled": {"curvature": "lowrank", "statistics_fraction": 0.125, "row_fraction": 0.25},
    "eva": {"curvature": "eva", "statistics_fraction": 1.0, "row_fraction": 1.0},
    "eva-subsampled": {"curvature": "eva", "statistics_fraction": 0.125, "row_fraction": 0.25},
    # ACKTR's default with the statistics pass (and the KL measurement) on every update / every 4th update
    "factors-every-1": {**ACKTR_DEFAULT, "update_factors_every": 1},
    "factors-every-4": {**ACKTR_DEFAULT, "update_factors_every": 4},
    # ACKTR's default with every factor dense (its default before wide factors were sketched)
    "lowrank-dense": {**ACKTR_DEFAULT, "sketch_min_dim": None},
}


def _fraction_or_auto(text: str) -> float | str:
    return text if text == "auto" else float(text)


def _count_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batches",
        default=None,
        help="comma-separated N_ENVSxN_STEPS rollout shapes (default: 16x5,32x20 for cnn; 8x5,2048x1 mlp)",
    )
    parser.add_argument(
        "--policy", choices=tuple(POLICIES), default="cnn", help="cnn (Nature CNN) or mlp (64-64)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed updates per batch size and algorithm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates before timing")
    parser.add_argument("--inverse-every", type=int, default=10, help="ACKTR update_inverses_every")
    parser.add_argument(
        "--curvature",
        choices=tuple(APPROXIMATIONS),
        default=ACKTR_DEFAULT["curvature"],
        help="K-FAC approximation (KFAC curvature=...; default: ACKTR's)",
    )
    parser.add_argument("--rank", type=int, default=64, help="eigenpairs kept by --curvature lowrank")
    parser.add_argument(
        "--statistics-fraction",
        type=_fraction_or_auto,
        default=ACKTR_DEFAULT["statistics_fraction"],
        help="fraction of the batch the statistics use (default: ACKTR's)",
    )
    parser.add_argument(
        "--row-fraction",
        type=float,
        default=ACKTR_DEFAULT["row_fraction"],
        help="fraction of conv (example, position) rows used (default: ACKTR's)",
    )
    parser.add_argument("--stagger", action="store_true", help="spread decomposition refreshes over updates")
    parser.add_argument(
        "--sketch-min-dim",
        type=int,
        default=ACKTR_DEFAULT["sketch_min_dim"],
        help="K-FAC sketch_min_dim: low-rank factors at least this wide kept as sketches, 0 for none "
        "(default: ACKTR's)",
    )
    parser.add_argument(
        "--factors-every",
        dest="update_factors_every",
        type=_count_or_auto,
        default=ACKTR_DEFAULT["update_factors_every"],
        help="K-FAC update_factors_every: the statistics pass (and ACKTR's KL measurement) every Nth update; "
        "auto: ACKTR's (4 for the MLP's discrete actions, 1 for the CNN)",
    )
    parser.add_argument(
        "--presets",
        default=None,
        help="comma-separated named configurations to compare in one run (overrides the K-FAC options "
        f"above): {', '.join(PRESETS)}",
    )
    parser.add_argument("--memory", action="store_true", help="also measure the peak memory of the updates")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device")


class ShapedEnv(gym.Env):
    """Observation/action spaces of the benchmarked policy; dynamics are irrelevant here."""

    def __init__(self, policy: str) -> None:
        shape, dtype, n_actions, _ = POLICIES[policy]
        high = 255 if dtype == np.uint8 else 1.0
        self.observation_space = spaces.Box(0, high, shape, dtype)
        self.action_space = spaces.Discrete(n_actions)
        self._zeros = np.zeros(shape, dtype)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self._zeros, {}

    def step(self, action: int):
        return self._zeros, 0.0, False, False, {}


def kfac_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "curvature": args.curvature,
        "rank": args.rank,
        "statistics_fraction": args.statistics_fraction,
        "row_fraction": args.row_fraction,
        "stagger_refresh": args.stagger,
        "update_factors_every": args.update_factors_every,
        "sketch_min_dim": args.sketch_min_dim or None,
    }


def _make_algorithm(name: str, n_envs: int, n_steps: int, args: argparse.Namespace) -> Any:
    from stable_baselines3 import A2C
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv

    from acktr.agents import ACKTR

    venv = DummyVecEnv([lambda: ShapedEnv(args.policy)] * n_envs)
    alias = POLICIES[args.policy][3]
    if name == "ACKTR":
        algorithm = ACKTR(
            alias,
            venv,
            n_steps=n_steps,
            cold_iter=0,  # time K-FAC steps, not the plain-SGD warm-up
            update_inverses_every=args.inverse_every,
            kfac_kwargs=kfac_options(args),
            seed=0,
            device=args.device,
        )
    else:
        algorithm = A2C(alias, venv, n_steps=n_steps, seed=0, device=args.device)
    algorithm.set_logger(Logger(folder=None, output_formats=[]))
    return algorithm


def _fill_buffer(algorithm: Any, policy: str, n_envs: int, n_steps: int, seed: int) -> None:
    shape, dtype, n_actions, _ = POLICIES[policy]
    rng = np.random.default_rng(seed)
    device = algorithm.device
    buffer = algorithm.rollout_buffer
    buffer.reset()
    for _ in range(n_steps):
        if dtype == np.uint8:
            observation = rng.integers(0, 256, (n_envs, *shape), dtype=np.uint8)
        else:
            observation = rng.normal(size=(n_envs, *shape)).astype(dtype)
        buffer.add(
            observation,
            rng.integers(0, n_actions, (n_envs, 1)),
            rng.normal(size=n_envs).astype(np.float32),
            np.zeros(n_envs, dtype=np.float32),
            torch.as_tensor(rng.normal(size=n_envs), dtype=torch.float32, device=device),
            torch.as_tensor(-rng.random(n_envs) - 1.0, dtype=torch.float32, device=device),
        )
    buffer.compute_returns_and_advantage(
        last_values=torch.zeros(n_envs, device=device), dones=np.zeros(n_envs, dtype=bool)
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_update_memory_mb(name: str, n_envs: int, n_steps: int, args: argparse.Namespace) -> float:
    """Peak memory the updates add beyond the built model and filled buffer (MB)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        algorithm = _make_algorithm(name, n_envs, n_steps, args)
        _fill_buffer(algorithm, args.policy, n_envs, n_steps, seed=n_envs * n_steps)
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(3):
            algorithm.train()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: build, fill, then measure how far the updates push the peak RSS
        os.close(read_end)
        try:
            algorithm = _make_algorithm(name, n_envs, n_steps, args)
            _fill_buffer(algorithm, args.policy, n_envs, n_steps, seed=n_envs * n_steps)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            for _ in range(3):
                algorithm.train()
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            os.write(write_end, str((after - before) / 1024).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        text = reader.read()
    os.waitpid(pid, 0)
    return float(text) if text else float("nan")


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def run(args: argparse.Namespace) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.presets:
        return _report(args)[0]
    names = [name.strip() for name in str(args.presets).split(",") if name.strip()]
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise SystemExit(f"bench update: unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    summaries, details = [], []
    for name in names:
        preset_args = argparse.Namespace(**{**vars(args), **PRESETS[name]})
        report, ratios = _report(preset_args)
        options = ", ".join(f"{key}={value}" for key, value in PRESETS[name].items())
        cells = " | ".join(f"{ratio:.2f}×" for _, ratio in ratios)
        summaries.append(f"| {name} | {options} | {cells} |")
        details.append(f"### {name}\n\n{report}")
    batches = [label for label, _ in ratios]
    table = (
        f"ACKTR update ÷ SB3 A2C update per K-FAC configuration (mean over {args.rounds} interleaved rounds, "
        f"`{POLICIES[args.policy][3]}`, torch threads={torch.get_num_threads()}; target ≤ 1.25×):\n\n"
        f"| preset | K-FAC options | {' | '.join(batches)} |\n|---|---|{'---:|' * len(batches)}\n"
        + "\n".join(summaries)
    )
    return table + "\n\n" + "\n\n".join(details)


def _report(args: argparse.Namespace) -> tuple[str, list[tuple[str, float]]]:
    """The markdown report of one configuration and its (batch label, mean ratio) pairs."""
    device = torch.device(args.device)
    batches = args.batches or ("16x5,32x20" if args.policy == "cnn" else "8x5,2048x1")
    rows, phase_rows, memory_rows = [], [], []
    ratios: list[tuple[str, float]] = []
    for spec in str(batches).split(","):
        n_envs, n_steps = (int(part) for part in spec.lower().split("x"))
        algorithms = {name: _make_algorithm(name, n_envs, n_steps, args) for name in ("ACKTR", "A2C")}
        for algorithm in algorithms.values():
            _fill_buffer(algorithm, args.policy, n_envs, n_steps, seed=n_envs * n_steps)
        times: dict[str, list[float]] = {name: [] for name in algorithms}
        phases: dict[str, list[float]] = {phase: [] for phase in PHASES}
        for round_index in range(args.warmup + args.rounds):
            for name, algorithm in algorithms.items():
                _synchronize(device)
                start = time.perf_counter()
                algorithm.train()
                _synchronize(device)
                if round_index >= args.warmup:
                    times[name].append(1000.0 * (time.perf_counter() - start))
                    if name == "ACKTR":
                        for phase in PHASES:
                            phases[phase].append(algorithm.last_update_ms.get(phase, 0.0))
        ours_mean, a2c_mean = statistics.fmean(times["ACKTR"]), statistics.fmean(times["A2C"])
        ours_median, a2c_median = statistics.median(times["ACKTR"]), statistics.median(times["A2C"])
        label = f"{n_envs}×{n_steps} = {n_envs * n_steps}"
        ratios.append((label, ours_mean / a2c_mean))
        rows.append(
            f"| {label} | {_ms(ours_mean)} | {_ms(a2c_mean)} | **{ours_mean / a2c_mean:.2f}×** "
            f"| {_ms(ours_median)} | {_ms(a2c_median)} | {ours_median / a2c_median:.2f}× |"
        )
        cells = " | ".join(f"{statistics.fmean(phases[phase]):.1f}" for phase in PHASES)
        phase_rows.append(f"| {label} | {cells} | {a2c_mean:.1f} |")
        if args.memory:
            ours_mb = _peak_update_memory_mb("ACKTR", n_envs, n_steps, args)
            a2c_mb = _peak_update_memory_mb("A2C", n_envs, n_steps, args)
            memory_rows.append(
                f"| {label} | {ours_mb:.1f} | {a2c_mb:.1f} | {ours_mb / max(a2c_mb, 1e-9):.2f}× |"
            )
    options = ", ".join(f"{key}={value}" for key, value in kfac_options(args).items())
    header = (
        f"ACKTR.train() vs SB3 A2C.train() (RMSprop) on SB3's `{POLICIES[args.policy][3]}` "
        f"({args.policy}), device={device}, torch threads={torch.get_num_threads()}, K-FAC {options}, "
        f"decompositions every {args.inverse_every} updates, {args.rounds} interleaved rounds after "
        f"{args.warmup} warm-up.\nThe mean includes the amortised decompositions; target ratio ≤ 1.25×.\n\n"
        "| batch | ACKTR mean ms | A2C mean ms | mean ratio "
        "| ACKTR median ms | A2C median ms | median ratio |\n"
        "|---:|---:|---:|---:|---:|---:|---:|"
    )
    report = header + "\n" + "\n".join(rows)
    report += (
        "\n\nACKTR's update by phase (mean ms; `forward` includes the statistics hooks when the statistics "
        "use the whole batch, `fisher_backward` includes the statistics forward on a subset otherwise, "
        "`step` includes decomposition refreshes and preconditioning):\n\n"
        f"| batch | {' | '.join(PHASES)} | A2C whole update |\n|---:|{'---:|' * (len(PHASES) + 1)}\n"
        + "\n".join(phase_rows)
    )
    if memory_rows:
        report += (
            "\n\nPeak memory added by 3 updates beyond the built model and buffer (MB; CPU: peak RSS growth "
            "in a forked process per algorithm):\n\n| batch | ACKTR | A2C | ratio |\n|---:|---:|---:|---:|\n"
            + "\n".join(memory_rows)
        )
    return report, ratios
