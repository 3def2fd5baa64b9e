"""make_env front end: names, backend choice, errors, and the SB3 VecEnv contract on every backend."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from acktr.envs import (
    EnvpoolVecEnv,
    GymnasiumVectorVecEnv,
    TorchVecEnvAdapter,
    choose_backend,
    is_atari,
    known_env_names,
    make_env,
    resolve_env_id,
)


@pytest.mark.parametrize(
    ("name", "full_id"),
    [
        ("Breakout", "ALE/Breakout-v5"),
        ("Pong", "ALE/Pong-v5"),
        ("SpaceInvaders", "ALE/SpaceInvaders-v5"),
        ("Qbert", "ALE/Qbert-v5"),
        ("BeamRider", "ALE/BeamRider-v5"),
        ("Seaquest", "ALE/Seaquest-v5"),
        ("HalfCheetah", "HalfCheetah-v5"),
        ("Walker2d", "Walker2d-v5"),
        ("InvertedPendulum", "InvertedPendulum-v5"),
        ("CartPole", "CartPole-v1"),
        ("MountainCar", "MountainCar-v0"),
        ("MountainCarContinuous", "MountainCarContinuous-v0"),
        ("Pendulum", "Pendulum-v1"),
        ("LunarLander", "LunarLander-v3"),
        ("BipedalWalker", "BipedalWalker-v3"),
        ("cartpole", "CartPole-v1"),
        ("CartPole-v0", "CartPole-v0"),  # full ids pass through unchanged
        ("BreakoutNoFrameskip-v4", "BreakoutNoFrameskip-v4"),
        ("Breakout-v5", "ALE/Breakout-v5"),  # envpool's spelling
    ],
)
def test_resolve_env_id(name: str, full_id: str) -> None:
    assert resolve_env_id(name) == full_id


def test_known_names_and_atari_detection() -> None:
    names = known_env_names()
    for name in ("Breakout", "Pong", "HalfCheetah", "CartPole", "BipedalWalker"):
        assert name in names
    assert all(resolve_env_id(name) for name in names)
    assert is_atari("Breakout") and is_atari("BreakoutNoFrameskip-v4") and is_atari("ALE/Pong-v5")
    assert not is_atari("CartPole") and not is_atari("HalfCheetah") and not is_atari("NoSuchEnv")


def test_unknown_name_lists_closest_names() -> None:
    with pytest.raises(ValueError, match=r"unknown environment 'Breakot'.*Breakout") as error:
        resolve_env_id("Breakot")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="HalfCheetah"):
        make_env("HalfCheeta")


def test_backend_choice_and_wrong_backend_errors() -> None:
    assert choose_backend("ALE/Breakout-v5") == "envpool"
    assert choose_backend("CartPole-v1") == "torch"
    assert choose_backend("HalfCheetah-v5") == "envpool"
    assert choose_backend("Taxi-v4") == "gymnasium"  # not in envpool
    assert choose_backend("HalfCheetah-v4") == "envpool"
    assert choose_backend("ALE/Breakout-v5", render_mode="rgb_array") == "gymnasium"
    with pytest.raises(ValueError, match=r"backend 'torch' has no ALE/Breakout-v5.*use backend='gymnasium'"):
        make_env("Breakout", backend="torch")
    with pytest.raises(ValueError, match="backend 'envpool' cannot make Taxi-v4: envpool has no Taxi-v4"):
        make_env("Taxi", backend="envpool")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        make_env("CartPole", backend="jax")
    with pytest.raises(ValueError, match="Atari games only"):
        make_env("CartPole", backend="gymnasium", frame_stack=4)
    with pytest.raises(ValueError, match="does not take"):
        make_env("CartPole", backend="torch", sticky_actions=True)


class _NaNAfterThreeSteps(gym.Env):
    """A broken env: its observation turns NaN on the third step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.steps += 1
        value = np.nan if self.steps >= 3 else 0.0
        return np.full(2, value, np.float32), 0.0, False, False, {}


def test_nan_observations_raise_a_clear_error() -> None:
    gym.register("AcktrTestNaN-v0", entry_point=_NaNAfterThreeSteps)
    try:
        venv = make_env("AcktrTestNaN-v0", n_envs=2)
        venv.reset()
        venv.step(np.zeros(2, dtype=np.int64))
        venv.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(
            ValueError, match=r"AcktrTestNaN-v0: env 0 returned a NaN/inf observation.*check"
        ) as err:
            venv.step(np.zeros(2, dtype=np.int64))
        assert "\n" not in str(err.value)
    finally:
        del gym.registry["AcktrTestNaN-v0"]
    # NaN actions into a torch env produce NaN states: the adapter names the env
    venv = make_env("Pendulum", n_envs=2, backend="torch", device="cpu")
    venv.reset()
    with pytest.raises(ValueError, match="Pendulum-v1: env 0 returned a NaN/inf observation"):
        venv.step(np.full((2, 1), np.nan, dtype=np.float32))


