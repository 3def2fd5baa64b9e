"""What one ACKTR update does, pinned against independent computations.

- the statistics collected inside ``ACKTR.train()``: the action head's gradient factor is the Fisher of the
  *current* policy (freshly sampled actions, not the rollout's), the value head's is the critic's
  Gauss-Newton scale ``4c²`` (absent with ``vf_fisher_coef=0``);
- the K-FAC step of CNN, Dict-observation, gSDE and squashed-gSDE policies equals an independent
  ``(A ⊗ G + λI)⁻¹g`` solve with the trust region and momentum applied by hand, and survives save/load;
- the learning rate a schedule gives each update, the momentum reset when the K-FAC phase starts,
  ``cold_lr``, ``loss_reduction="sum"`` and a non-finite first statistics batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnv, IdentityEnvBox, SimpleMultiObsEnv
from stable_baselines3.common.logger import configure
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecTransposeImage
from torch import nn
from torch.nn import functional as F

from acktr import ACKTR
from acktr.agents.acktr import EXACT_KFAC_OPTIONS
from acktr.agents.optim import KFACOptimizer
from acktr.curvature import KFAC


def paper_acktr(*args: Any, **kwargs: Any) -> ACKTR:
    """The formulas in these tests are the paper's update: η multiplies F̂⁻¹g (step_rule "natural"), with
    exact K-FAC statistics on every row (no low-rank factors or subsampling)."""
    kwargs.setdefault("step_rule", "natural")
    kwargs["kfac_kwargs"] = {**EXACT_KFAC_OPTIONS, **kwargs.get("kfac_kwargs", {})}
    return ACKTR(*args, **kwargs)


# ----------------------------------------------------------------------------------- helpers


def silent_logger(model: ACKTR) -> ACKTR:
    """``train()`` records to the logger, which SB3 only creates in ``learn()``."""
    model.set_logger(configure(folder=None, format_strings=[]))
    return model


def named_params(policy: nn.Module) -> dict[str, th.Tensor]:
    return {name: p.detach().clone() for name, p in policy.named_parameters()}


def momentum_buffers(model: ACKTR) -> dict[str, th.Tensor]:
    state = model.policy.optimizer.state
    return {
        name: state[p]["momentum_buffer"].clone()
        for name, p in model.policy.named_parameters()
        if "momentum_buffer" in state[p]
    }


def grad_of(param: th.Tensor) -> th.Tensor:
    assert param.grad is not None
    return param.grad.detach().clone()


def policy_copy(policy: ActorCriticPolicy) -> ActorCriticPolicy:
    """A new policy of the same configuration holding the same weights (``deepcopy`` fails on a trained
    policy: its distribution object keeps non-leaf tensors of the last forward pass)."""
    with th.random.fork_rng():  # building it must not advance the training's random stream
        clone = type(policy)(**policy._get_constructor_parameters())
    clone.load_state_dict(policy.state_dict())
    return clone


class TrainRecorder:
    """Replaces ``model.train`` on the instance; records the policy before and the result of each update."""

    def __init__(self, model: ACKTR) -> None:
        self.model = model
        self.records: list[dict[str, Any]] = []
        model.train = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        model = self.model
        before = policy_copy(model.policy)
        ACKTR.train(model)
        info = model.policy.optimizer.last_info
        self.records.append(
            dict(
                before=before,
                after=named_params(model.policy),
                grads={name: grad_of(p) for name, p in model.policy.named_parameters()},
                buffers=momentum_buffers(model),
                learning_rate=model.logger.name_to_value["train/learning_rate"],
                progress=model._current_progress_remaining,
                step_scale=None if info is None else float(info.step_scale),
                natural_grad_dot=None if info is None else float(info.natural_grad_dot),
            )
        )


def a2c_gradients(policy: ActorCriticPolicy, model: ACKTR, part: str = "all") -> dict[str, th.Tensor]:
    """Gradient of the A2C loss on ``model.rollout_buffer`` at ``policy``, with SB3's ``evaluate_actions``;
    ``part``: "all", or "policy" (policy gradient and entropy terms) or "value" (the critic term) alone."""
    data = next(model.rollout_buffer.get(batch_size=None))
    actions = data.actions
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    values, log_prob, entropy = policy.evaluate_actions(data.observations, actions)
    entropy_term = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
    advantages = data.advantages
    if model.normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_part = -(advantages * log_prob).mean() + model.ent_coef * entropy_term
    value_part = model.vf_coef * F.mse_loss(data.returns, values.flatten())
    loss = {"all": policy_part + value_part, "policy": policy_part, "value": value_part}[part]
    policy.zero_grad()
    loss.backward()
    if part != "all":  # a part may not reach every parameter (the value head from the policy part)
        return {
            name: th.zeros_like(p) if p.grad is None else grad_of(p) for name, p in policy.named_parameters()
        }
    return {name: grad_of(p) for name, p in policy.named_parameters()}


def kronecker_solve(grad: th.Tensor, a: th.Tensor, g: th.Tensor, damping: float) -> th.Tensor:
    """``(A ⊗ G + λI)⁻¹ vec(grad)`` for a ``(d_out, d_in + 1)`` matrix, in float64 from the eigenbases."""
    a_values, a_vectors = th.linalg.eigh(a.double())
    g_values, g_vectors = th.linalg.eigh(g.double())
    scale = th.outer(g_values.clamp_min(0), a_values.clamp_min(0)) + damping
    return g_vectors @ ((g_vectors.T @ grad.double() @ a_vectors) / scale) @ a_vectors.T


def natural_gradients(
    grads: dict[str, th.Tensor], kfac_state: dict[str, Any], damping: float
) -> dict[str, th.Tensor]:
    """Independent K-FAC directions: each block's ``[W | b]`` solved with the factors in ``kfac_state``,
    parameters without a block (``log_std``) keep their gradient. Float64."""
    directions = {name: grad.double() for name, grad in grads.items()}
    for block_name, block in kfac_state["blocks"].items():
        weight, bias = grads[f"{block_name}.weight"], grads[f"{block_name}.bias"]
        matrix = th.cat([weight.reshape(weight.shape[0], -1), bias[:, None]], dim=1)
        solved = kronecker_solve(matrix, block["activation_factor"], block["gradient_factor"], damping)
        directions[f"{block_name}.weight"] = solved[:, :-1].reshape(weight.shape)
        directions[f"{block_name}.bias"] = solved[:, -1]
    return directions


def trust_region_scale(
    directions: dict[str, th.Tensor], grads: dict[str, th.Tensor], lr: float, kl_clip: float | None
) -> float:
    dot = sum(float((directions[name] * grads[name].double()).sum()) for name in grads)
    return 1.0 if kl_clip is None else min(1.0, (kl_clip / (lr * lr * dot)) ** 0.5)


def fill_rollout_buffer(
    model: ACKTR, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray
) -> None:
    """A hand-made rollout of ``(n_steps, n_envs, ...)`` arrays in a fresh buffer of that size."""
    n_steps, n_envs = rewards.shape
    buffer = RolloutBuffer(
        n_steps, model.observation_space, model.action_space, device="cpu", gamma=0.9, n_envs=n_envs
    )
    for step in range(n_steps):
        buffer.add(
            observations[step],
            actions[step],
            rewards[step],
            np.zeros(n_envs, dtype=bool),
            th.zeros(n_envs),
            th.zeros(n_envs),
        )
    buffer.compute_returns_and_advantage(last_values=th.zeros(n_envs), dones=np.zeros(n_envs))
    model.rollout_buffer = buffer


def block(model: ACKTR, name: str) -> Any:
    (found,) = [b for b in model.kfac.blocks if b.name == name]
    return found


# ----------------------------------------------------------------------------------- statistics in train()

N_ENVS, N_STEPS = 64, 64  # 4096 states: Monte-Carlo error of a factor entry ≈ 0.01


def identity_model(vf_fisher_coef: float, **kwargs: Any) -> tuple[ACKTR, th.Tensor]:
    """An ACKTR on IdentityEnv(4) whose rollout buffer holds 4096 states, every action 0, returns ≈ 10."""
    model = paper_acktr(
        "MlpPolicy",
        DummyVecEnv([lambda: IdentityEnv(4)]),
        cold_iter=0,  # the first update is a K-FAC step and its factors are that batch's statistics
        factor_decay=0.5,  # (any decay: the first statistics update initialises F = F_new)
        vf_fisher_coef=vf_fisher_coef,
        seed=0,
        device="cpu",
        **kwargs,
    )
    silent_logger(model)
    with th.no_grad():  # a clearly non-uniform policy
        model.policy.action_net.bias.copy_(th.tensor([-1.0, 0.5, 0.0, 0.8]))
    rng = np.random.default_rng(0)
    observations = rng.integers(0, 4, size=(N_STEPS, N_ENVS))
    fill_rollout_buffer(
        model, observations, np.zeros((N_STEPS, N_ENVS), dtype=np.int64), np.full((N_STEPS, N_ENVS), 10.0)
    )
    obs = th.nn.functional.one_hot(th.as_tensor(observations.reshape(-1)), 4).float()
    return model, obs


def test_train_statistics_use_fresh_samples_and_the_critic_gauss_newton_scale() -> None:
    """With every rollout action 0, the action head's G is still the policy's own Fisher in logit space
    E_s[diag(p) − ppᵀ] (K-FAC's convention G = mean_b g_b g_bᵀ of per-example gradients), not the empirical
    (e_0 − p)(e_0 − p)ᵀ; the value head's G is E[(2cε)²] = 4c², not anything built from the returns (≈ 10);
    A is the second moment of the layer input at the parameters *before* the step."""
    coef = 0.3
    model, obs = identity_model(vf_fisher_coef=coef)
    with th.no_grad():
        latent_pi = model.policy.mlp_extractor.forward_actor(obs)
        probs = th.softmax(model.policy.action_net(latent_pi), dim=-1)
    th.manual_seed(1)
    model.train()
    assert model.kfac.steps == 1 and model.kfac.statistics_calls == 1

    fisher = (th.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]).mean(0)
    empirical = ((th.eye(4)[0] - probs)[:, :, None] * (th.eye(4)[0] - probs)[:, None, :]).mean(0)
    assert (fisher - empirical).abs().max() > 0.3  # the check below tells the two apart
    action_head = block(model, "action_net")
    th.testing.assert_close(action_head.gradient_factor, fisher, atol=0.025, rtol=0)
    inputs = th.cat([latent_pi, th.ones(len(obs), 1)], dim=1)
    th.testing.assert_close(action_head.activation_factor, inputs.T @ inputs / len(obs), atol=1e-5, rtol=1e-5)

    value_head = block(model, "value_net").gradient_factor
    assert value_head.shape == (1, 1)
    assert value_head.item() == pytest.approx(4 * coef**2, rel=0.1)  # 0.36 vs 2c = 0.6, c² = 0.09


@pytest.mark.filterwarnings("ignore:K-FAC has no statistics")
def test_vf_fisher_coef_zero_leaves_the_critic_out_of_the_curvature() -> None:
    """vf_fisher_coef=0: the critic layers get no statistics at all (no factors), so their step is the raw
    A2C gradient scaled only by the trust region's ν; the actor keeps its Fisher."""
    model, _ = identity_model(vf_fisher_coef=0.0, momentum=0.0)
    before = policy_copy(model.policy)
    th.manual_seed(1)
    model.train()
    critic = ("mlp_extractor.value_net.0", "mlp_extractor.value_net.2", "value_net")
    for name in critic:
        assert not block(model, name).has_factors, name
    assert block(model, "action_net").has_factors
    step_scale = float(model.policy.optimizer.last_info.step_scale)
    grads = a2c_gradients(before, model)
    for name, p in model.policy.named_parameters():
        if name.startswith(critic):
            th.testing.assert_close(p.grad, step_scale * grads[name], rtol=1e-4, atol=1e-8)
    # with the critic term the value head does get statistics
    with_critic, _ = identity_model(vf_fisher_coef=1.0)
    with_critic.train()
    assert all(block(with_critic, name).has_factors for name in critic)


# ----------------------------------------------------------------------------------- K-FAC steps per policy


def seeded(env: gym.Env, seed: int) -> gym.Env:
    """SB3's test envs sample observations/targets from their own spaces, which SB3 does not seed."""
    env.observation_space.seed(seed)
    env.action_space.seed(seed)
    return env


def make_policy_model(kind: str, seed: int = 0) -> ACKTR:
    """A tiny ACKTR of each policy kind, K-FAC from the first update, reproducible."""
    kwargs: dict[str, Any] = dict(
        n_steps=4,
        cold_iter=0,
        learning_rate=0.25,
        momentum=0.9,
        update_inverses_every=1,
        ent_coef=0.01,
        seed=seed,
        device="cpu",
    )
    small = dict(net_arch=dict(pi=[16], vf=[16]))
    env: VecEnv
    if kind == "cnn":

        def image_env(index: int) -> Callable[[], gym.Env]:
            return lambda: seeded(FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), seed + index)

        env = VecTransposeImage(DummyVecEnv([image_env(0), image_env(1)]))
        return paper_acktr(
            "CnnPolicy", env, policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=16)), **kwargs
        )
    if kind == "dict":
        np.random.seed(seed)  # the env draws its maze images from numpy's global generator
        env = DummyVecEnv([lambda: SimpleMultiObsEnv(random_start=True)] * 2)
        return paper_acktr(
            "MultiInputPolicy",
            env,
            policy_kwargs=dict(**small, features_extractor_kwargs=dict(cnn_output_dim=16)),
            **kwargs,
        )

    def box_env(index: int) -> Callable[[], gym.Env]:
        return lambda: seeded(IdentityEnvBox(eps=0.5), seed + index)

    env = DummyVecEnv([box_env(0), box_env(1)])
    squash = dict(squash_output=True) if kind == "squashed_sde" else {}
    return paper_acktr("MlpPolicy", env, use_sde=True, policy_kwargs=dict(**small, **squash), **kwargs)


