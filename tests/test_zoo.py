"""The zoo files, ``-p`` overrides and the rl-zoo3 registration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from stable_baselines3.common.utils import LinearSchedule

from acktr.algorithms import ALGORITHMS, algorithm_class, algorithm_names, get_algorithm
from acktr.envs import is_atari, resolve_env_id
from acktr.errors import UserError
from acktr.hyperparams import (
    ZOO_KEYS,
    agent_parameters,
    apply_overrides,
    build_agent_kwargs,
    parse_notation,
    parse_override,
    zoo_entry,
)
from acktr.zoo import entry_sources, load_zoo, zoo_path

REQUIRED = tuple(
    [
        "CartPole",
        "Acrobot",
        "MountainCar",
        "Pendulum",
        "LunarLander",
        "HalfCheetah",
        "Hopper",
        "Walker2d",
        "Ant",
        "Breakout",
        "Pong",
        "SpaceInvaders",
        "Qbert",
        "BeamRider",
        "Seaquest",
    ]
)


@pytest.mark.parametrize("name", REQUIRED)
def test_every_required_env_has_its_own_sourced_entry(name: str) -> None:
    env_id = resolve_env_id(name)
    entry = zoo_entry("acktr", env_id, is_atari(env_id))
    assert entry.key == env_id, f"{name} ({env_id}) falls back to {entry.key}"
    assert "source" not in entry.values
    assert "tuned" in entry.source.lower(), f"{env_id} needs a '# source: ... (not) tuned here' line"
    assert int(float(entry.values["n_timesteps"])) > 0
    if is_atari(env_id):
        assert entry.values["policy"] == "CnnPolicy"
        assert (
            entry.values["kl_clip"] == 0.001
            and entry.values["n_envs"] == 32
            and entry.values["n_steps"] == 20
        )


def test_zoo_keys_are_constructor_keywords_of_the_agent() -> None:
    allowed = set(agent_parameters(algorithm_class("acktr"))) | set(ZOO_KEYS)
    for key, values in load_zoo("acktr").items():
        unknown = set(values) - allowed
        assert not unknown, f"{key}: {unknown} are not ACKTR keywords"
    assert set(entry_sources("acktr")) >= set(load_zoo("acktr"))


def test_zoo_file_loads_in_rl_zoo3_shape() -> None:
    raw = yaml.safe_load(zoo_path("acktr").read_text())
    assert {"default", "atari", "CartPole-v1", "ALE/Breakout-v5"} <= set(raw)
    assert raw["atari"]["env_wrapper"] == ["stable_baselines3.common.atari_wrappers.AtariWrapper"]
    assert raw["ALE/Pong-v5"]["learning_rate"] == "lin_0.25"  # merged from the atari block


def test_unlisted_envs_fall_back_to_atari_then_default() -> None:
    assert zoo_entry("acktr", resolve_env_id("Freeway"), True).key == "atari"
    assert zoo_entry("acktr", "MountainCarContinuous-v0", False).key == "default"


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("policy_kwargs.net_arch=[64,64]") == (["policy_kwargs", "net_arch"], [64, 64])
    assert parse_override("kl_clip=null") == (["kl_clip"], None)
    assert parse_override("normalize_advantage=true") == (["normalize_advantage"], True)
    with pytest.raises(UserError, match="key=value"):
        parse_override("kl_clip")


def test_overrides_are_type_checked_against_the_signature() -> None:
    base = {"n_envs": 8, "policy": "MlpPolicy"}
    result = apply_overrides(
        "acktr",
        base,
        [
            "kl_clip=0.002",
            "gamma=1",
            "n_steps=5",
            "policy_kwargs.net_arch=[64,64]",
            "learning_rate=lin_0.3",
            "policy_kwargs.activation_fn=relu",
            "kfac_kwargs.inverse_method=eigh",
            "n_timesteps=1000",
        ],
    )
    assert result["kl_clip"] == 0.002 and isinstance(result["gamma"], float) and result["n_steps"] == 5
    assert result["policy_kwargs"] == {"net_arch": [64, 64], "activation_fn": "nn.ReLU"}
    assert result["kfac_kwargs"] == {"inverse_method": "eigh"}
    assert base == {"n_envs": 8, "policy": "MlpPolicy"}  # not modified in place
    cases = {
        "n_steps=0.5": "expected int",
        "kl_clip=abc": "expected float",
        "use_sde=1": "expected bool",
        "learning_rate=fast": "lin_<start>",
        "n_envs=two": "expected int",
        "kl_clipp=0.1": "did you mean kl_clip",
        "policy_kwargs.net_arch=5": "expected list",
        "policy_kwargs.nett=[1]": "unknown policy_kwargs key",
        "gamma.x=1": "has no sub-keys",
        "stats_decay=0.9": "now called factor_decay",
        "policy_kwargs=dict(net_arch=__import__('os'))": "not notation acktr can read",
    }
    for text, message in cases.items():
        with pytest.raises(UserError, match=message):
            apply_overrides("acktr", base, [text])


def test_build_agent_kwargs_makes_schedules_and_activations() -> None:
    from torch import nn

    kwargs = build_agent_kwargs(
        {"learning_rate": "lin_0.25", "policy_kwargs": {"activation_fn": "relu", "net_arch": [8]}}
    )
    assert set(kwargs) == {"learning_rate", "policy_kwargs"}
    schedule = kwargs["learning_rate"]
    assert isinstance(schedule, LinearSchedule)
    assert (
        schedule(1.0) == pytest.approx(0.25)
        and schedule(0.5) == pytest.approx(0.125)
        and schedule(0.0) == 0.0
    )
    assert kwargs["policy_kwargs"]["activation_fn"] is nn.ReLU


def test_algorithm_registry() -> None:
    """One table: the CLI choices, the public API, rl-zoo3 names and zoo files all come from it."""
    import acktr
    from acktr.agents import ACKTR, NoisyACKTR

    assert algorithm_class("acktr") is ACKTR
    assert algorithm_class("noisy-acktr") is algorithm_class("noisy_acktr") is NoisyACKTR
    assert algorithm_class("ppo").__name__ == "PPO"
    assert algorithm_class("npg") is acktr.NPG and algorithm_class("trpo").__name__ == "TRPO"
    with pytest.raises(UserError, match="unknown algorithm"):
        algorithm_class("dqn")
    assert algorithm_names()[0] == "acktr" and set(algorithm_names()) == set(ALGORITHMS)
    for spec in ALGORITHMS.values():
        assert zoo_path(spec.zoo).is_file(), spec.name  # every algorithm has its zoo file
        assert get_algorithm(spec.rl_zoo_name) is spec  # rl-zoo3 spelling resolves to the same entry
        if spec.ours:
            assert getattr(acktr, spec.class_name) is spec.load()  # exported by the public API
    # a name no agent has is refused with the list of choices
    with pytest.raises(UserError, match="unknown algorithm 'noisy-ppo'; choose one of acktr"):
        get_algorithm("noisy-ppo")


def test_an_agent_forwarding_kwargs_takes_its_base_agents_keywords() -> None:
    """NoisyACKTR(**kwargs) forwards to ACKTR: -p accepts and type-checks both agents' keywords."""
    result = apply_overrides("noisy-acktr", {}, ["kl_clip=0.05", "noise_target_kl=0.1", "n_steps=10"])
    assert result == {"kl_clip": 0.05, "noise_target_kl": 0.1, "n_steps": 10}
    with pytest.raises(UserError, match="kl_clip"):
        apply_overrides("noisy-acktr", {}, ["kl_clip=big"])
    with pytest.raises(UserError, match="unknown hyperparameter"):
        apply_overrides("noisy-acktr", {}, ["noise_targt_kl=0.1"])