CONTRACT_CASES = [
    ("CartPole", "torch"),
    ("CartPole", "gymnasium"),
    ("CartPole", "envpool"),
    ("Pendulum", "torch"),
    ("Breakout", "envpool"),
    ("Breakout", "gymnasium"),
]


@pytest.mark.parametrize(("name", "backend"), CONTRACT_CASES)
def test_vec_env_contract(name: str, backend: str) -> None:
    """reset/step/seed/get_attr/env_is_wrapped/close behave as SB3 expects, with same-step resets."""
    n_envs = 3
    venv = make_env(name, n_envs=n_envs, seed=0, backend=backend, device="cpu", max_episode_steps=25)
    assert isinstance(venv, VecEnv) and venv.num_envs == n_envs
    obs_space, action_space = venv.observation_space, venv.action_space
    obs = venv.reset()
    assert obs.shape == (n_envs, *obs_space.shape) and obs.dtype == obs_space.dtype
    assert venv.get_attr("render_mode") == [None] * n_envs
    assert venv.env_is_wrapped(Monitor) == [True] * n_envs  # evaluate_policy may count info["episode"]
    assert venv.seed(3) == [3, 4, 5]
    rng = np.random.default_rng(0)
    action_space.seed(0)
    finished = 0
    for _ in range(30):
        actions = np.stack([action_space.sample() for _ in range(n_envs)])
        obs, rewards, dones, infos = venv.step(actions)
        assert obs.shape == (n_envs, *obs_space.shape) and obs.dtype == obs_space.dtype
        assert rewards.shape == (n_envs,) and dones.shape == (n_envs,) and dones.dtype == bool
        assert len(infos) == n_envs
        for i in np.flatnonzero(dones):
            info = infos[i]
            assert obs_space.contains(info["terminal_observation"].astype(obs_space.dtype))
            assert isinstance(info["TimeLimit.truncated"], bool)
            finished += "episode" in info
            if "episode" in info:
                assert set(info["episode"]) == {"r", "l", "t"} and 1 <= info["episode"]["l"] <= 25
        rng.random()
    assert finished >= n_envs  # every copy hit the 25-step limit (or ended earlier) and restarted
    venv.close()