POLICY_KINDS = ["cnn", "dict", "sde", "squashed_sde"]


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_kfac_step_matches_an_independent_solve(kind: str) -> None:
    """The third update (K-FAC from the start, momentum buffer already filled) moves every parameter by
    −η(1−m)(m·buf + ν(A⊗G + λI)⁻¹g), with A, G the factors after the update, g the A2C gradient at the old
    parameters, ν from the trust region over all parameters (``log_std`` included with Δ = g)."""
    model = make_policy_model(kind)
    recorder = TrainRecorder(model)
    model.learn(2 * 4 * 3)
    assert model.kfac.steps == 3 and len(recorder.records) == 3
    if kind == "cnn":
        assert any(isinstance(b.module, nn.Conv2d) for b in model.kfac.blocks)
    if kind == "dict":
        assert any(b.name.startswith("features_extractor.extractors.img") for b in model.kfac.blocks)
    if "sde" in kind:
        assert {id(p) for p in model.kfac.uncovered_parameters()} == {id(model.policy.log_std)}

    previous, last = recorder.records[1], recorder.records[2]
    grads = a2c_gradients(last["before"], model)
    directions = natural_gradients(grads, model.kfac.state_dict(), model.damping)
    lr, momentum = 0.25, 0.9
    scale = trust_region_scale(directions, grads, lr, model.kl_clip)
    assert last["step_scale"] == pytest.approx(scale, rel=1e-3)
    old = named_params(last["before"])
    for name, direction in directions.items():
        buffer = momentum * previous["buffers"][name].double() + scale * direction
        expected = old[name].double() - lr * (1 - momentum) * buffer
        step = (expected - old[name].double()).abs().max().item()
        error = (last["after"][name].double() - expected).abs().max().item()
        # float32 parameters and float32 eigendecompositions in the library: ~1e-3 of the step at worst
        assert error <= min(1e-5, 1e-2 * step), (name, error, step)


