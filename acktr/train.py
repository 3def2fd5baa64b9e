"""``acktr train``: a new run or a resumed one, from configuration to the saved model.

    from acktr.train import TrainOptions, train
    result = train(TrainOptions(env="CartPole", timesteps=100_000, seed=0))
    result.run_dir, result.eval_mean

Resuming (``TrainOptions(resume="runs/acktr/CartPole-v1_1")``) reloads the newest committed checkpoint (model
with its K-FAC state, VecNormalize statistics, step counter), cuts ``monitor.csv`` and the TensorBoard events
back to that step, and learns on to the run's total, so the logs hold every step exactly once. A finished run
(one with model.zip) is extended from model.zip when ``timesteps`` asks for more steps than it has taken.
Settings that do not change what is learned (evaluation, checkpoints, progress, threads, TensorBoard) may be
changed on resume; the rest (algorithm, env, seed, hyperparameters, ...) is the run's own and cannot.

This module orchestrates; configuration (:mod:`acktr.run_config`), building (:mod:`acktr.factory`), the
callbacks (:mod:`acktr.callbacks`) and the run folder (:mod:`acktr.runs`) live beside it.
"""

from __future__ import annotations

import collections
import contextlib
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from acktr import interrupts
from acktr.agents.optim import NonFiniteUpdateError
from acktr.callbacks import RunCallback, SaveBestCallback
from acktr.errors import NonFiniteEnvError, UserError
from acktr.evaluate import evaluate_model
from acktr.factory import (
    EVAL_SEED_OFFSET,
    build_run,
    evaluation_env,
    load_model,
    make_run_env,
    set_threads,
)
from acktr.progress import Progress, say
from acktr.run_config import RunConfig, TrainOptions, resolve_config
from acktr.runs import (
    MonitorLog,
    RunPaths,
    atomic_save_model,
    atomic_save_vecnormalize,
    atomic_write_yaml,
    claim_run_dir,
    latest_checkpoint,
    read_monitor,
    read_yaml,
    remove_stale_temporaries,
    save_checkpoint,
    truncate_monitor,
    truncate_tensorboard,
    wait_for_later_event_file_name,
)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    train_mean: float | None  # mean unclipped return of the last 100 training episodes
    eval_mean: float | None = None
    eval_std: float | None = None
    interrupted: bool = False


def train(options: TrainOptions) -> TrainResult:
    """Run ``acktr train`` (a new run, or ``options.resume``); returns where it went and how it did."""
    if options.resume is not None:
        return _resume(options)
    config = resolve_config(options)
    run_dir = _new_run_dir(options, config)
    paths = RunPaths(run_dir)
    try:
        venv, model = build_run(config)  # also decides config.policy from the observation space
    except BaseException:
        _remove_if_empty(run_dir)  # a claimed folder that never became a run
        raise
    try:
        set_threads(config, options.threads)
        atomic_write_yaml(paths.config, config.to_dict())
    except BaseException:
        venv.close()
        _remove_if_empty(run_dir)
        raise
    say(
        f"run folder: {run_dir}  ({config.algo} on {config.env_id}, {config.policy}, zoo entry "
        f"{config.zoo_entry}, backend {config.backend_used})"
    )
    return _learn(model, venv, config, paths, options, start=0)


