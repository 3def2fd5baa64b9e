"""``acktr train``: resolve the configuration, build env and agent, learn with checkpoints, logs and progress.

    from acktr.train import TrainOptions, train
    result = train(TrainOptions(env="CartPole", timesteps=100_000, seed=0))
    result.run_dir, result.eval_mean

Resuming (``TrainOptions(resume="runs/acktr/CartPole-v1_1")``) reloads the newest committed checkpoint (model
with its K-FAC state, VecNormalize statistics, step counter), cuts ``monitor.csv`` and the TensorBoard events
back to that step, and learns on to the original total, so the logs hold every step exactly once.
"""

from __future__ import annotations

import collections
import math
import random
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from acktr import __version__
from acktr.config import (
    UserError,
    agent_parameters,
    algorithm_class,
    apply_overrides,
    build_agent_kwargs,
    check_device,
    normalize_kwargs,
    zoo_entry,
)
from acktr.runs import (
    MonitorLog,
    RunPaths,
    atomic_save_model,
    atomic_save_vecnormalize,
    atomic_write_yaml,
    latest_checkpoint,
    next_run_dir,
    read_monitor,
    read_yaml,
    save_checkpoint,
    truncate_monitor,
    truncate_tensorboard,
)

EVAL_SEED_OFFSET = 10_000  # evaluation envs never share seeds with the training envs


@dataclass
class TrainOptions:
    """Everything ``acktr train`` takes; None means "from the zoo / the default"."""

    env: str | None = None
    algo: str = "acktr"
    timesteps: int | None = None
    n_envs: int | None = None
    seed: int | None = None
    backend: str = "auto"
    device: str = "auto"
    run_dir: str | None = None
    runs_root: str = "runs"
    resume: str | None = None
    eval_freq: int = 0
    eval_episodes: int = 10
    checkpoint_freq: int | None = None
    tensorboard: bool = True
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    overrides: list[str] = field(default_factory=list)
    threads: int | None = None
    interrupt_at: int | None = None  # testing aid: stop abruptly (no final save) after this many steps
    command: str = ""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    train_mean: float | None  # mean unclipped return of the last 100 training episodes
    eval_mean: float | None = None
    eval_std: float | None = None
    interrupted: bool = False


# ------------------------------------------------------------------------------------------ configuration


