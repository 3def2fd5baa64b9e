"""The sample-efficiency benchmark: runs built by the run factory, censored medians, ratios, stopping."""

from __future__ import annotations

import pytest
import torch as th
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize

from acktr import ACKTR
from acktr.bench.sample_efficiency import (
    ALGOS,
    TASKS,
    RunResult,
    RunSpec,
    _median,
    build_model,
    format_report,
    parse_override,
    run_config,
    steps_to_threshold,
)
from acktr.zoo import load_zoo


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("env_id", list(TASKS))
def test_every_task_has_its_own_zoo_entry(algo: str, env_id: str) -> None:
    family = "minatar" if env_id.startswith("MinAtar/") else env_id  # one shared block for the MinAtar games
    assert run_config(algo, env_id, seed=0).zoo_entry == family


def test_runs_are_built_as_acktr_train_builds_them() -> None:
    """The benchmark's models come from the run factory: same backend, normalisation and settings."""
    from acktr.envs import TorchVecEnvAdapter

    acrobot = build_model("a2c", "Acrobot-v1", seed=0)
    assert isinstance(acrobot, A2C) and isinstance(acrobot.get_env(), VecNormalize)  # zoo: normalize: true
    checked = acrobot.get_env().venv  # VecNormalize over the NaN/inf check over the torch backend
    assert acrobot.n_envs == 16 and isinstance(checked.venv, TorchVecEnvAdapter)
    ppo = build_model("ppo", "CartPole-v1", seed=0)
    assert isinstance(ppo, PPO) and isinstance(ppo.learning_rate, LinearSchedule)  # zoo: lin_0.001
    assert ppo.learning_rate(1.0) == pytest.approx(1e-3)
    acktr = build_model("acktr", "CartPole-v1", seed=0, overrides=("kl_clip=0.05",))
    assert isinstance(acktr, ACKTR) and acktr.kfac.kl_clip == 0.05
    assert acktr.n_envs == load_zoo("acktr")["CartPole-v1"]["n_envs"]


def test_parse_override_keeps_the_assignment_for_the_factory() -> None:
    assert parse_override("CartPole-v1:n_envs=16") == ("CartPole-v1", "n_envs=16")
    assert parse_override("Pendulum-v1:policy_kwargs={ortho_init: false}") == (
        "Pendulum-v1",
        "policy_kwargs={ortho_init: false}",
    )
    with pytest.raises(SystemExit, match="expects ENV:KEY=VALUE"):
        parse_override("CartPole-v1")


def test_censored_median_and_ratios() -> None:
    assert _median([100, None, 300], budget=1000) == (300.0, False)
    assert _median([100, None, None], budget=1000) == (1000.0, True)
    per_algo: dict[str, list[int | None]] = {
        "acktr": [100, 200, 300],
        "a2c": [400, 400, 400],
        "ppo": [None, None, 50],
    }
    results = [
        RunResult(RunSpec(algo, "CartPole-v1", seed, 475.0, 1000), steps, 1.0)
        for algo, runs in per_algo.items()
        for seed, steps in enumerate(runs)
    ]
    report = format_report(results, ["CartPole-v1"], ["acktr", "a2c", "ppo"], [0, 1, 2], wall=60.0)
    assert "| CartPole-v1 | 475 | A2C | 0.4k | 3/3 | 0, 0, 0 | 0.50 |" in report
    assert "| CartPole-v1 | 475 | PPO | >1k | 1/3 | —, —, 0 | ≤ 0.20 |" in report  # censored: an upper bound


def test_steps_to_threshold_stops_at_the_first_crossing() -> None:
    th.set_num_threads(1)
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0, device="cpu")
    # any policy reaches a 10-episode mean of 5: the first crossing is right after the 10th episode ends
    steps = steps_to_threshold(model, threshold=5.0, budget=10_000, window=10)
    assert steps is not None and steps == model.num_timesteps < 10_000
    assert len(model.ep_info_buffer) == 10  # type: ignore[arg-type]