def _remove_if_empty(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only succeeds when empty


def _new_run_dir(options: TrainOptions, config: RunConfig) -> Path:
    if options.run_dir is None:
        return claim_run_dir(options.runs_root, config.algo, config.env_id)
    run_dir = Path(options.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is an existing file; pass a folder path")
    if (run_dir / "config.yml").exists():
        raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    return run_dir


# ------------------------------------------------------------------------------------------------ resume

# TrainOptions fields a resume may change, and the RunConfig field each one sets.
CHANGEABLE_ON_RESUME = {
    "eval_freq": "eval_freq",
    "eval_episodes": "eval_episodes",
    "checkpoint_freq": "checkpoint_freq",
    "keep_checkpoints": "keep_checkpoints",
    "timesteps": "n_timesteps",
}


def read_run_config(paths: RunPaths) -> RunConfig:
    """The run's config.yml as a :class:`RunConfig` (one-line errors for missing or invalid files)."""
    if not paths.root.is_dir():
        raise UserError(
            f"run folder {paths.root} does not exist; pass a folder made by acktr train "
            "(runs/<algo>/<Env>_<N>)"
        )
    if not paths.config.is_file():
        raise UserError(
            f"{paths.root} has no config.yml, so it is not a run folder; pass one made by acktr train"
        )
    return RunConfig.from_dict(read_yaml(paths.config), paths.config)


def _apply_resume_changes(config: RunConfig, options: TrainOptions, step: int) -> list[str]:
    """Change what ``options`` may change on a resumed run; returns a description of each change."""
    if options.algo is not None and options.algo != config.algo:
        raise UserError(f"--algo {options.algo}: this run was trained with {config.algo}; drop --algo")
    changes = []
    for option_name, field_name in CHANGEABLE_ON_RESUME.items():
        value = getattr(options, option_name)
        if value is None or value == getattr(config, field_name):
            continue
        if option_name == "timesteps" and value <= step:
            raise UserError(
                f"--timesteps {value:,}: the run has already taken {step:,} steps; ask for more or drop it"
            )
        if value < 0 or (value == 0 and option_name in ("checkpoint_freq", "timesteps")):
            raise UserError(f"--{option_name.replace('_', '-')} must be positive, got {value}")
        changes.append(f"{field_name} {getattr(config, field_name)} -> {value}")
        setattr(config, field_name, int(value))
    if not options.tensorboard and config.tensorboard:
        config.tensorboard = False
        changes.append("tensorboard off")
    return changes


def _resume(options: TrainOptions) -> TrainResult:
    paths = RunPaths(Path(str(options.resume)))
    config = read_run_config(paths)
    remove_stale_temporaries(paths.root)  # left by a process killed in the middle of an atomic write
    finished = paths.model.is_file()  # model.zip is written only when a run completes
    checkpoint = None if finished else latest_checkpoint(paths)
    if finished:
        model_file: Path | None = paths.model
        stats_file: Path | None = paths.vecnormalize if paths.vecnormalize.is_file() else None
        step = _saved_step(config, paths.model)
        if options.timesteps is None or options.timesteps <= step:
            raise UserError(
                f"{paths.root} already finished ({step:,} steps); extend it with --timesteps N "
                f"(N > {step:,}) or start a new run"
            )
    else:
        model_file = None if checkpoint is None else Path(checkpoint["model"])
        stats_file = (
            None
            if checkpoint is None or not checkpoint.get("vecnormalize")
            else Path(checkpoint["vecnormalize"])
        )
        step = 0 if checkpoint is None else int(checkpoint["step"])
    changes = _apply_resume_changes(config, options, step)
    set_threads(config, options.threads)
    truncate_monitor(paths.monitor, step)
    truncate_tensorboard(paths.tb, step)
    wait_for_later_event_file_name(paths.tb)
    if model_file is None:  # stopped before its first checkpoint: start over with the same configuration
        say(f"{paths.root} has no checkpoint yet; restarting it from step 0 with its config.yml")
        venv0, model0 = build_run(config)
        atomic_write_yaml(paths.config, config.to_dict())
        return _learn(model0, venv0, config, paths, options, start=0)
    venv: VecEnv = make_run_env(config, seed=config.seed + step, training=True, start_step=step)
    if stats_file is not None:
        venv = VecNormalize.load(str(stats_file), venv)
        venv.training = True
    model = load_model(config.algo, model_file, venv, device=config.device)
    if int(model.num_timesteps) != step:
        venv.close()
        raise UserError(f"{model_file} holds step {model.num_timesteps}, not {step}; delete it")
    if finished:
        # The run is unfinished again until it reaches its new total: its final model becomes the newest
        # checkpoint first, so an interrupted extension resumes from it.
        vecnormalize = venv if isinstance(venv, VecNormalize) else None
        rows = len(read_monitor(paths.monitor)) if paths.monitor.is_file() else 0
        save_checkpoint(paths, model, step, vecnormalize, rows, keep=config.keep_checkpoints)
        paths.model.unlink()
    atomic_write_yaml(paths.config, config.to_dict())
    what = "extending" if finished else "resuming"
    say(
        f"{what} {paths.root} from step {step:,} to {config.n_timesteps:,}"
        + (f" ({'; '.join(changes)})" if changes else "")
    )
    return _learn(model, venv, config, paths, options, start=step)


def _saved_step(config: RunConfig, model_file: Path) -> int:
    """The step count stored in a model zip, read without building the agent."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(model_file) as archive:
            data = json.loads(archive.read("data"))
        return int(data["num_timesteps"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        raise UserError(
            f"cannot read the step count of {model_file}; it is corrupt: start a new run"
        ) from None


# ------------------------------------------------------------------------------------------------- learn


def _learn(
    model: Any, venv: VecEnv, config: RunConfig, paths: RunPaths, options: TrainOptions, start: int
) -> TrainResult:
    total = config.n_timesteps
    vecnormalize = venv if isinstance(venv, VecNormalize) else None
    if config.tensorboard:
        model.set_logger(configure(str(paths.tb), ["tensorboard"]))
    else:
        model.set_logger(Logger(folder=None, output_formats=[]))  # no tb/ folder at all
    monitor = MonitorLog(paths.monitor, config.env_id)
    recent: collections.deque[float] = collections.deque(maxlen=100)
    if start > 0:
        recent.extend(row["r"] for row in read_monitor(paths.monitor)[-100:])
    show_bar = sys.stderr.isatty() if options.progress is None else options.progress
    progress = Progress(total, start, bar=show_bar)
    run_callback = RunCallback(
        paths,
        monitor,
        total,
        config.checkpoint_freq,
        config.keep_checkpoints,
        vecnormalize,
        progress,
        recent,
        options.interrupt_at,
    )
    callbacks: list[BaseCallback] = [run_callback]
    eval_env = None
    if config.eval_freq > 0 and config.eval_episodes > 0:
        eval_env = evaluation_env(config, 1, config.seed + EVAL_SEED_OFFSET, vecnormalize)
        callbacks.append(
            EvalCallback(
                eval_env,
                n_eval_episodes=config.eval_episodes,
                eval_freq=max(1, config.eval_freq // config.n_envs),
                deterministic=not config.atari,
                callback_on_new_best=SaveBestCallback(paths, vecnormalize),
                verbose=0,
            )
        )
    rollout = config.n_envs * int(getattr(model, "n_steps", 1))
    log_interval = max(1, total // rollout // 100)  # about 100 TensorBoard points per run
    started = time.perf_counter()
    failure: Exception | None = None
    try:
        model.learn(
            total_timesteps=total - start,
            callback=CallbackList(callbacks),
            log_interval=log_interval,
            reset_num_timesteps=start == 0,
            progress_bar=False,
        )
    except KeyboardInterrupt:
        run_callback.interrupted = True
    except (NonFiniteEnvError, NonFiniteUpdateError) as error:
        failure = error
    finally:
        progress.close()
        monitor.close()
        model.logger.close()  # flushes and closes the TensorBoard writer
        if eval_env is not None:
            eval_env.close()
    seconds = time.perf_counter() - started
    steps = int(model.num_timesteps)
    train_mean = run_callback.mean_return()
    if failure is not None:
        venv.close()
        raise _stopped_error(failure, paths, steps) from None
    if run_callback.interrupted:
        venv.close()
        checkpoint = latest_checkpoint(paths)
        where = f"from step {checkpoint['step']:,}" if checkpoint else "from step 0 (no checkpoint yet)"
        by = f" by {interrupts.requested()}" if interrupts.requested() else ""
        say(f"interrupted{by} at step {steps:,}; resume {where} with: acktr train --resume {paths.root}")
        return TrainResult(paths.root, steps, seconds, train_mean, interrupted=True)
    atomic_save_model(model, paths.model)
    if vecnormalize is not None:
        atomic_save_vecnormalize(vecnormalize, paths.vecnormalize)
    venv.close()
    interrupts.stop_deferring()  # the model is saved: a signal now ends the process at once
    speed = (steps - start) / seconds if seconds > 0 else 0.0
    mean_text = "n/a" if train_mean is None else f"{train_mean:.1f}"
    say(
        f"trained {steps:,} steps in {seconds:.1f} s ({speed:,.0f} steps/s); "
        f"mean return (last 100 episodes) {mean_text}"
    )
    result = TrainResult(paths.root, steps, seconds, train_mean)
    if config.eval_episodes > 0:
        evaluation = evaluate_model(
            model, config, episodes=config.eval_episodes, vecnormalize=vecnormalize, announce=True
        )
        result.eval_mean, result.eval_std = evaluation.mean, evaluation.std
        say(
            f"final mean return {evaluation.mean:.2f} ± {evaluation.std:.2f} over {evaluation.episodes} "
            f"episodes ({'deterministic' if evaluation.deterministic else 'stochastic'} actions)"
        )
    say(f"saved {paths.model}; TensorBoard: tensorboard --logdir {paths.root.parent}")
    return result


def _stopped_error(failure: Exception, paths: RunPaths, steps: int) -> UserError:
    """The one-line error of a run stopped by non-finite numbers, naming its last good checkpoint."""
    checkpoint = latest_checkpoint(paths)
    kept = (
        f"the last good checkpoint ({checkpoint['model']}, step {checkpoint['step']:,}) is intact"
        if checkpoint
        else "no checkpoint was written yet"
    )
    error_type = NonFiniteEnvError if isinstance(failure, NonFiniteEnvError) else UserError
    return error_type(f"training stopped at step {steps:,}: {failure}; {kept}")


def command_line(argv: list[str]) -> str:
    return "acktr " + shlex.join(argv)


__all__ = ["TrainOptions", "TrainResult", "command_line", "read_run_config", "train"]