def nested_equal(a: Any, b: Any, where: str = "") -> None:
    """Assert ``a`` and ``b`` are the same nested state, tensors bit for bit (dtype and shape included)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            nested_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            nested_equal(x, y, f"{where}/{index}")
    elif isinstance(a, th.Tensor):
        assert isinstance(b, th.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert th.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_save_load_after_kfac_steps_is_exact(kind: str, tmp_path: Path) -> None:
    """After K-FAC steps the saved optimizer/K-FAC state comes back bit for bit, and one more update on the
    same rollout (same seeds) moves the loaded model exactly like the original."""
    model = make_policy_model(kind, seed=1)
    model.learn(2 * 4 * 2)
    assert model.kfac.steps == 2
    model.save(tmp_path / "model.zip")
    loaded = silent_logger(ACKTR.load(tmp_path / "model.zip", device="cpu"))
    nested_equal(model.kfac.state_dict(), loaded.kfac.state_dict(), "kfac")
    nested_equal(model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict(), "optimizer")
    assert any(b["gradient_factor"] is not None for b in loaded.kfac.state_dict()["blocks"].values())

    loaded.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    before = named_params(model.policy)
    for candidate in (model, loaded):
        np.random.seed(3)
        th.manual_seed(3)
        candidate.train()
    assert loaded.kfac.steps == model.kfac.steps == 3
    moved = max((p - before[n]).abs().max().item() for n, p in named_params(model.policy).items())
    assert moved > 1e-4
    for (name, a), b in zip(named_params(model.policy).items(), loaded.policy.parameters(), strict=True):
        th.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6, msg=name)
    nested_equal(model.kfac.state_dict(), loaded.kfac.state_dict(), "kfac after the update")


# ----------------------------------------------------------------------------------- step size and momentum


def schedule(progress_remaining: float) -> float:
    return 0.02 + 0.3 * progress_remaining**2


@pytest.mark.parametrize("kl_clip", [None, 1e-4])
def test_callable_learning_rate_is_the_step_size_of_each_update(kl_clip: float | None) -> None:
    """Momentum 0: Δθ = −η·(preconditioned grad) with η = schedule(progress) of *that* update, the same η
    is logged and is the η of the trust region ν = min(1, sqrt(δ / (η² gᵀF̂⁻¹g)))."""
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = paper_acktr(
        "MlpPolicy",
        env,
        learning_rate=schedule,
        n_steps=8,
        momentum=0.0,
        cold_iter=0,
        kl_clip=kl_clip,
        seed=0,
        device="cpu",
    )
    recorder = TrainRecorder(model)
    model.learn(16 * 4)
    etas = []
    for record in recorder.records:
        eta = schedule(record["progress"])
        etas.append(eta)
        assert record["learning_rate"] == pytest.approx(eta, rel=1e-9)
        old = named_params(record["before"])
        moved = th.cat([(old[n] - record["after"][n]).flatten() for n in old]).double()
        direction = th.cat([record["grads"][n].flatten() for n in old]).double()
        used = float(moved @ direction / (direction @ direction))
        assert used == pytest.approx(eta, rel=2e-3)
        expected_scale = (
            1.0 if kl_clip is None else min(1.0, (kl_clip / (eta**2 * record["natural_grad_dot"])) ** 0.5)
        )
        assert record["step_scale"] == pytest.approx(expected_scale, rel=1e-5)
    assert etas == pytest.approx([schedule(p) for p in (0.75, 0.5, 0.25, 0.0)])
    if kl_clip is not None:
        assert any(record["step_scale"] < 0.99 for record in recorder.records)


def test_momentum_is_reset_when_the_kfac_phase_starts() -> None:
    """cold_iter=2, m=0.9: cold buffers accumulate the clipped gradient (step −η·buf); the first K-FAC
    step starts a fresh buffer holding only its preconditioned gradient (step −η(1−m)·buf); the next one
    accumulates again."""
    env = make_vec_env("CartPole-v1", n_envs=2, seed=2)
    lr, m = 0.1, 0.9
    model = paper_acktr(
        "MlpPolicy", env, learning_rate=lr, n_steps=8, momentum=m, cold_iter=2, seed=2, device="cpu"
    )
    recorder = TrainRecorder(model)
    model.learn(16 * 4)
    cold1, cold2, kfac1, kfac2 = recorder.records
    assert cold2["step_scale"] is None and kfac1["step_scale"] is not None
    for name in cold1["grads"]:
        th.testing.assert_close(cold1["buffers"][name], cold1["grads"][name])
        th.testing.assert_close(cold2["buffers"][name], m * cold1["buffers"][name] + cold2["grads"][name])
        # the fresh buffer IS the first K-FAC direction, with no trace of the cold buffer
        assert th.equal(kfac1["buffers"][name], kfac1["grads"][name]), name
        th.testing.assert_close(kfac2["buffers"][name], m * kfac1["buffers"][name] + kfac2["grads"][name])
        for record, step in ((cold2, lr), (kfac1, lr * (1 - m)), (kfac2, lr * (1 - m))):
            old = record["before"].get_parameter(name).detach()
            th.testing.assert_close(record["after"][name], old - step * record["buffers"][name])


def linear_problem() -> tuple[nn.Linear, th.Tensor, th.Tensor]:
    th.manual_seed(0)
    return nn.Linear(3, 4).double(), th.randn(32, 3, dtype=th.float64), th.randint(0, 4, (32,))


def test_cold_lr_is_the_step_size_of_the_cold_start_only() -> None:
    layer, x, y = linear_problem()
    lr, cold_lr, m = 0.3, 0.05, 0.5
    optimizer = KFACOptimizer(layer, lr=lr, momentum=m, cold_iter=2, cold_lr=cold_lr, kl_clip=None)
    generator = th.Generator().manual_seed(1)
    steps, grads = [], []
    for _ in range(3):
        with optimizer.kfac.collect_statistics():
            logits = layer(x)
            targets = th.multinomial(th.softmax(logits.detach(), -1), 1, generator=generator).squeeze(1)
            F.cross_entropy(logits, targets).backward(retain_graph=True)
        optimizer.zero_grad()
        F.cross_entropy(logits, y).backward()
        before = layer.weight.detach().clone()
        optimizer.step()
        steps.append(layer.weight.detach() - before)
        grads.append(grad_of(layer.weight))
    th.testing.assert_close(steps[0], -cold_lr * grads[0])
    th.testing.assert_close(steps[1], -cold_lr * (m * grads[0] + grads[1]))
    assert optimizer.kfac.steps == 1  # the third step is K-FAC: η(1−m) on a fresh buffer, not cold_lr
    th.testing.assert_close(steps[2], -lr * (1 - m) * grads[2])


# ----------------------------------------------------------------------------------- loss_reduction


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2)
        self.head = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x: th.Tensor) -> th.Tensor:
        return self.head(th.tanh(self.conv(x)).flatten(1))


def test_loss_reduction_sum_with_a_summed_loss_equals_mean_with_a_mean_loss() -> None:
    th.manual_seed(0)
    model = SmallCNN().double()
    x = th.randn(16, 2, 7, 7, dtype=th.float64)
    with th.no_grad():
        targets = th.distributions.Categorical(logits=model(x)).sample()
    states = []
    for reduction in ("mean", "sum"):
        net = copy.deepcopy(model)
        kfac = KFAC(net, cold_iter=0, loss_reduction=reduction)
        with kfac.collect_statistics():
            F.cross_entropy(net(x), targets, reduction=reduction).backward()
        states.append(kfac.state_dict())
    for name in ("conv", "head"):
        mean, summed = states[0]["blocks"][name], states[1]["blocks"][name]
        for factor in ("activation_factor", "gradient_factor"):
            th.testing.assert_close(summed[factor], mean[factor], rtol=1e-12, atol=0)
    assert states[0]["blocks"]["head"]["gradient_factor"].trace() > 0.1  # per-example scale, not 1/B


def test_acktr_rejects_a_summed_fisher_reduction() -> None:
    """ACKTR's (and the K-FAC policies') sampled Fisher loss is a batch mean: "sum" would make every G B²
    too small, so it is refused rather than silently wrong."""
    from stable_baselines3 import A2C

    from acktr.agents import KFACActorCriticPolicy

    with pytest.raises(ValueError, match="loss_reduction"):
        paper_acktr("MlpPolicy", "CartPole-v1", device="cpu", kfac_kwargs=dict(loss_reduction="sum"))
    with pytest.raises(ValueError, match="loss_reduction"):
        A2C(
            KFACActorCriticPolicy,
            "CartPole-v1",
            device="cpu",
            policy_kwargs=dict(kfac_kwargs=dict(loss_reduction="sum")),
        )
    model = paper_acktr("MlpPolicy", "CartPole-v1", device="cpu", kfac_kwargs=dict(loss_reduction="mean"))
    assert model.kfac.loss_reduction == "mean"


# ----------------------------------------------------------------------------------- non-finite statistics


def poison_first_fisher_loss(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Make the sampled Fisher loss of the first ``train()`` NaN (its gradients, hence every G, non-finite)
    while the A2C loss stays finite. Returns a counter of Fisher losses built."""
    import acktr.agents.acktr as acktr_module

    real = acktr_module.sampled_fisher_loss
    calls = [0]

    def fisher_loss(*args: Any, **kwargs: Any) -> th.Tensor:
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls[0] == 1 else loss

    monkeypatch.setattr(acktr_module, "sampled_fisher_loss", fisher_loss)
    return lambda: calls[0]