def _yaml_safe_default(value: Any) -> tuple[bool, Any]:
    """Whether a constructor default can be written into config.yml, and how."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True, value
    start, end, fraction = (getattr(value, name, None) for name in ("start", "end", "end_fraction"))
    if type(value).__name__ == "LinearSchedule" and end == 0.0 and fraction == 1.0:
        return True, f"lin_{start}"
    return False, None


def resolve_config(options: TrainOptions) -> dict[str, Any]:
    """The full configuration of a new run (what config.yml stores), from the zoo, defaults and overrides."""
    from acktr.envs import choose_backend, is_atari, resolve_env_id

    if options.env is None:
        raise UserError("--env is required (e.g. --env CartPole), or pass --resume RUN_DIR")
    cls = algorithm_class(options.algo)
    check_device(options.device)
    try:
        env_id = resolve_env_id(options.env)
    except ValueError as error:
        raise UserError(f"{error}; `acktr zoo` lists the tuned ones") from None
    atari = is_atari(env_id)
    try:
        backend_used = choose_backend(env_id, options.backend)
    except ValueError as error:
        raise UserError(str(error)) from None
    entry = zoo_entry(options.algo, env_id, atari)
    hyperparams = apply_overrides(options.algo, entry.values, options.overrides)
    hyperparams.setdefault("policy", "CnnPolicy" if atari else "MlpPolicy")

    timesteps = (
        options.timesteps if options.timesteps is not None else hyperparams.pop("n_timesteps", 1_000_000)
    )
    hyperparams.pop("n_timesteps", None)
    n_envs = options.n_envs if options.n_envs is not None else hyperparams.pop("n_envs", 8)
    hyperparams.pop("n_envs", None)
    timesteps, n_envs = int(float(timesteps)), int(n_envs)
    if timesteps <= 0:
        raise UserError(f"--timesteps must be a positive number of env steps, got {timesteps}")
    if n_envs <= 0:
        raise UserError(f"--n-envs must be >= 1, got {n_envs}")
    for name, parameter in agent_parameters(cls).items():
        if name not in hyperparams and parameter.default is not parameter.empty:
            ok, value = _yaml_safe_default(parameter.default)
            if ok:
                hyperparams[name] = value
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    if options.eval_freq < 0 or options.eval_episodes < 0:
        raise UserError("--eval-freq and --eval-episodes must be >= 0 (0 turns evaluation off)")
    if options.checkpoint_freq is not None and options.checkpoint_freq <= 0:
        raise UserError(
            f"--checkpoint-freq must be a positive number of env steps, got {options.checkpoint_freq}"
        )
    return {
        "algo": options.algo,
        "env": options.env,
        "env_id": env_id,
        "atari": atari,
        "n_timesteps": timesteps,
        "n_envs": n_envs,
        "seed": int(seed),
        "backend": options.backend,
        "backend_used": backend_used,
        "device": options.device,
        "eval_freq": int(options.eval_freq),
        "eval_episodes": int(options.eval_episodes),
        "checkpoint_freq": int(options.checkpoint_freq or max(1, timesteps // 10)),
        "tensorboard": bool(options.tensorboard),
        "zoo_entry": entry.key,
        "zoo_source": entry.source,
        "overrides": list(options.overrides),
        "hyperparams": hyperparams,
        "command": options.command,
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import stable_baselines3

    return {
        "acktr": __version__,
        "torch": str(torch.__version__),
        "stable_baselines3": str(stable_baselines3.__version__),
    }


def make_vec_env(
    config: dict[str, Any], n_envs: int, seed: int, training: bool, render_mode: str | None = None
) -> VecEnv:
    """The env of a run (``training=False``: full Atari games with raw rewards, for evaluation)."""
    from acktr.envs import make_env

    hyperparams = config["hyperparams"]
    kwargs: dict[str, Any] = {}
    if config.get("atari") and "frame_stack" in hyperparams:
        kwargs["frame_stack"] = int(hyperparams["frame_stack"])
    backend = config.get("backend", "auto") if render_mode is None else "auto"
    try:
        return make_env(
            config["env_id"],
            n_envs=n_envs,
            seed=seed,
            backend=backend,
            device=config.get("device", "auto"),
            training=training,
            render_mode=render_mode,
            **kwargs,
        )
    except ValueError as error:
        raise UserError(str(error)) from None


def wrap_normalize(venv: VecEnv, config: dict[str, Any], training: bool) -> VecEnv:
    """Apply VecNormalize when the configuration asks for it (evaluation: frozen stats, raw rewards)."""
    hyperparams = config["hyperparams"]
    kwargs = normalize_kwargs(hyperparams.get("normalize"), float(hyperparams.get("gamma", 0.99)))
    if kwargs is None:
        return venv
    if not training:
        kwargs.update(training=False, norm_reward=False)
    return VecNormalize(venv, **kwargs)


def set_threads(config: dict[str, Any], threads: int | None) -> int:
    """Torch intra-op threads: ``threads`` if given, else 1 for MLP policies on CPU (tiny matmuls lose time to
    OpenMP synchronisation, badly when the cores are shared), else torch's default. Returns the count set."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    else:
        device = config.get("device", "auto")
        on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        if on_cpu and str(config["hyperparams"].get("policy", "MlpPolicy")) == "MlpPolicy":
            torch.set_num_threads(1)
    return torch.get_num_threads()


def create_model(config: dict[str, Any], venv: VecEnv) -> Any:
    """A new agent for ``config`` on ``venv`` (constructor errors become one-line UserErrors)."""
    cls = algorithm_class(config["algo"])
    kwargs = build_agent_kwargs(config["hyperparams"])
    policy = kwargs.pop("policy")
    try:
        return cls(
            policy, venv, seed=config["seed"], device=config.get("device", "auto"), verbose=0, **kwargs
        )
    except AssertionError as error:  # SB3 checks spaces with asserts
        message = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported environment"
        raise UserError(
            f"{config['algo']} cannot train on {config['env_id']}: {message}; pick another env"
        ) from None
    except (TypeError, ValueError) as error:
        raise UserError(f"cannot build {config['algo']} from the configuration: {error}") from None


