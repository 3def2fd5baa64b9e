"""SB3 policy substitution: weights move between ACKTR/A2C/PPO; K-FAC policies inside SB3's A2C/PPO."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch as th
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from acktr import ACKTR, KFACActorCriticCnnPolicy, KFACActorCriticPolicy, KFACMultiInputActorCriticPolicy
from acktr.agents.optim import KFACOptimizer
from acktr.bench.sample_efficiency import steps_to_threshold


def kfac_optimizer(model: A2C | PPO) -> KFACOptimizer:
    """The K-FAC optimizer of a model built with a K-FAC policy class."""
    assert isinstance(model.policy.optimizer, KFACOptimizer)
    return model.policy.optimizer


def test_state_dict_round_trip_between_acktr_a2c_ppo() -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    acktr = ACKTR("MlpPolicy", env, n_steps=5, seed=0, device="cpu").learn(100)
    a2c = A2C("MlpPolicy", env, seed=1, device="cpu")
    ppo = PPO("MlpPolicy", env, seed=2, device="cpu")
    assert list(acktr.policy.state_dict()) == list(a2c.policy.state_dict()) == list(ppo.policy.state_dict())

    ppo.policy.load_state_dict(acktr.policy.state_dict())
    obs = env.reset()
    assert isinstance(obs, np.ndarray)
    assert (ppo.predict(obs, deterministic=True)[0] == acktr.predict(obs, deterministic=True)[0]).all()
    a2c.learn(50)
    acktr.policy.load_state_dict(a2c.policy.state_dict())  # and back
    for a, b in zip(acktr.policy.parameters(), a2c.policy.parameters(), strict=True):
        assert th.equal(a, b)
    mean_reward, _ = evaluate_policy(acktr, env, n_eval_episodes=2)
    assert isinstance(mean_reward, float) and mean_reward > 0


@pytest.mark.parametrize(
    ("policy_class", "sb3_alias", "env_factory"),
    [
        (KFACActorCriticPolicy, "MlpPolicy", lambda: make_vec_env("CartPole-v1", n_envs=2, seed=0)),
        (KFACMultiInputActorCriticPolicy, "MultiInputPolicy", lambda: DummyVecEnv([SimpleMultiObsEnv] * 2)),
    ],
    ids=["mlp", "multi-input"],
)
def test_kfac_policy_has_sb3_state_dict(policy_class, sb3_alias, env_factory) -> None:  # type: ignore[no-untyped-def]
    env = env_factory()
    kfac_model = A2C(policy_class, env, n_steps=4, seed=0, device="cpu", learning_rate=0.1)
    plain = A2C(sb3_alias, env, seed=0, device="cpu")
    assert list(kfac_model.policy.state_dict()) == list(plain.policy.state_dict())
    assert isinstance(kfac_model.policy.optimizer, KFACOptimizer)
    kfac_model.learn(16)  # two updates through SB3's unmodified A2C.train()
    kfac = kfac_optimizer(kfac_model).kfac
    assert kfac.steps == 2 and kfac.statistics_calls == 2
    plain.policy.load_state_dict(kfac_model.policy.state_dict())


def test_cnn_policy_class_is_the_nature_cnn() -> None:
    from stable_baselines3.common.envs import FakeImageEnv
    from stable_baselines3.common.torch_layers import NatureCNN
    from stable_baselines3.common.vec_env import VecTransposeImage

    env = VecTransposeImage(DummyVecEnv([lambda: FakeImageEnv(screen_height=36, screen_width=36)]))
    model = PPO(
        KFACActorCriticCnnPolicy, env, n_steps=8, batch_size=8, n_epochs=1, device="cpu", learning_rate=0.05
    )
    assert isinstance(model.policy.features_extractor, NatureCNN)
    model.learn(8)
    assert kfac_optimizer(model).kfac.steps == 1


def test_evaluate_actions_feeds_statistics_without_touching_grads() -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = A2C(KFACActorCriticPolicy, env, n_steps=4, seed=0, device="cpu")
    policy = model.policy
    obs = th.randn(8, 4)
    actions = th.randint(0, 2, (8,))
    reference = A2C("MlpPolicy", env, seed=0, device="cpu").policy
    reference.load_state_dict(policy.state_dict())

    policy.set_training_mode(True)
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    assert all(p.grad is None for p in policy.parameters())  # the Fisher pass used autograd.grad
    assert kfac_optimizer(model).kfac.statistics_calls == 1
    assert all(block.has_factors for block in kfac_optimizer(model).kfac.blocks)
    ref_values, ref_log_prob, ref_entropy = reference.evaluate_actions(obs, actions)
    assert th.allclose(values, ref_values) and th.allclose(log_prob, ref_log_prob)
    assert entropy is not None and ref_entropy is not None and th.allclose(entropy, ref_entropy)

    with th.no_grad():
        policy.evaluate_actions(obs, actions)
    policy.set_training_mode(False)
    policy.evaluate_actions(obs, actions)
    assert kfac_optimizer(model).kfac.statistics_calls == 1  # no statistics outside training


def kfac_policy_continuation_difference(workdir: str) -> dict[str, float]:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=3)
    model = A2C(KFACActorCriticPolicy, env, n_steps=5, seed=3, device="cpu", learning_rate=0.1)
    model.learn(30)
    path = f"{workdir}/a2c_kfac.zip"
    model.save(path)
    env_copies = [copy.deepcopy(cast(VecEnv, model.get_env())) for _ in range(2)]
    model.set_env(env_copies[0], force_reset=False)
    loaded = A2C.load(path, env=env_copies[1], device="cpu", force_reset=False)
    assert isinstance(loaded.policy, KFACActorCriticPolicy)
    steps = kfac_optimizer(loaded).kfac.steps
    for model_ in (model, loaded):
        th.manual_seed(5)
        model_.learn(10, reset_num_timesteps=False)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True)
    )
    return {"diff": diff, "kfac_steps_at_load": float(steps)}


def test_kfac_policy_save_load_keeps_curvature_state(tmp_path: Path) -> None:
    # float32 rounding only: see tests/test_acktr.py::test_save_load_continues_exactly
    result = kfac_policy_continuation_difference(str(tmp_path))
    assert result["diff"] < 1e-6 and result["kfac_steps_at_load"] == 3.0


def test_policy_kwargs_reach_the_optimizer() -> None:
    model = PPO(
        KFACActorCriticPolicy,
        "CartPole-v1",
        device="cpu",
        policy_kwargs=dict(kfac_kwargs=dict(kl_clip=0.02, damping=0.1, cold_iter=3), vf_fisher_coef=0.5),
    )
    optimizer = kfac_optimizer(model)
    assert optimizer.kfac.kl_clip == 0.02 and optimizer.kfac.damping == 0.1 and optimizer.cold_iter == 3
    assert model.policy.vf_fisher_coef == 0.5
    assert model.policy._get_constructor_parameters()["kfac_kwargs"]["kl_clip"] == 0.02


PPO_KFAC_CARTPOLE = dict(
    n_steps=32,
    batch_size=256,
    gae_lambda=0.8,
    gamma=0.98,
    n_epochs=4,
    ent_coef=0.0,
    learning_rate=LinearSchedule(0.05, 0.0, 1.0),
    clip_range=0.2,
)


def test_ppo_with_kfac_policy_learns_cartpole() -> None:
    """SB3's unmodified PPO with the K-FAC policy: 100-episode mean >= 475 within 150k steps (~15 s)."""
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = PPO(KFACActorCriticPolicy, env, seed=0, device="cpu", **PPO_KFAC_CARTPOLE)  # type: ignore[arg-type]
    steps = steps_to_threshold(model, 475.0, 150_000)
    assert steps is not None
