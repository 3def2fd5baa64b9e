"""Atari on the envpool and gymnasium backends: same layout, same preprocessing, same episode semantics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import A2C
from stable_baselines3.common.env_checker import check_env

from acktr.envs import make_env
from acktr.envs.atari import area_resize, area_resize_weights, make_gymnasium_atari

BACKENDS = ["envpool", "gymnasium"]
BREAKOUT_LIVES = 5


def _play(venv, steps: int, seed: int = 0) -> list[tuple[int, float, bool, dict]]:
    """Random play; returns (env index, reward, done, info) for every copy and step."""
    rng = np.random.default_rng(seed)
    venv.reset()
    record = []
    for _ in range(steps):
        _, rewards, dones, infos = venv.step(rng.integers(0, venv.action_space.n, size=venv.num_envs))
        record.extend((i, float(rewards[i]), bool(dones[i]), infos[i]) for i in range(venv.num_envs))
    return record


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_is_channel_first_uint8(backend: str) -> None:
    venv = make_env("Breakout", n_envs=2, seed=0, backend=backend)
    assert venv.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert venv.action_space == gym.spaces.Discrete(4)
    obs = venv.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[:, 0] == obs[:, 3]).all()  # a real reset fills the stack with the first frame
    venv.close()


def test_backends_preprocess_identically() -> None:
    """Pong's first frame (static at reset) is pixel-identical on both backends."""
    frames = [make_env("Pong", n_envs=1, seed=0, backend=b, training=False).reset() for b in BACKENDS]
    assert (frames[0] != frames[1]).mean() < 0.01
    assert frames[0].mean() > 50  # a real picture, not blank frames


def test_area_resize_matches_block_average() -> None:
    """The OpenCV-free resize equals the exact area average (computed by upsampling to a common grid)."""
    frame = np.random.default_rng(0).integers(0, 256, (210, 160), dtype=np.uint8)
    small = area_resize(frame, area_resize_weights(210, 84), area_resize_weights(160, 84))
    # rows 210 -> 84: repeat 2x, average groups of 5; columns 160 -> 84: repeat 21x, average groups of 40
    rows = np.repeat(frame.astype(np.float64), 2, axis=0).reshape(84, 5, 160).mean(axis=1)
    exact = np.repeat(rows, 21, axis=1).reshape(84, 84, 40).mean(axis=2)
    assert np.abs(small.astype(np.float64) - exact).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_variant_scores_whole_games(backend: str) -> None:
    """Life loss ends an episode, but info["episode"] comes once per game with its length over all lives."""
    venv = make_env("Breakout", n_envs=2, seed=1, backend=backend, training=True)
    steps_since_game = np.zeros(2, dtype=int)
    lives_lost = np.zeros(2, dtype=int)
    clipped_score = np.zeros(2)
    games = 0
    for i, reward, done, info in _play(venv, 700):
        assert reward in (-1.0, 0.0, 1.0)
        steps_since_game[i] += 1
        clipped_score[i] += reward
        lives_lost[i] += done
        if done:
            assert info["terminal_observation"].shape == (4, 84, 84)
        if "episode" in info:
            games += 1
            assert done and not info["TimeLimit.truncated"]
            assert lives_lost[i] == BREAKOUT_LIVES
            assert info["episode"]["l"] == steps_since_game[i]
            # Breakout bricks are worth 1, 4 or 7 points: the game score is at least the brick count
            assert info["episode"]["r"] >= clipped_score[i]
            assert (info["episode"]["r"] > 0) == (clipped_score[i] > 0)
            steps_since_game[i] = lives_lost[i] = 0
            clipped_score[i] = 0.0
    assert games >= 2
    venv.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_variant_plays_full_games_with_raw_rewards(backend: str) -> None:
    venv = make_env("Breakout", n_envs=2, seed=2, backend=backend, training=False)
    returns = np.zeros(2)
    lengths = np.zeros(2, dtype=int)
    games = 0
    for i, reward, done, info in _play(venv, 700, seed=1):
        returns[i] += reward
        lengths[i] += 1
        assert done == ("episode" in info)  # no life-loss terminals
        if done:
            games += 1
            assert info["episode"]["r"] == pytest.approx(returns[i])
            assert info["episode"]["l"] == lengths[i]
            returns[i] = lengths[i] = 0
    assert games >= 2
    venv.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_limit_truncates_the_game(backend: str) -> None:
    venv = make_env("Breakout", n_envs=1, seed=0, backend=backend, training=False, max_episode_steps=50)
    record = _play(venv, 50)
    assert [done for _, _, done, _ in record] == [False] * 49 + [True]
    info = record[-1][3]
    assert info["TimeLimit.truncated"] and info["episode"]["l"] == 50
    venv.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_first_game(backend: str) -> None:
    runs = []
    for _ in range(2):
        venv = make_env("Breakout", n_envs=2, seed=7, backend=backend, training=False)
        obs = [venv.reset()]
        rng = np.random.default_rng(0)
        for _ in range(60):
            obs.append(venv.step(rng.integers(0, 4, size=2))[0])
        runs.append(np.stack(obs))
        venv.close()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_sticky_actions_and_frame_stack_options() -> None:
    for backend in BACKENDS:
        venv = make_env("Pong", n_envs=1, seed=0, backend=backend, sticky_actions=True, frame_stack=2)
        assert venv.reset().shape == (1, 2, 84, 84)
        venv.close()
    pool = make_env("Pong", n_envs=1, backend="envpool", sticky_actions=True).get_attr("config")[0]
    assert pool["repeat_action_probability"] == 0.25 and pool["episodic_life"] and pool["reward_clip"]


def test_single_gymnasium_atari_env_passes_sb3_env_checker() -> None:
    check_env(make_gymnasium_atari("Breakout"), warn=False, skip_render_check=True)


def test_render_rgb_array_on_auto_backend() -> None:
    venv = make_env("Breakout", n_envs=2, seed=0, render_mode="rgb_array")
    venv.reset()
    images = venv.get_images()
    assert len(images) == 2 and images[0].shape == (210, 160, 3) and images[0].dtype == np.uint8
    tiled = venv.render()
    assert tiled is not None and tiled.ndim == 3
    venv.close()


def test_sb3_a2c_trains_on_breakout() -> None:
    """SB3's A2C runs a few hundred steps on make_env("Breakout") and logs whole-game episode scores."""
    venv = make_env("Breakout", n_envs=4, seed=0)
    model = A2C(
        "CnnPolicy",
        venv,
        n_steps=5,
        seed=0,
        device="cpu",
        policy_kwargs={"features_extractor_kwargs": {"features_dim": 64}},
    )
    model.learn(total_timesteps=1200)
    assert model.num_timesteps >= 1200
    assert len(model.ep_info_buffer) >= 1
    assert all(episode["l"] > 20 for episode in model.ep_info_buffer)  # games, not single lives
    venv.close()