def test_seed_reproduces_the_first_episode_on_each_backend() -> None:
    for backend in ("torch", "gymnasium", "envpool"):
        runs = []
        for _ in range(2):
            venv = make_env("CartPole", n_envs=2, seed=42, backend=backend, device="cpu")
            trajectory = [venv.reset()]
            for t in range(30):
                trajectory.append(venv.step(np.array([t % 2, (t // 3) % 2]))[0])
            runs.append(np.stack(trajectory))
            venv.close()
        np.testing.assert_array_equal(runs[0], runs[1], err_msg=backend)


def test_adapter_types_and_torch_fast_path() -> None:
    venv = make_env("CartPole", n_envs=4, backend="torch", device="cpu")
    assert isinstance(venv, TorchVecEnvAdapter)
    assert venv.torch_env.get_state().shape == (4, 4)
    assert isinstance(make_env("Breakout", n_envs=1, backend="envpool"), EnvpoolVecEnv)
    with pytest.raises(AttributeError, match="env_method"):
        venv.env_method("render")


def test_render_rgb_array_for_classic_control() -> None:
    venv = make_env("CartPole", n_envs=2, seed=0, render_mode="rgb_array")
    venv.reset()
    frames = venv.get_images()
    assert len(frames) == 2 and frames[0].shape == (400, 600, 3)
    venv.close()


@pytest.mark.parametrize("vectorization", ["gymnasium", "gymnasium-async"])
def test_gymnasium_vector_envs_match_dummy_vec_env(vectorization: str) -> None:
    """gymnasium's Sync/AsyncVectorEnv (same-step autoreset) give DummyVecEnv's steps, infos and episodes."""
    venvs = [
        make_env("CartPole", n_envs=3, seed=4, backend="gymnasium", vectorization=v, max_episode_steps=15)
        for v in ("dummy", vectorization)
    ]
    assert isinstance(venvs[1].unwrapped, GymnasiumVectorVecEnv)
    observations = [venv.reset() for venv in venvs]
    np.testing.assert_array_equal(observations[0], observations[1])
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(40):
        actions = rng.integers(0, 2, size=3)
        (obs_a, rew_a, done_a, infos_a), (obs_b, rew_b, done_b, infos_b) = (
            venv.step(actions) for venv in venvs
        )
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(done_a, done_b)
        assert rew_b.dtype == np.float32 and done_b.dtype == bool
        for info_a, info_b in zip(infos_a, infos_b, strict=True):
            assert info_a["TimeLimit.truncated"] == info_b["TimeLimit.truncated"]
            assert ("terminal_observation" in info_a) == ("terminal_observation" in info_b)
            if "terminal_observation" in info_a:
                np.testing.assert_array_equal(info_a["terminal_observation"], info_b["terminal_observation"])
            assert ("episode" in info_a) == ("episode" in info_b)
            if "episode" in info_a:
                episodes += 1
                assert info_a["episode"]["r"] == info_b["episode"]["r"]
                assert info_a["episode"]["l"] == info_b["episode"]["l"]
    assert episodes >= 6  # every copy finished (or hit the 15-step limit) at least twice
    assert venvs[1].env_is_wrapped(Monitor) == [True] * 3
    assert venvs[1].get_attr("spec")[0].id == "CartPole-v1"
    assert venvs[1].env_method("get_wrapper_attr", "np_random_seed", indices=[1]) == [5]
    for venv in venvs:
        venv.close()


def test_gymnasium_vectorization_on_atari_scores_whole_games() -> None:
    venv = make_env("Breakout", n_envs=2, seed=1, backend="gymnasium", vectorization="gymnasium")
    venv.reset()
    rng = np.random.default_rng(0)
    games = life_losses = 0
    for _ in range(400):
        obs, rewards, dones, infos = venv.step(rng.integers(0, 4, size=2))
        assert obs.shape == (2, 4, 84, 84) and set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
        for i in np.flatnonzero(dones):
            assert infos[i]["terminal_observation"].shape == (4, 84, 84)
            life_losses += 1
            games += "episode" in infos[i]
    assert games >= 1 and life_losses >= 5 * games  # life loss ends an episode; the score is per game
    venv.close()


def test_minatar_games_resolve_and_train_with_the_papers_network_under_kfac(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`acktr train --env MinAtar/Breakout`: the minatar registration, the zoo's minatar block and the
    MinAtar paper's CNN, whose Conv2d and Linear layers all get K-FAC blocks."""
    from acktr.agents import ACKTR, MinAtarCNN
    from acktr.cli import main
    from acktr.envs import known_env_names, resolve_env_id

    assert resolve_env_id("MinAtar/Breakout") == "MinAtar/Breakout-v1"
    assert resolve_env_id("minatar/spaceinvaders") == "MinAtar/SpaceInvaders-v1"
    assert "MinAtar/Seaquest" in known_env_names()
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--env",
        "MinAtar/Breakout",
        "--timesteps",
        "1000",
        "--eval-episodes",
        "0",
        "--seed",
        "0",
    ]
    assert main([*args, "-p", "cold_iter=0", "--no-progress", "--run-dir", str(run_dir)]) == 0
    model = ACKTR.load(run_dir / "model.zip")
    assert isinstance(model.policy.features_extractor, MinAtarCNN)
    names = [block.name for block in model.kfac.blocks]
    assert names == ["features_extractor.conv", "features_extractor.hidden", "action_net", "value_net"]
    assert model.kfac.steps > 0 and all(block.has_factors for block in model.kfac.blocks)


def _run_fresh(code: str) -> str:
    """Run ``code`` in a fresh interpreter (import state is what is tested) and return its stdout."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_an_atari_env_loads_only_envpool_s_atari_family_and_envpool_still_works_whole() -> None:
    """``import envpool`` loads every family (~165 MB, matplotlib among them); an Atari run needs only its
    own. A user's ``envpool.make`` in the same process must still see every envpool task."""
    pytest.importorskip("envpool")
    everything = _run_fresh("import envpool; print(len(envpool.list_all_envs()))")
    out = _run_fresh(
        "import sys\n"
        "from acktr.envs import make_env\n"
        "venv = make_env('Breakout', n_envs=2, seed=0, backend='envpool')\n"
        "assert venv.reset().shape == (2, 4, 84, 84)\n"
        "heavy = ('matplotlib', 'envpool.mujoco', 'envpool.jumanji', 'minatar')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "import envpool\n"
        "print(envpool.__version__ > '')\n"
        "print(envpool.make('CartPole-v1', env_type='gymnasium', num_envs=2).reset()[0].shape)\n"
        "print(len(envpool.list_all_envs()))\n"
    )
    loaded, version_ok, shape, count = out.splitlines()[-4:]
    assert loaded == "[]"
    assert version_ok == "True" and shape == "(2, 4)"
    assert count == everything


def test_minatar_ids_are_registered_as_minatar_registers_them_without_importing_it() -> None:
    pytest.importorskip("minatar")
    out = _run_fresh(
        "import sys, gymnasium as gym\n"
        "from acktr.envs import resolve_env_id\n"
        "assert resolve_env_id('MinAtar/Breakout') == 'MinAtar/Breakout-v1'\n"
        "print('minatar' in sys.modules, 'matplotlib' in sys.modules)\n"
        "def table():\n"
        "    specs = gym.registry.items()\n"
        "    return {k: (s.entry_point, s.kwargs) for k, s in specs if k.startswith('MinAtar/')}\n"
        "ours = table()\n"
        "for key in ours: del gym.registry[key]\n"
        "import minatar.gym\n"
        "minatar.gym.register_envs()\n"
        "print(len(ours), ours == table())\n"
    )
    imported, equal = out.splitlines()[-2:]
    assert imported == "False False"
    assert equal == "10 True"
