"""``acktr bench update``: one K-FAC (ACKTR) update vs one RMSprop (SB3 A2C) update, side by side.

Both updates start from the same SB3 Nature-CNN actor-critic on Atari-shaped observations
``(4, 84, 84)`` uint8 with 4 actions and the same batch, and include everything an update does:

- **ours**: forward, sampled-Fisher backward inside ``collect_statistics()``, training-loss backward,
  ``KFAC.precondition()`` (inverses refreshed every ``--inverse-every`` updates, so their cost is
  amortised in the mean), SGD-with-momentum step;
- **A2C**: forward, training-loss backward, grad-norm clipping, RMSprop step (SB3's A2C settings).

The two are timed interleaved (one of each per round) so that machine load affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from acktr.curvature import KFAC


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batches", default="80,640", help="comma-separated batch sizes (default: 80=16x5, 640=32x20)"
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed updates per batch size and method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates before timing")
    parser.add_argument("--inverse-every", type=int, default=10, help="K-FAC update_inverses_every")
    parser.add_argument(
        "--inverse-method", choices=("eigen", "cholesky"), default="eigen", help="K-FAC inverse method"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device")


def _make_policy(device: torch.device, seed: int):
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    torch.manual_seed(seed)
    observation_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    policy = ActorCriticCnnPolicy(observation_space, spaces.Discrete(4), lr_schedule=lambda _: 7e-4)
    return policy.to(device)


def _losses(policy, observations, actions, returns, advantages):
    values, log_prob, entropy = policy.evaluate_actions(observations, actions)
    values = values.flatten()
    loss = -(advantages * log_prob).mean() - 0.01 * entropy.mean() + 0.5 * F.mse_loss(returns, values)
    return loss, values


def _make_ours(policy, inverse_every: int, inverse_method: str) -> Callable[..., None]:
    kfac = KFAC(
        policy,
        lr=0.25,
        kl_clip=1e-3,
        update_inverses_every=inverse_every,
        inverse_method=inverse_method,
        warn_unsupported=False,
    )
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.25 * (1 - 0.9), momentum=0.9)

    def update(observations, actions, returns, advantages) -> None:
        optimizer.zero_grad()
        with kfac.collect_statistics():
            values, log_prob, _ = policy.evaluate_actions(observations, actions)
            distribution = policy.get_distribution(observations)
            sampled = distribution.sample()
            policy_fisher_loss = -distribution.log_prob(sampled).mean()
            values = values.flatten()
            value_target = (values + torch.randn_like(values)).detach()
            value_fisher_loss = (values - value_target).square().mean()
            (policy_fisher_loss + value_fisher_loss).backward(retain_graph=True)
        optimizer.zero_grad()
        loss = -(advantages * log_prob).mean() + 0.5 * F.mse_loss(returns, values)
        loss.backward()
        kfac.precondition()
        optimizer.step()

    return update


def _make_a2c(policy) -> Callable[..., None]:
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)

    def update(observations, actions, returns, advantages) -> None:
        loss, _ = _losses(policy, observations, actions, returns, advantages)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        optimizer.step()

    return update


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = [int(b) for b in str(args.batches).split(",")]
    rows = []
    for batch in batches:
        generator = torch.Generator().manual_seed(batch)
        observations = torch.randint(0, 256, (batch, 4, 84, 84), generator=generator, dtype=torch.uint8)
        observations = observations.to(device).float()
        actions = torch.randint(0, 4, (batch,), generator=generator).to(device)
        returns = torch.randn(batch, generator=generator).to(device)
        advantages = torch.randn(batch, generator=generator).to(device)
        methods = {
            "ours": _make_ours(_make_policy(device, 0), args.inverse_every, args.inverse_method),
            "a2c": _make_a2c(_make_policy(device, 0)),
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        for round_index in range(args.warmup + args.rounds):
            for name, update in methods.items():
                _synchronize(device)
                start = time.perf_counter()
                update(observations, actions, returns, advantages)
                _synchronize(device)
                if round_index >= args.warmup:
                    times[name].append(1000.0 * (time.perf_counter() - start))
        ours_mean, a2c_mean = statistics.fmean(times["ours"]), statistics.fmean(times["a2c"])
        ours_median, a2c_median = statistics.median(times["ours"]), statistics.median(times["a2c"])
        rows.append(
            f"| {batch} | {ours_mean:.1f} | {a2c_mean:.1f} | **{ours_mean / a2c_mean:.2f}×** "
            f"| {ours_median:.1f} | {a2c_median:.1f} | {ours_median / a2c_median:.2f}× |"
        )
    header = (
        f"K-FAC update vs SB3 A2C (RMSprop) update on SB3's Nature-CNN actor-critic, device={device}, "
        f"torch threads={torch.get_num_threads()}, inverses every {args.inverse_every} updates "
        f"({args.inverse_method}), {args.rounds} interleaved rounds after {args.warmup} warm-up.\n"
        "Mean includes the amortised eigendecompositions; target ratio ≤ 1.25×.\n\n"
        "| batch | ours mean ms | A2C mean ms | mean ratio "
        "| ours median ms | A2C median ms | median ratio |\n"
        "|---:|---:|---:|---:|---:|---:|---:|"
    )
    return header + "\n" + "\n".join(rows)