def test_rl_zoo_notation_is_parsed_without_evaluating_code() -> None:
    parsed = parse_notation(
        "dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[64, 64], vf=[64]))",
        "policy_kwargs",
    )
    assert parsed == {
        "log_std_init": -2,
        "ortho_init": False,
        "activation_fn": "nn.ReLU",
        "net_arch": {"pi": [64, 64], "vf": [64]},
    }
    assert parse_notation("{'norm_obs': True, 'clip_obs': 10.0}", "normalize") == {
        "norm_obs": True,
        "clip_obs": 10.0,
    }
    assert parse_notation("dict(optimizer_class=th.optim.Adam)", "policy_kwargs") == {
        "optimizer_class": "th.optim.Adam"
    }
    for text in ("__import__('os').system('true')", "dict(a=os.getcwd())", "dict(**x)", "lambda: 1", "[1"):
        with pytest.raises(UserError, match="not notation acktr can read"):
            parse_notation(text, "policy_kwargs")
    from torch import nn

    kwargs = build_agent_kwargs({"policy_kwargs": "dict(activation_fn=nn.Tanh, net_arch=[8])"})
    assert kwargs["policy_kwargs"] == {"activation_fn": nn.Tanh, "net_arch": [8]}


@pytest.mark.parametrize("name", ["CartPole", "Pendulum", "LunarLander", "HalfCheetah", "Breakout"])
def test_zoo_entries_build_an_agent(name: str) -> None:
    """Every kind of entry (discrete, continuous, VecNormalize, separate nets, CNN) constructs ACKTR."""
    from acktr.factory import build_run
    from acktr.run_config import TrainOptions, resolve_config

    config = resolve_config(TrainOptions(env=name, seed=0, n_envs=2))
    venv, model = build_run(config)
    try:
        for key in ("n_steps", "gamma", "ent_coef", "kl_clip", "damping"):
            assert getattr(model, key) == config.hyperparams[key], key
        assert model.lr_schedule(1.0) == pytest.approx(
            float(str(config.hyperparams["learning_rate"]).removeprefix("lin_"))
        )
    finally:
        venv.close()


