"""``acktr`` command line end to end on CartPole with small budgets: run folder, eval, plot, record, resume.

Budget: about 30 s in total (the Breakout test is marked slow when it takes longer than a minute here)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from acktr.cli import main
from acktr.runs import RunPaths, latest_checkpoint, read_monitor, read_scalars

# 8 envs x 5 steps = 40 steps per update, so a few thousand steps make many updates and checkpoints.
FAST = ["-p", "n_steps=5", "--seed", "0", "--no-progress"]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code, out, err = run_cli(
        [
            *[
                "train",
                "--env",
                "CartPole",
                "--timesteps",
                "3000",
                "--eval-freq",
                "1000",
                "--eval-episodes",
                "2",
            ],
            *["--checkpoint-freq", "1000", "-p", "kl_clip=0.002", "-p", "policy_kwargs.net_arch=[32,32]"],
            *["--run-dir", str(run_dir), *FAST],
        ]
    )
    assert code == 0, err
    return run_dir, out


def test_run_folder_contents(trained: tuple[Path, str]) -> None:
    run_dir, out = trained
    for name in ("config.yml", "model.zip", "best_model.zip", "monitor.csv", "checkpoints/latest.yml"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert not list(run_dir.rglob(".*.tmp*")), "temporary files left behind"
    assert re.search(r"final mean return [\d.]+ ± [\d.]+ over 2 episodes", out)
    assert re.search(r"step +\d[\d,]*/3,000 .* steps/s +mean return .* ETA", out), "plain progress lines"


def test_config_round_trip(trained: tuple[Path, str]) -> None:
    """config.yml holds the resolved hyperparameters; rebuilding from it gives the trained settings."""
    from acktr.agents import ACKTR
    from acktr.factory import create_model, make_run_env
    from acktr.run_config import RunConfig

    run_dir, _ = trained
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    typed = RunConfig.from_dict(config)
    assert typed.to_dict() == config  # the typed config round-trips through config.yml
    assert typed.backend_used == "torch" and typed.policy == "MlpPolicy"
    hyper = config["hyperparams"]
    assert config["env_id"] == "CartPole-v1" and config["algo"] == "acktr" and config["n_timesteps"] == 3000
    assert (
        hyper["kl_clip"] == 0.002
        and hyper["n_steps"] == 5
        and hyper["policy_kwargs"] == {"net_arch": [32, 32]}
    )
    assert hyper["damping"] == 0.01 and hyper["learning_rate"] == "lin_0.25"  # agent defaults written out
    assert config["command"].startswith("acktr train --env CartPole --timesteps 3000")
    saved = ACKTR.load(run_dir / "model.zip")
    venv = make_run_env(typed)
    rebuilt = create_model(typed, venv)
    venv.close()
    for model in (saved, rebuilt):
        assert model.kl_clip == 0.002 and model.n_steps == 5 and model.n_envs == config["n_envs"]
        assert model.gamma == hyper["gamma"] and model.ent_coef == hyper["ent_coef"]
        assert [
            layer.out_features
            for layer in model.policy.mlp_extractor.policy_net
            if hasattr(layer, "out_features")
        ] == [32, 32]
    assert saved.num_timesteps >= 3000


def test_monitor_and_tensorboard(trained: tuple[Path, str]) -> None:
    run_dir, _ = trained
    rows = read_monitor(run_dir / "monitor.csv")
    assert rows and all(row["r"] == row["l"] for row in rows)  # CartPole pays 1 per step: r is the raw score
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps) and steps[-1] <= 3040
    assert sum(row["l"] for row in rows) <= 3040
    scalars = read_scalars(run_dir / "tb")
    for tag in (
        "rollout/ep_rew_mean",
        "time/fps",
        "train/policy_loss",
        "train/value_loss",
        "train/kl",
        "train/step_scale",
        "eval/mean_reward",
    ):
        assert tag in scalars, tag


def test_eval_prints_mean_and_std(trained: tuple[Path, str]) -> None:
    run_dir, _ = trained
    code, out, _ = run_cli(["eval", str(run_dir), "--episodes", "3", "--deterministic", "--seed", "5"])
    assert code == 0
    match = re.search(r"mean return ([\d.]+) ± ([\d.]+) over 3 episodes \(deterministic\)", out)
    assert match, out
    from acktr.evaluate import evaluate_target

    again = evaluate_target(run_dir, episodes=3, deterministic=True, seed=5)
    assert float(match[1]) == pytest.approx(again.mean, abs=0.01)  # same seed, same policy: same episodes
    assert float(match[1]) == pytest.approx(np.mean(again.lengths), abs=0.01)  # CartPole: return = length
    code, out, _ = run_cli(["eval", str(run_dir / "model.zip"), "--episodes", "2"])
    assert code == 0 and "over 2 episodes (stochastic)" in out


def test_plot_writes_png(trained: tuple[Path, str], tmp_path: Path) -> None:
    run_dir, _ = trained
    out = tmp_path / "curve.png"
    code, _, _ = run_cli(["plot", str(run_dir), str(run_dir), "--out", str(out)])  # two runs: shaded path
    assert code == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_labels_runs_by_algo_env_and_overrides(trained: tuple[Path, str]) -> None:
    from acktr.plotting import load_curve

    run_dir, _ = trained
    label, steps, returns = load_curve(run_dir)
    overrides = yaml.safe_load((run_dir / "config.yml").read_text())["overrides"]
    assert "kl_clip=0.002" in overrides and "policy_kwargs.net_arch=[32,32]" in overrides
    assert label == f"acktr CartPole-v1 [{', '.join(overrides)}]"
    assert steps.shape == returns.shape and np.all(np.diff(steps) >= 0)


def test_record_writes_mp4(trained: tuple[Path, str], tmp_path: Path) -> None:
    import imageio.v2 as imageio

    run_dir, _ = trained
    out = tmp_path / "video.mp4"
    code, printed, err = run_cli(
        ["record", str(run_dir), "--out", str(out), "--episodes", "100", "--max-frames", "600"]
    )
    assert code == 0, err
    reader = imageio.get_reader(str(out))
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) == 600 and frames[0].shape == (400, 600, 3)
    # CartPole episodes end by step 500, so at least one finishes within 600 frames, whatever the policy
    match = re.search(r"wrote .*video.mp4 \((\d+) frames; episode returns: ([\d., ]+)\)", printed)
    assert match and int(match[1]) == 600, printed
    returns = [float(r) for r in match[2].split(", ")]
    assert len(returns) >= 1 and sum(returns) <= 600  # CartPole: returns = lengths of finished episodes


@pytest.mark.parametrize("normalize", [False, True])
def test_resume_after_interruption_reaches_total_with_consistent_logs(
    tmp_path: Path, normalize: bool
) -> None:
    """Crash at step 1150 (8 envs x 5 steps = 40 per update; last checkpoint at ~600, early in learning, so
    episodes end in between), then --resume: the logs hold every step once."""
    from stable_baselines3.common.vec_env import VecNormalize

    from acktr.agents import ACKTR

    run_dir = tmp_path / "run"
    options = "--timesteps 4000 --n-envs 8 --checkpoint-freq 600 --eval-episodes 0"
    base = ["train", "--env", "CartPole", *options.split(), "--run-dir", str(run_dir), *FAST]
    if normalize:
        base += ["-p", "normalize=true"]
    code, out, _ = run_cli([*base, "--interrupt-at", "1150"])
    assert code == 130 and "acktr train --resume" in out
    assert not (run_dir / "model.zip").exists()
    checkpoint = latest_checkpoint(RunPaths(run_dir))
    assert checkpoint is not None
    step = checkpoint["step"]
    assert 600 <= step < 1150 and step % 40 == 0
    assert bool(checkpoint.get("vecnormalize")) == normalize
    at_checkpoint = ACKTR.load(checkpoint["model"])
    assert at_checkpoint.num_timesteps == step and at_checkpoint.policy.optimizer.steps_taken == step // 40
    before = read_monitor(run_dir / "monitor.csv")
    assert any(row["step"] > step for row in before), "the crash must leave episodes past the checkpoint"
    assert max(s for s, _ in read_scalars(run_dir / "tb")["rollout/ep_rew_mean"]) > step

    code, out, err = run_cli(["train", "--resume", str(run_dir), "--no-progress"])
    assert code == 0, err
    assert f"resuming {run_dir} from step {step:,}" in out
    model = ACKTR.load(run_dir / "model.zip")
    assert model.num_timesteps == 4000  # exactly as an uninterrupted run (100 updates of 40 steps)
    assert model.policy.optimizer.steps_taken == 100  # the K-FAC optimizer's counters were carried over
    rows = read_monitor(run_dir / "monitor.csv")
    kept = [row for row in before if row["step"] <= step]
    assert rows[: len(kept)] == kept  # episodes before the checkpoint kept once, the rest re-run
    assert [row["step"] for row in rows] == sorted(row["step"] for row in rows)
    assert sum(row["l"] for row in rows) <= 4000
    scalars = read_scalars(run_dir / "tb")
    for tag in ("rollout/ep_rew_mean", "train/kl", "train/policy_loss"):
        tag_steps = [s for s, _ in scalars[tag]]
        assert tag_steps == sorted(set(tag_steps)), f"{tag}: duplicate or out-of-order steps {tag_steps}"
        assert tag_steps[-1] <= 4000
    if (
        normalize
    ):  # statistics continued from the checkpoint: they have seen every step, not just the last ones
        stats = VecNormalize.load(str(run_dir / "vecnormalize.pkl"), make_dummy_cartpole())
        assert stats.obs_rms.count >= 4000
        code, out, _ = run_cli(["eval", str(run_dir), "--episodes", "2"])
        assert code == 0 and "over 2 episodes" in out
    code, _, err = run_cli(["train", "--resume", str(run_dir)])
    assert code == 2 and "already finished" in err and "--timesteps" in err


def test_resume_before_the_first_checkpoint_restarts_from_step_zero(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    options = "--timesteps 1200 --n-envs 8 --checkpoint-freq 100000 --eval-episodes 0"
    code, out, _ = run_cli(
        [
            "train",
            "--env",
            "CartPole",
            *options.split(),
            "--run-dir",
            str(run_dir),
            *FAST,
            "--interrupt-at",
            "600",
        ]
    )
    assert code == 130 and "from step 0 (no checkpoint yet)" in out
    assert read_monitor(run_dir / "monitor.csv")
    code, out, err = run_cli(["train", "--resume", str(run_dir), "--no-progress"])
    assert code == 0 and "restarting it from step 0" in out, err
    from acktr.agents import ACKTR

    assert ACKTR.load(run_dir / "model.zip").num_timesteps == 1200
    rows = read_monitor(run_dir / "monitor.csv")
    assert sum(row["l"] for row in rows) <= 1200  # the aborted attempt's episodes are gone
    steps = [s for s, _ in read_scalars(run_dir / "tb")["train/kl"]]
    assert steps == sorted(set(steps))


def make_dummy_cartpole() -> object:
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda: gym.make("CartPole-v1")])


def one_line_error(args: list[str], expected: str) -> None:
    code, _, err = run_cli(args)
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err, err


def test_user_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    one_line_error(["train", "--env", "NoSuchGame", "--timesteps", "100"], "unknown environment 'NoSuchGame'")
    one_line_error(["train", "--env", "CartPole", "-p", "kl_clipp=0.1"], "did you mean kl_clip")
    one_line_error(["train", "--env", "CartPole", "-p", "n_steps=abc"], "expected int")
    one_line_error(["train", "--env", "CartPole", "--timesteps", "-5"], "--timesteps must be a positive")
    one_line_error(["train", "--env", "CartPole", "--device", "gpu"], "not a torch device")
    if not torch.cuda.is_available():
        one_line_error(["train", "--env", "CartPole", "--device", "cuda"], "no CUDA GPU")
    one_line_error(["train", "--resume", str(tmp_path / "missing")], "does not exist")
    one_line_error(["train", "--resume", str(tmp_path), "-p", "gamma=0.9"], "drop -p")
    one_line_error(["eval", str(tmp_path / "missing")], "does not exist")
    one_line_error(["plot", str(tmp_path / "missing")], "does not exist")
    corrupt = tmp_path / "corrupt" / "model.zip"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PK\x03\x04 this is not a model")
    one_line_error(["eval", str(corrupt), "--env", "CartPole"], "cannot load")
    one_line_error(["eval", str(corrupt)], "pass --env")


def test_unsupported_action_space_exits_2() -> None:
    import gymnasium as gym

    class TupleActions(gym.Env):  # type: ignore[misc]
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        action_space = gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3)))

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            return np.zeros(2, dtype=np.float32), {}

        def step(self, action: object) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(2, dtype=np.float32), 0.0, True, False, {}

    gym.register("AcktrTestTupleActions-v0", entry_point=TupleActions)
    one_line_error(["train", "--env", "AcktrTestTupleActions-v0", "--timesteps", "100"], "cannot train on")


def test_console_script_errors_have_no_traceback_unless_debug() -> None:
    command = [sys.executable, "-m", "acktr", "train", "--env", "NoSuchGame"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().startswith("acktr train: error: unknown environment")
    completed = subprocess.run([*command, "--debug"], capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0 and "Traceback" in completed.stderr


def test_zoo_command_lists_and_resolves() -> None:
    code, out, _ = run_cli(["zoo"])
    assert code == 0 and "CartPole-v1" in out and "ALE/Breakout-v5" in out and "source" in out
    code, out, _ = run_cli(["zoo", "Breakout", "-p", "kl_clip=0.002"])
    shown = yaml.safe_load(out)
    assert code == 0 and shown["env_id"] == "ALE/Breakout-v5" and shown["zoo_entry"] == "ALE/Breakout-v5"
    assert shown["hyperparams"]["kl_clip"] == 0.002 and shown["n_envs"] == 32


def test_threads_default_to_one_for_mlp_on_cpu() -> None:
    from acktr.factory import set_threads
    from acktr.run_config import TrainOptions, resolve_config

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        mlp = resolve_config(TrainOptions(env="CartPole", seed=0, device="cpu"))
        assert set_threads(mlp, None) == 1
        torch.set_num_threads(2)
        cnn = resolve_config(TrainOptions(env="Breakout", seed=0, device="cpu"))
        assert cnn.policy == "CnnPolicy" and set_threads(cnn, None) == 2
        assert set_threads(mlp, 2) == 2
    finally:
        torch.set_num_threads(previous)


def test_the_command_lets_idle_openmp_threads_sleep_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["zoo"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert main(["zoo"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_progress_bar_shows_rate_return_and_eta() -> None:
    from acktr.progress import Progress

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        progress = Progress(total=1000, start=0, bar=True)
        assert progress.bar is not None
        progress.bar.fp = err
        progress.update(500, 42.0)
        progress.bar.refresh()
        progress.close()
    text = err.getvalue()
    assert (
        "500/1000" in text and "return 42.0" in text and "step/s" in text and "<" in text
    )  # "<" precedes ETA


def test_breakout_envpool_2000_steps_writes_loadable_model(tmp_path: Path) -> None:
    from acktr.agents import ACKTR
    from acktr.envs import EnvpoolVecEnv
    from acktr.factory import make_run_env
    from acktr.guards import VecCheckFinite
    from acktr.run_config import RunConfig

    run_dir = tmp_path / "breakout"
    code, _, err = run_cli(
        [
            *[
                "train",
                "--env",
                "Breakout",
                "--timesteps",
                "2000",
                "--eval-episodes",
                "0",
                "--seed",
                "0",
                "--no-progress",
            ],
            *["--run-dir", str(run_dir)],
        ]
    )
    assert code == 0, err
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert config["backend_used"] == "envpool"
    venv = make_run_env(RunConfig.from_dict(config), 1, 0, training=False)
    # the backend's env, behind the NaN/inf check every backend gets
    assert isinstance(venv, VecCheckFinite) and isinstance(venv.venv, EnvpoolVecEnv)
    model = ACKTR.load(run_dir / "model.zip", env=venv)
    assert model.num_timesteps >= 2000 and model.observation_space.shape == (4, 84, 84)
    obs = venv.reset()
    action, _ = model.predict(obs)
    assert action.shape == (1,)
    venv.close()


# ------------------------------------------------------------------- application-layer defects, each pinned


def test_resume_applies_what_can_change_and_refuses_the_rest(tmp_path: Path) -> None:
    from acktr.run_config import RunConfig

    run_dir = tmp_path / "run"
    base = ["train", "--env", "CartPole", "--timesteps", "2000", "--checkpoint-freq", "500"]
    code, _, err = run_cli(
        [*base, "--eval-episodes", "0", "--run-dir", str(run_dir), *FAST, "--interrupt-at", "900"]
    )
    assert code == 130, err
    one_line_error(["train", "--resume", str(run_dir), "--algo", "ppo"], "trained with acktr; drop --algo")
    one_line_error(["train", "--resume", str(run_dir), "--backend", "gymnasium"], "drop --backend")
    one_line_error(["train", "--resume", str(run_dir), "--timesteps", "400"], "already taken")
    code, out, err = run_cli(
        [
            *["train", "--resume", str(run_dir), "--eval-episodes", "3", "--checkpoint-freq", "700"],
            *["--keep-checkpoints", "0", "--no-progress"],
        ]
    )
    assert code == 0, err
    assert "eval_episodes 0 -> 3" in out and "checkpoint_freq 500 -> 700" in out
    assert re.search(r"over 3 episodes", out)  # the final evaluation took the new --eval-episodes
    config = RunConfig.from_dict(yaml.safe_load((run_dir / "config.yml").read_text()))
    assert (config.eval_episodes, config.checkpoint_freq, config.keep_checkpoints) == (3, 700, 0)
    assert len(list((run_dir / "checkpoints").glob("step_*.zip"))) > 2  # keep 0: every checkpoint kept


def test_a_finished_run_is_extended_by_a_larger_timesteps(tmp_path: Path) -> None:
    from acktr.agents import ACKTR

    run_dir = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "--env",
            "CartPole",
            "--timesteps",
            "800",
            "--eval-episodes",
            "0",
            "--run-dir",
            str(run_dir),
            *FAST,
        ]
    )
    assert code == 0, err
    rows_before = read_monitor(run_dir / "monitor.csv")
    code, out, err = run_cli(["train", "--resume", str(run_dir), "--timesteps", "1600", "--no-progress"])
    assert code == 0, err
    assert f"extending {run_dir} from step 800 to 1,600" in out
    model = ACKTR.load(run_dir / "model.zip")
    assert model.num_timesteps == 1600 and model.policy.optimizer.steps_taken == 40
    rows = read_monitor(run_dir / "monitor.csv")
    assert rows[: len(rows_before)] == rows_before and [r["step"] for r in rows] == sorted(
        r["step"] for r in rows
    )
    steps = [s for s, _ in read_scalars(run_dir / "tb")["train/kl"]]
    # two event files (one per process); within one second their names need not sort in time order
    assert len(steps) == len(set(steps)) and max(steps) <= 1600 and min(steps) < 800 < max(steps)


def test_no_tensorboard_writes_no_tb_folder_and_monitor_is_readable_while_training(tmp_path: Path) -> None:
    import collections

    from acktr.callbacks import RunCallback
    from acktr.progress import Progress
    from acktr.runs import MonitorLog

    run_dir = tmp_path / "run"
    args = ["train", "--env", "CartPole", "--timesteps", "400", "--eval-episodes", "0", "--no-tensorboard"]
    code, _, err = run_cli([*args, "--run-dir", str(run_dir), *FAST])
    assert code == 0, err
    assert not (run_dir / "tb").exists() and (run_dir / "model.zip").is_file()
    # rows reach the file at the end of every rollout, not only at checkpoints
    monitor = MonitorLog(tmp_path / "monitor.csv", "CartPole-v1")
    callback = RunCallback(
        RunPaths(tmp_path), monitor, 100, 10**9, 2, None, Progress(100, 0, bar=False), collections.deque()
    )
    monitor.write(12.0, 12, 40)
    callback._on_rollout_end()
    assert read_monitor(tmp_path / "monitor.csv") == [
        {"r": 12.0, "l": 12.0, "t": pytest.approx(0, abs=5), "step": 40.0}
    ]
    monitor.close()


def test_progress_never_reports_more_than_100_percent_or_a_negative_eta() -> None:
    from acktr.progress import Progress

    progress = Progress(total=2000, start=0, bar=False)
    line = progress.line(2400, 10.0)
    assert "2,000/2,000 (100%)" in line and "ETA 0:00" in line and "-" not in line.split("ETA")[1]


def test_eval_and_record_pin_one_thread_for_mlp_policies(trained: tuple[Path, str], tmp_path: Path) -> None:
    run_dir, _ = trained
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert run_cli(["eval", str(run_dir), "--episodes", "1"])[0] == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        code, _, err = run_cli(
            ["record", str(run_dir), "--out", str(tmp_path / "v.mp4"), "--max-frames", "20"]
        )
        assert code == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_final_evaluation_is_announced(trained: tuple[Path, str]) -> None:
    _, out = trained
    assert "evaluating 2 episodes (deterministic actions) ..." in out


def test_help_does_not_import_torch_and_lists_every_option() -> None:
    code = (
        "import sys; from acktr.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'stable_baselines3', 'numpy') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and completed.stdout.strip() == "[]", completed.stdout + completed.stderr
    completed = subprocess.run(
        [sys.executable, "-m", "acktr", "train", "--help"], capture_output=True, text=True, timeout=60
    )
    for option in (
        "--keep-checkpoints",
        "--resume",
        "--eval-episodes",
        "--threads",
        "-p KEY=VALUE",
        "--backend",
    ):
        assert option in completed.stdout, option
    algo_choices = completed.stdout.split("--algo")[1].split("\n")[0]
    assert "npg" in algo_choices and "trpo" in algo_choices  # every registry entry is a choice


def test_image_env_gets_a_cnn_and_kfac_refuses_raw_pixels(tmp_path: Path) -> None:
    from acktr.factory import build_run
    from acktr.run_config import TrainOptions, resolve_config

    config = resolve_config(TrainOptions(env="CarRacing-v3", seed=0, n_envs=1))
    assert config.policy is None  # decided by the observation space
    venv, model = build_run(config)
    try:
        assert config.policy == "CnnPolicy" and type(model.policy).__name__ == "ActorCriticCnnPolicy"
    finally:
        venv.close()
    one_line_error(
        ["train", "--env", "CarRacing-v3", "-p", "policy=MlpPolicy", "--n-envs", "1", "--timesteps", "100"],
        "max_factor_dim",
    )


def test_unwritable_outputs_and_bad_paths_are_one_line_errors(
    tmp_path: Path, trained: tuple[Path, str]
) -> None:
    run_dir, _ = trained
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(
        ["train", "--env", "CartPole", "--run-dir", str(blocker), "--timesteps", "100"], "existing file"
    )
    one_line_error(["record", str(run_dir), "--out", str(blocker / "video.mp4")], "cannot write")
    one_line_error(
        ["train", "--env", "CartPole", "-p", "normalize={norm_obss: true}"], "unknown normalize key"
    )
    one_line_error(
        ["train", "--env", "CartPole", "-p", "kfac_kwargs.inverse_methd=eigen"], "unknown kfac_kwargs key"
    )
    one_line_error(["eval", str(run_dir), "--env", "Acrobot", "--episodes", "1"], "differs from")


def test_a_closed_stdout_does_not_stop_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = (
        f"{sys.executable} -m acktr train --env CartPole --timesteps 2000 -p n_steps=5 --seed 0 "
        f"--eval-episodes 0 --no-progress --run-dir {run_dir} | head -1"
    )
    completed = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert completed.stdout.startswith("run folder:"), completed.stdout + completed.stderr
    assert (run_dir / "model.zip").is_file(), completed.stderr