@pytest.mark.parametrize("inverse_method", ["eigen", "cholesky"])
def test_non_finite_first_statistics_give_a_damped_gradient_step_in_the_trust_region(
    inverse_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Factors fall back to zeros, so F̂ + λI = λI: the first step is −η(1−m)·ν·g/λ with
    ν = min(1, sqrt(δ / (η²‖g‖²/λ))) < 1; training then continues with finite parameters and factors."""
    fisher_losses = poison_first_fisher_loss(monkeypatch)
    env = make_vec_env("CartPole-v1", n_envs=2, seed=4)
    lr, m, damping, kl_clip = 0.25, 0.9, 0.01, 1e-3
    model = paper_acktr(
        "MlpPolicy",
        env,
        learning_rate=lr,
        n_steps=8,
        momentum=m,
        damping=damping,
        kl_clip=kl_clip,
        cold_iter=0,
        seed=4,
        device="cpu",
        kfac_kwargs=dict(inverse_method=inverse_method),
    )
    recorder = TrainRecorder(model)
    model.learn(16)
    assert fisher_losses() == 1
    for kfac_block in model.kfac.blocks:
        assert kfac_block.has_factors
        assert th.equal(kfac_block.activation_factor, th.zeros_like(kfac_block.activation_factor))
        assert th.equal(kfac_block.gradient_factor, th.zeros_like(kfac_block.gradient_factor))
    (record,) = recorder.records
    grads = a2c_gradients(record["before"], model)
    gradient_dot = sum(float(g.double().square().sum()) for g in grads.values())
    scale = min(1.0, (kl_clip / (lr**2 * gradient_dot / damping)) ** 0.5)
    assert scale < 0.5 and record["step_scale"] == pytest.approx(scale, rel=1e-4)
    info = model.policy.optimizer.last_info
    assert float(info.predicted_kl) == pytest.approx(kl_clip, rel=1e-4)
    old = named_params(record["before"])
    for name, grad in grads.items():
        expected = old[name] - lr * (1 - m) * scale * grad / damping
        th.testing.assert_close(record["after"][name], expected, rtol=1e-4, atol=1e-6, msg=name)

    model.learn(16 * 3, reset_num_timesteps=False)
    assert fisher_losses() == 4 and model.kfac.steps == 4
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    for kfac_block in model.kfac.blocks:
        for factor in (kfac_block.activation_factor, kfac_block.gradient_factor):
            assert th.isfinite(factor).all() and factor.abs().sum() > 0


def test_first_finite_statistics_after_a_non_finite_batch_initialise_the_factors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poison_first_fisher_loss(monkeypatch)
    env = make_vec_env("CartPole-v1", n_envs=2, seed=5)
    model = paper_acktr("MlpPolicy", env, n_steps=8, cold_iter=0, factor_decay=0.99, seed=5, device="cpu")
    model.learn(16 * 2)
    first_layer = block(model, "mlp_extractor.policy_net.0")
    # its input is the observation: A of the second (first finite) batch, computed directly
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, 4))
    inputs = th.cat([obs, th.ones(len(obs), 1)], dim=1)
    th.testing.assert_close(first_layer.activation_factor, inputs.T @ inputs / len(obs), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- micro-batching
@pytest.mark.parametrize("kind", ["cnn", "dict"])
def test_micro_batched_training_takes_the_same_steps_as_the_whole_batch(kind: str) -> None:
    """Accumulating the A2C gradient over row chunks changes nothing but float rounding: two runs with the
    same seed, one whole-batch and one in chunks of 3 rows (8-row rollouts: chunks of 3, 3, 2), end at the
    same parameters and curvature after K-FAC steps on statistics from a subset of the rollout."""
    models = []
    for micro_batch_size in (None, 3):
        model = make_policy_model(kind)
        model.micro_batch_size = micro_batch_size
        model.kfac_kwargs = {"statistics_fraction": 0.5}  # the subset path, where chunking applies
        model.learn(2 * 4 * 3)
        assert model.kfac.steps == 3
        models.append(model)
    whole, chunked = models
    assert chunked._micro_batch_rows(th.zeros(8, 1, 36, 36), 8) == 3
    chunked_parameters = chunked.policy.state_dict()
    for name, expected in whole.policy.state_dict().items():
        actual = chunked_parameters[name]
        assert th.allclose(actual, expected, rtol=1e-4, atol=1e-6), name
    for key, value in whole.kfac.state_dict()["blocks"].items():
        other = chunked.kfac.state_dict()["blocks"][key]
        for factor, tensor in value.items():
            # the running factors; their eigenvectors are defined only up to sign and rotation
            if isinstance(tensor, th.Tensor) and tensor.is_floating_point() and "eigen" not in factor:
                assert th.allclose(other[factor], tensor, rtol=1e-3, atol=1e-6), (key, factor)


def test_micro_batch_size_auto_chunks_images_only_and_rejects_bad_values() -> None:
    image_model, vector_model = make_policy_model("cnn"), make_policy_model("sde")
    assert image_model.micro_batch_size == "auto" and vector_model.micro_batch_size == "auto"
    from acktr.agents.acktr import AUTO_MICRO_BATCH, AUTO_MICRO_BATCH_BYTES

    # Atari frames: equal chunks within the float32 budget (83 rows): 640 rows as 8 x 80, 80 rows whole
    assert AUTO_MICRO_BATCH_BYTES // (4 * 4 * 84 * 84) == 83
    assert image_model._micro_batch_rows(th.zeros(640, 4, 84, 84, dtype=th.uint8), 640) == 80
    assert image_model._micro_batch_rows(th.zeros(100, 4, 84, 84, dtype=th.uint8), 100) == 50
    # small images: the row cap
    assert image_model._micro_batch_rows({"img": th.zeros(640, 1, 8, 8), "vec": th.zeros(640, 3)}, 640) == 160
    assert image_model._micro_batch_rows(th.zeros(170, 4, 10, 10), 170) == 85
    assert AUTO_MICRO_BATCH == 160
    assert vector_model._micro_batch_rows(th.zeros(2048, 64), 2048) == 2048
    assert image_model._micro_batch_rows(th.zeros(80, 4, 84, 84), 80) == 80
    for bad in (0, -3, "big", True, 1.5):
        with pytest.raises(ValueError, match="micro_batch_size must be a positive int, 'auto' or None"):
            ACKTR("MlpPolicy", "CartPole-v1", micro_batch_size=bad)


# ------------------------------------------------------------------------------- split trust region
@pytest.mark.parametrize("kind", ["cnn", "sde"])
@pytest.mark.parametrize("micro_batch_size", [None, 3])
def test_split_trust_region_scales_the_policy_and_value_parts_separately(
    kind: str, micro_batch_size: int | None
) -> None:
    """``trust_region="split"``: the step is ν_π F⁻¹g_π + ν_v F⁻¹g_v, each ν from its own part's ⟨Δ, g⟩ (the
    policy's with kl_clip, the value's with vf_kl_clip), on a shared trunk (cnn) and on separate networks
    with a Gaussian's log_std (sde), whole-batch and micro-batched."""
    model = make_policy_model(kind)
    model.trust_region = "split"
    model.vf_kl_clip = 0.3 * model.kl_clip
    model.micro_batch_size = micro_batch_size
    model.kfac_kwargs = {"statistics_fraction": 0.5}
    recorder = TrainRecorder(model)
    model.learn(2 * 4 * 3)
    assert model.kfac.steps == 3  # the second preconditioning of each update does not advance the schedule
    previous, last = recorder.records[1], recorder.records[2]
    lr, momentum = 0.25, 0.9
    state = model.kfac.state_dict()
    step = {}
    scales = []
    for part, clip in (("policy", model.kl_clip), ("value", model.vf_kl_clip)):
        grads = a2c_gradients(last["before"], model, part)
        directions = natural_gradients(grads, state, model.damping)
        scale = trust_region_scale(directions, grads, lr, clip)
        scales.append(scale)
        for name, direction in directions.items():
            step[name] = step.get(name, 0.0) + scale * direction
    assert last["step_scale"] == pytest.approx(scales[0], rel=1e-3)
    assert model.logger.name_to_value["train/vf_step_scale"] == pytest.approx(scales[1], rel=1e-3)
    assert min(scales) < 1.0 and scales[0] != pytest.approx(scales[1], rel=1e-2)
    old = named_params(last["before"])
    for name, direction in step.items():
        buffer = momentum * previous["buffers"][name].double() + direction
        expected = old[name].double() - lr * (1 - momentum) * buffer
        size = (expected - old[name].double()).abs().max().item()
        error = (last["after"][name].double() - expected).abs().max().item()
        assert error <= min(1e-5, 1e-2 * size), (name, error, size)