@pytest.mark.parametrize("algo", ["a2c", "ppo"])
@pytest.mark.parametrize("name", ["CartPole-v1", "Acrobot-v1", "Pendulum-v1"])
def test_comparison_zoo_entries_build_their_sb3_agent(algo: str, name: str) -> None:
    """The A2C/PPO entries (rl-zoo3's, with its notation) build through the same factory as ACKTR."""
    from stable_baselines3.common.vec_env import VecNormalize

    from acktr.factory import build_run
    from acktr.run_config import TrainOptions, resolve_config

    config = resolve_config(TrainOptions(env=name, algo=algo, seed=0))
    venv, model = build_run(config)
    try:
        assert type(model).__name__ == algo.upper() and model.n_envs == config.n_envs
        assert isinstance(venv, VecNormalize) == (config.normalize is not None)
        if algo == "a2c" and name == "Pendulum-v1":  # policy_kwargs written as "dict(log_std_init=-2, ...)"
            assert model.policy.log_std.detach().mean().item() == pytest.approx(-2.0)
            assert model.policy.ortho_init is False
    finally:
        venv.close()


def test_rl_zoo3_trains_acktr_after_registration(tmp_path: Path) -> None:
    """``python -m acktr.zoo_integration train --algo acktr`` = rl_zoo3.train with our agent and zoo file."""
    command = [
        *[sys.executable, "-m", "acktr.zoo_integration", "train", "--algo", "acktr", "--env", "CartPole-v1"],
        *["-n", "2000", "-f", str(tmp_path), "--seed", "0", "--num-threads", "1", "--eval-freq", "-1"],
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert f"Loading hyperparameters from: {zoo_path('acktr')}" in completed.stdout
    (model_path,) = tmp_path.glob("acktr/CartPole-v1_*/CartPole-v1.zip")
    from acktr.agents import ACKTR

    model = ACKTR.load(model_path)
    assert model.num_timesteps >= 2000 and model.n_envs == load_zoo("acktr")["CartPole-v1"]["n_envs"]
    # and rl-zoo3's enjoy plays the trained agent (it imports requests, which acktr[zoo] installs)
    enjoy = [
        *[sys.executable, "-m", "acktr.zoo_integration", "enjoy", "--algo", "acktr", "--env", "CartPole-v1"],
        *["-f", str(tmp_path), "-n", "200", "--no-render", "--num-threads", "1"],
    ]
    completed = subprocess.run(enjoy, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_register_with_rl_zoo_in_process() -> None:
    import rl_zoo3
    from rl_zoo3.exp_manager import ExperimentManager

    import acktr
    from acktr.agents import ACKTR

    names = acktr.register_with_rl_zoo()
    assert "acktr" in names and rl_zoo3.ALGOS["acktr"] is ACKTR
    assert acktr.register_with_rl_zoo() == names  # idempotent
    assert getattr(ExperimentManager.__init__, "_acktr_patched", False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env_id", "threshold", "budget"),
    [("CartPole-v1", 475.0, 200_000), ("Acrobot-v1", -100.0, 150_000), ("Pendulum-v1", -200.0, 200_000)],
)
def test_tuned_zoo_entries_reach_their_thresholds(env_id: str, threshold: float, budget: int) -> None:
    """The entries tuned for the sample-efficiency benchmark still reach its thresholds (seed 1, run as the
    benchmark runs them: schedule over the zoo's n_timesteps, 100-episode training mean, stop at budget)."""
    import torch

    from acktr.bench.sample_efficiency import RunSpec, run_one

    torch.set_num_threads(1)
    assert run_one(RunSpec("acktr", env_id, 1, threshold, budget)).steps is not None