def load_model(algo: str, path: Path, venv: VecEnv | None = None, device: str = "auto") -> Any:
    """``cls.load`` with one-line errors for missing or corrupt files."""
    cls = algorithm_class(algo)
    check_device(device)
    if not path.is_file():
        raise UserError(
            f"model file {path} does not exist; pass a run folder or a model.zip written by acktr train"
        )
    try:
        return cls.load(str(path), env=venv, device=device)
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as error:
        raise UserError(
            f"cannot load {path} as a {algo} model ({error.__class__.__name__}: {str(error)[:120]}); "
            f"it is corrupt or from another algorithm: pass a model.zip written by acktr train (or --algo)"
        ) from None


# ------------------------------------------------------------------------------------------------ progress


class Progress:
    """A tqdm bar (steps/s, mean return, ETA) on a terminal; otherwise a log line every 10% or 30 s."""

    def __init__(self, total: int, start: int, bar: bool) -> None:
        self.total, self.start = total, start
        self.bar = None
        self.start_time = time.perf_counter()
        self.last_line_time = self.start_time
        self.next_line_step = start + max(1, total // 10)
        if bar:
            from tqdm import tqdm

            # nrows: tqdm hides bars below the last terminal row, and some pseudo-terminals report 0 rows
            rows = max(2, shutil.get_terminal_size().lines)
            self.bar = tqdm(total=total, initial=start, unit="step", smoothing=0.1, nrows=rows)

    def update(self, step: int, mean_return: float | None) -> None:
        if self.bar is not None:
            self.bar.update(min(step, self.total) - self.bar.n)  # the last rollout may overshoot the total
            if mean_return is not None:
                self.bar.set_postfix_str(f"return {mean_return:.1f}", refresh=False)
            return
        now = time.perf_counter()
        if step >= self.next_line_step or now - self.last_line_time >= 30.0:
            self.print_line(step, mean_return)
            self.last_line_time = now
            while self.next_line_step <= step:
                self.next_line_step += max(1, self.total // 10)

    def print_line(self, step: int, mean_return: float | None) -> None:
        elapsed = time.perf_counter() - self.start_time
        speed = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / speed if speed > 0 else math.inf
        returns = "n/a" if mean_return is None else f"{mean_return:.1f}"
        print(
            f"step {step:>10,}/{self.total:,} ({100 * step / self.total:3.0f}%)  {speed:8,.0f} steps/s  "
            f"mean return {returns}  ETA {_duration(eta)}",
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ----------------------------------------------------------------------------------------------- callbacks


class RunCallback(BaseCallback):
    """Writes monitor.csv, commits checkpoints at rollout boundaries and drives the progress display.

    Checkpoints are taken when a rollout starts: the model has then been trained on every step counted in
    ``num_timesteps``, so a resume from it neither repeats nor skips an update.
    """

    def __init__(
        self,
        paths: RunPaths,
        monitor: MonitorLog,
        total: int,
        checkpoint_freq: int,
        vecnormalize: VecNormalize | None,
        progress: Progress,
        recent_returns: collections.deque[float],
        interrupt_at: int | None = None,
    ) -> None:
        super().__init__()
        self.paths, self.monitor, self.total = paths, monitor, total
        self.checkpoint_freq = checkpoint_freq
        self.vecnormalize = vecnormalize
        self.progress = progress
        self.recent_returns = recent_returns
        self.interrupt_at = interrupt_at
        self.interrupted = False
        self.next_checkpoint = 0

    def _on_training_start(self) -> None:
        self.next_checkpoint = (self.num_timesteps // self.checkpoint_freq + 1) * self.checkpoint_freq

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next_checkpoint and self.num_timesteps < self.total:
            self.checkpoint()

    def checkpoint(self) -> None:
        self.monitor.flush()
        save_checkpoint(self.paths, self.model, self.num_timesteps, self.vecnormalize, self.monitor.rows)
        while self.next_checkpoint <= self.num_timesteps:
            self.next_checkpoint += self.checkpoint_freq

    def mean_return(self) -> float | None:
        return float(np.mean(self.recent_returns)) if self.recent_returns else None

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            episode = info.get("episode")
            if episode is not None:
                self.monitor.write(episode["r"], episode["l"], self.num_timesteps)
                self.recent_returns.append(float(episode["r"]))
        self.progress.update(self.num_timesteps, self.mean_return())
        if self.interrupt_at is not None and self.num_timesteps >= self.interrupt_at:
            self.interrupted = True
            return False
        return True


class SaveBestCallback(BaseCallback):
    """Called by EvalCallback on a new best mean return: saves best_model.zip (+ stats) atomically."""

    def __init__(self, paths: RunPaths, vecnormalize: VecNormalize | None) -> None:
        super().__init__()
        self.paths, self.vecnormalize = paths, vecnormalize

    def _on_step(self) -> bool:
        atomic_save_model(self.model, self.paths.best_model)
        if self.vecnormalize is not None:
            atomic_save_vecnormalize(self.vecnormalize, self.paths.best_vecnormalize)
        return True


# -------------------------------------------------------------------------------------------------- train


def train(options: TrainOptions) -> TrainResult:
    """Run ``acktr train`` (a new run, or ``options.resume``); returns where it went and how it did."""
    if options.resume is not None:
        return _resume(options)
    config = resolve_config(options)
    if options.run_dir is not None:
        run_dir = Path(options.run_dir)
        if (run_dir / "config.yml").exists():
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    else:
        run_dir = next_run_dir(options.runs_root, config["algo"], config["env_id"])
    paths = RunPaths(run_dir)
    set_threads(config, options.threads)
    venv = wrap_normalize(make_vec_env(config, config["n_envs"], config["seed"], training=True), config, True)
    model = create_model(config, venv)
    atomic_write_yaml(paths.config, config)
    print(f"run folder: {run_dir}  ({config['algo']} on {config['env_id']}, zoo entry {config['zoo_entry']})")
    return _learn(model, venv, config, paths, options, start=0)


def _resume(options: TrainOptions) -> TrainResult:
    run_dir = Path(str(options.resume))
    paths = RunPaths(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run folder {run_dir} does not exist; pass a folder made by acktr train (runs/<algo>/<Env>_<N>)"
        )
    if not paths.config.is_file():
        raise UserError(
            f"{run_dir} has no config.yml, so it is not a run folder; pass one made by acktr train"
        )
    config = read_yaml(paths.config)
    if paths.model.is_file():  # model.zip is written only when a run completes
        raise UserError(
            f"{run_dir} already finished ({config['n_timesteps']} steps); start a new run instead"
        )
    checkpoint = latest_checkpoint(paths)
    step = 0 if checkpoint is None else int(checkpoint["step"])
    set_threads(config, options.threads)
    truncate_monitor(paths.monitor, step)
    truncate_tensorboard(paths.tb, step)
    if checkpoint is None:  # stopped before its first checkpoint: start over with the same configuration
        print(f"{run_dir} has no checkpoint yet; restarting it from step 0 with its config.yml")
        venv0 = make_vec_env(config, config["n_envs"], int(config["seed"]), training=True)
        venv0 = wrap_normalize(venv0, config, training=True)
        return _learn(create_model(config, venv0), venv0, config, paths, options, start=0)
    venv: VecEnv = make_vec_env(config, config["n_envs"], int(config["seed"]) + step, training=True)
    if checkpoint.get("vecnormalize"):
        venv = VecNormalize.load(str(checkpoint["vecnormalize"]), venv)
        venv.training = True
    model = load_model(config["algo"], Path(checkpoint["model"]), venv, device=config.get("device", "auto"))
    if int(model.num_timesteps) != step:
        raise UserError(
            f"checkpoint {checkpoint['model']} holds step {model.num_timesteps}, not {step}; delete it"
        )
    print(f"resuming {run_dir} from step {step:,} of {int(config['n_timesteps']):,}")
    return _learn(model, venv, config, paths, options, start=step)


def _learn(
    model: Any, venv: VecEnv, config: dict[str, Any], paths: RunPaths, options: TrainOptions, start: int
) -> TrainResult:
    total = int(config["n_timesteps"])
    vecnormalize = venv if isinstance(venv, VecNormalize) else None
    model.set_logger(configure(str(paths.tb), ["tensorboard"] if config.get("tensorboard", True) else []))
    monitor = MonitorLog(paths.monitor, config["env_id"])
    recent: collections.deque[float] = collections.deque(maxlen=100)
    if start > 0:
        recent.extend(row["r"] for row in read_monitor(paths.monitor)[-100:])
    show_bar = sys.stderr.isatty() if options.progress is None else options.progress
    progress = Progress(total, start, bar=show_bar)
    run_callback = RunCallback(
        paths,
        monitor,
        total,
        int(config["checkpoint_freq"]),
        vecnormalize,
        progress,
        recent,
        options.interrupt_at,
    )
    callbacks: list[BaseCallback] = [run_callback]
    eval_env = None
    if config.get("eval_freq", 0) > 0 and config.get("eval_episodes", 0) > 0:
        eval_env = _eval_env(config)
        callbacks.append(
            EvalCallback(
                eval_env,
                n_eval_episodes=int(config["eval_episodes"]),
                eval_freq=max(1, int(config["eval_freq"]) // int(config["n_envs"])),
                deterministic=not config.get("atari", False),
                callback_on_new_best=SaveBestCallback(paths, vecnormalize),
                verbose=0,
            )
        )
    rollout = int(config["n_envs"]) * int(getattr(model, "n_steps", 1))
    log_interval = max(1, total // rollout // 100)  # about 100 TensorBoard points per run
    started = time.perf_counter()
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
    finally:
        progress.close()
        monitor.close()
        model.logger.close()  # flushes and closes the TensorBoard writer
        if eval_env is not None:
            eval_env.close()
    seconds = time.perf_counter() - started
    steps = int(model.num_timesteps)
    train_mean = run_callback.mean_return()
    if run_callback.interrupted:
        venv.close()
        checkpoint = latest_checkpoint(paths)
        where = f"from step {checkpoint['step']:,}" if checkpoint else "from step 0 (no checkpoint yet)"
        print(
            f"interrupted at step {steps:,}; resume {where} with: acktr train --resume {paths.root}",
            flush=True,
        )
        return TrainResult(paths.root, steps, seconds, train_mean, interrupted=True)
    atomic_save_model(model, paths.model)
    if vecnormalize is not None:
        atomic_save_vecnormalize(vecnormalize, paths.vecnormalize)
    venv.close()
    speed = (steps - start) / seconds if seconds > 0 else 0.0
    mean_text = "n/a" if train_mean is None else f"{train_mean:.1f}"
    print(
        f"trained {steps:,} steps in {seconds:.1f} s ({speed:,.0f} steps/s); "
        f"mean return (last 100 episodes) {mean_text}"
    )
    result = TrainResult(paths.root, steps, seconds, train_mean)
    if int(config.get("eval_episodes", 0)) > 0:
        from acktr.evaluate import evaluate_model

        evaluation = evaluate_model(
            model, config, episodes=int(config["eval_episodes"]), vecnormalize=vecnormalize
        )
        result.eval_mean, result.eval_std = evaluation.mean, evaluation.std
        print(
            f"final mean return {evaluation.mean:.2f} ± {evaluation.std:.2f} over {evaluation.episodes} "
            f"episodes ({'deterministic' if evaluation.deterministic else 'stochastic'} actions)"
        )
    print(f"saved {paths.model}; TensorBoard: tensorboard --logdir {paths.root.parent}")
    return result


def _eval_env(config: dict[str, Any], n_envs: int = 1) -> VecEnv:
    eval_env = make_vec_env(config, n_envs, int(config["seed"]) + EVAL_SEED_OFFSET, training=False)
    return wrap_normalize(eval_env, config, training=False)


def command_line(argv: list[str]) -> str:
    return "acktr " + shlex.join(argv)


__all__ = [
    "TrainOptions",
    "TrainResult",
    "command_line",
    "create_model",
    "load_model",
    "resolve_config",
    "train",
]