def test_steps_to_threshold_uses_the_horizon_for_schedules_but_stops_at_the_budget() -> None:
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env

    seen_progress: list[float] = []

    def schedule(progress_remaining: float) -> float:
        seen_progress.append(progress_remaining)
        return 7e-4

    model = A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), learning_rate=schedule, seed=0)
    steps = steps_to_threshold(model, threshold=1e9, budget=400, window=10, horizon=4000)
    assert steps is None
    assert 400 <= model.num_timesteps <= 420  # stopped at the budget, not at the horizon
    assert min(seen_progress) > 0.85  # the schedule spans 4000 steps: ~10% consumed


def test_run_one_schedules_over_the_overridden_zoo_horizon(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``n_timesteps`` override moves the schedule span (the horizon given to learn()), as rl-zoo would."""
    import acktr.bench.sample_efficiency as bench

    horizons: list[int | None] = []

    def fake_measure(model, threshold, budget, window=100, horizon=None, to_budget=False):  # type: ignore[no-untyped-def]
        horizons.append(horizon)
        return None, None

    monkeypatch.setattr(bench, "measure", fake_measure)
    spec = RunSpec("acktr", "CartPole-v1", 0, 475.0, 1_000)
    assert bench.run_one(spec).steps is None
    assert bench.run_one(RunSpec(**{**spec.__dict__, "overrides": ("n_timesteps=5000",)})).steps is None
    zoo_horizon = int(float(load_zoo("acktr")["CartPole-v1"]["n_timesteps"]))
    assert horizons == [zoo_horizon, 5_000]


def test_tasks_trained_to_the_budget_report_the_first_crossing_and_the_final_return() -> None:
    from acktr.bench.sample_efficiency import measure

    th.set_num_threads(1)
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0, device="cpu")
    steps, final = measure(model, threshold=5.0, budget=3_000, window=10, to_budget=True)
    assert steps is not None and steps < 3_000 <= model.num_timesteps  # crossed early, trained on
    assert final is not None and final >= 5.0
    results = [
        RunResult(RunSpec(algo, "MinAtar/Breakout-v1", seed, 8.0, 1000, to_budget=True), None, 1.0, value)
        for algo, values in (("acktr", (9.0, 11.0)), ("ppo", (4.0, 6.0)))
        for seed, value in enumerate(values)
    ]
    report = format_report(results, ["MinAtar/Breakout-v1"], ["acktr", "ppo"], [0, 1], wall=1.0)
    assert "| MinAtar/Breakout-v1 | 1,000 | ACKTR | 10.00 ± 1.00 | 9.00, 11.00 |" in report


# ------------------------------------------------------------------------------------------ exploration
def test_exploration_tasks_use_each_algorithms_own_entry() -> None:
    from acktr.bench import exploration

    for env_id in exploration.DEFAULT_ENVS:
        assert run_config("noisy-acktr", env_id, seed=0).zoo_entry == env_id
        assert run_config("ppo", env_id, seed=0).zoo_entry == env_id
    assert run_config("acktr", "MountainCar-v0", 0).zoo_entry == "MountainCar-v0"
    # ACKTR with its entropy bonus on NoisyACKTR's env settings (the benchmark's default overrides)
    overrides = exploration.DEFAULT_ACKTR_OVERRIDES["MountainCarContinuous-v0"]
    acktr = run_config("acktr", "MountainCarContinuous-v0", 0, overrides)
    noisy = run_config("noisy-acktr", "MountainCarContinuous-v0", 0)
    assert (acktr.n_envs, acktr.normalize) == (noisy.n_envs, noisy.normalize)
    assert acktr.hyperparams["ent_coef"] > 0 and noisy.hyperparams["ent_coef"] == 0


def test_exploration_watch_records_the_first_goal_and_stops_at_the_solve() -> None:
    from acktr.bench.exploration import Task, train_and_watch

    th.set_num_threads(1)
    model = build_model("acktr", "CartPole-v1", seed=0)
    # every episode "reaches the goal"; a 100-episode mean above 0 is "solved" once 100 episodes ended
    solved, goal, final = train_and_watch(model, Task(0.0, -1.0, 50_000), budget=50_000, horizon=200_000)
    assert goal is not None and solved is not None and goal < solved
    assert len(model.ep_info_buffer) == 100 and final is not None and final > 0
    assert solved <= model.num_timesteps < solved + model.n_envs * model.n_steps  # stopped at the solve
    never, _, _ = train_and_watch(
        build_model("acktr", "CartPole-v1", seed=0), Task(1e9, 1e9, 2_000), budget=2_000, horizon=200_000
    )
    assert never is None


def test_exploration_report_counts_solved_seeds_and_goals() -> None:
    from acktr.bench.exploration import RunResult, RunSpec, format_report

    spec = RunSpec("noisy-acktr", "MountainCar-v0", 0, 300_000)
    results = [
        RunResult(spec, 120_000, 40_000, -109.0, 10.0, 0.01, 0.012),
        RunResult(
            RunSpec("noisy-acktr", "MountainCar-v0", 1, 300_000), None, 90_000, -150.0, 10.0, 0.02, 0.01
        ),
        RunResult(RunSpec("ppo", "MountainCar-v0", 0, 300_000), None, None, -200.0, 10.0),
    ]
    report = format_report(results, ["MountainCar-v0"], ["noisy-acktr", "ppo"], [0, 1], 60.0)
    assert "| MountainCar-v0 | -110 | noisy-acktr | 1/2 | 120, — | 2/2 | 40, 90 | -129.5 |" in report
    assert "| MountainCar-v0 | -110 | ppo | 0/1 | — | 0/1 | — | -200.0 |" in report
    assert "| MountainCar-v0 | 1 | 0.02 | 0.01 |" in report


# ---------------------------------------------------------------------------------------------- mujoco
@pytest.mark.parametrize("algo", ["acktr", "npg", "ppo", "trpo"])
@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5"])
def test_mujoco_bench_runs_each_algorithms_own_tuned_entry(algo: str, env_id: str) -> None:
    """PPO and TRPO must run rl-baselines3-zoo's tuned MuJoCo settings, never the constructor defaults."""
    config = run_config(algo, env_id, seed=0)
    assert config.zoo_entry == env_id and config.normalize is not None


def test_mujoco_bench_records_episodes_stops_at_the_budget_and_resumes_from_its_results(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import acktr.bench.mujoco as mujoco
    from acktr import bench

    spec = mujoco.RunSpec("acktr", "Hopper-v5", 0, 600)
    result = mujoco.run_one(spec)
    assert result.episode_steps and max(result.episode_steps) <= 600 + 8  # at most one vector step past
    assert result.episode_steps == sorted(result.episode_steps)
    assert result.final_mean == pytest.approx(
        float(sum(result.episode_returns[-100:]) / len(result.episode_returns[-100:]))
    )

    results_file = tmp_path / "runs.jsonl"
    mujoco.append_result(results_file, result)
    with open(results_file, "a", encoding="utf-8") as handle:
        handle.write('{"algo": "npg", "env_id": "Hop')  # a run torn by a crash: ignored, not fatal
    loaded = mujoco.load_results(results_file)
    assert list(loaded) == [spec] and loaded[spec].episode_returns == result.episode_returns

    def must_not_run(spec: mujoco.RunSpec) -> mujoco.RunResult:
        raise AssertionError(f"{spec} is already in the results file")

    monkeypatch.setattr(mujoco, "run_one", must_not_run)
    out, plot = tmp_path / "mujoco.md", tmp_path / "mujoco.png"
    argv = ["mujoco", "--envs", "Hopper-v5", "--algos", "acktr", "--seeds", "1", "--steps", "600"]
    argv += ["--results", str(results_file), "--plot", str(plot), "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Hopper-v5 | ACKTR |"))
    assert f"{result.final_mean:,.0f} ± 0" in row and "baselines ACKTR 2,428" in row
    assert plot.stat().st_size > 0


def test_mujoco_best_mean_is_the_best_full_window() -> None:
    from acktr.bench.mujoco import RunResult, RunSpec

    returns = [0.0] * 100 + [100.0] * 100 + [0.0] * 50
    result = RunResult(RunSpec("acktr", "Hopper-v5", 0, 1), 1.0, list(range(250)), returns)
    assert result.best_mean == pytest.approx(100.0)
    assert result.final_mean == pytest.approx(50.0)
    assert RunResult(RunSpec("acktr", "Hopper-v5", 0, 1), 1.0, [1, 2], [3.0, 5.0]).best_mean == pytest.approx(
        4.0
    )