def test_trust_region_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="trust_region"):
        ACKTR("MlpPolicy", "CartPole-v1", trust_region="separate")


# ------------------------------------------------------------------------ statistics schedule "auto"
def test_update_factors_every_auto_amortises_small_discrete_mlps_only() -> None:
    from acktr import NoisyACKTR
    from acktr.agents.acktr import AUTO_FACTORS_EVERY

    def factors_every(*args: Any, **kwargs: Any) -> int:
        return ACKTR(*args, device="cpu", **kwargs).kfac.update_factors_every

    assert AUTO_FACTORS_EVERY > 1
    assert factors_every("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8), n_steps=20) == AUTO_FACTORS_EVERY
    # LunarLander-sized rollouts (1,024 rows), continuous actions, a KL-adaptive step: every update
    assert factors_every("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8), n_steps=128) == 1
    assert factors_every("MlpPolicy", "Pendulum-v1", kl_guard=None) == 1
    assert factors_every("MlpPolicy", "CartPole-v1", target_kl=0.01) == 1
    assert factors_every("MlpPolicy", "CartPole-v1", kfac_kwargs={"update_factors_every": 3}) == 3
    assert NoisyACKTR("MlpPolicy", "CartPole-v1", device="cpu").kfac.update_factors_every == 1
    image_env = VecTransposeImage(DummyVecEnv([lambda: FakeImageEnv(screen_height=36, screen_width=36)]))
    assert factors_every("CnnPolicy", image_env, n_steps=5) == 1


def test_update_factors_every_auto_collects_on_every_fourth_update_and_follows_target_kl() -> None:
    env = make_vec_env("CartPole-v1", n_envs=4, seed=0)
    model = ACKTR("MlpPolicy", env, n_steps=5, cold_iter=1, seed=0, device="cpu")
    block = model.kfac.blocks[0]
    measured: list[bool] = []
    for _ in range(8):
        before = named_params(model.policy)
        model.learn(20, reset_num_timesteps=False)
        measured.append("train/kl" in model.logger.name_to_value)
        moved = any(
            not th.equal(before[name], p) for name, p in model.policy.named_parameters() if name in before
        )
        assert moved  # updates without statistics still take a (preconditioned) step
    assert block.statistics_updates == 2
    assert measured == [True, False, False, False, True, False, False, False]
    # the policy keeps no autograd graph after an update (SB3's A2C does): it can be deep-copied
    copy.deepcopy(model.policy)
    # a KL-adaptive step reads the measured KL at every update: "auto" follows a live change
    model.target_kl = 0.01
    model.learn(20, reset_num_timesteps=False)
    assert model.kfac.update_factors_every == 1 and block.statistics_updates == 3
