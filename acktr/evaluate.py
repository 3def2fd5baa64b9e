"""``acktr eval``: the unclipped game score of a trained model (mean ± std over whole episodes).

from acktr.evaluate import evaluate_target
evaluation = evaluate_target("runs/acktr/CartPole-v1_1", episodes=10, deterministic=True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from acktr.errors import UserError
from acktr.factory import EVAL_SEED_OFFSET, evaluation_env, load_model, set_threads
from acktr.progress import say
from acktr.run_config import RunConfig, bare_config, with_env
from acktr.runs import (
    BEST_MODEL_NAME,
    BEST_VECNORMALIZE_NAME,
    CHECKPOINT_DIR,
    CONFIG_NAME,
    MODEL_NAME,
    VECNORMALIZE_NAME,
    read_yaml,
)

MAX_EVAL_ENVS = 8
QUIET_SECONDS = 10.0  # an announced evaluation reports finished episodes once it has taken this long


@dataclass
class Located:
    """A model to load: its file, the run's config (None for a bare zip) and its VecNormalize stats."""

    model: Path
    config: RunConfig | None
    vecnormalize: Path | None


@dataclass
class Evaluation:
    returns: list[float]
    lengths: list[int]
    deterministic: bool

    @property
    def episodes(self) -> int:
        return len(self.returns)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def locate(target: str | Path, best: bool = False) -> Located:
    """Resolve ``RUN_DIR`` or ``MODEL.zip`` (a run's model, best model or checkpoint, or a bare file)."""
    path = Path(target)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise UserError(
                f"{path} has no {CONFIG_NAME}, so it is not a run folder; pass one made by acktr train"
            )
        model = path / (BEST_MODEL_NAME if best else MODEL_NAME)
        if not model.is_file():
            hint = "it has no best model: train with --eval-freq" if best else "training has not finished: "
            hint += "" if best else f"pass a checkpoint zip from {path / CHECKPOINT_DIR} or --resume the run"
            raise UserError(f"{model} does not exist; {hint}")
        path = model
    elif not path.exists():
        raise UserError(f"{path} does not exist; pass a run folder (runs/<algo>/<Env>_<N>) or a model .zip")
    run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
    config_path = run_dir / CONFIG_NAME
    config = RunConfig.from_dict(read_yaml(config_path), config_path) if config_path.is_file() else None
    return Located(path, config, _stats_for(path))


def _stats_for(model: Path) -> Path | None:
    """The VecNormalize statistics saved with ``model`` (same stem), if any."""
    if model.name == MODEL_NAME:
        candidate = model.with_name(VECNORMALIZE_NAME)
    elif model.name == BEST_MODEL_NAME:
        candidate = model.with_name(BEST_VECNORMALIZE_NAME)
    else:
        candidate = model.with_name(f"{model.stem}_vecnormalize.pkl")
    return candidate if candidate.is_file() else None


def check_spaces(model: Any, venv: Any, config: RunConfig) -> None:
    """UserError when the env's spaces are not the ones the model was trained on."""
    wrapped = model._wrap_env(venv, verbose=0, monitor_wrapper=False)  # SB3's channel-first transposition
    for kind in ("observation_space", "action_space"):
        expected, got = getattr(model, kind), getattr(wrapped, kind)
        if expected is not None and expected != got:
            raise UserError(
                f"the model's {kind.replace('_', ' ')} {expected} differs from {config.env_id}'s {got}; "
                "evaluate it on the env it was trained on (--env)"
            )


def evaluate_model(
    model: Any,
    config: RunConfig,
    episodes: int,
    deterministic: bool | None = None,
    vecnormalize: VecNormalize | Path | None = None,
    seed: int | None = None,
    announce: bool = False,
) -> Evaluation:
    """Play ``episodes`` whole episodes and collect the unclipped returns (``info["episode"]``).

    ``announce``: print a line before starting and, once it has run for a while (long Atari games), one
    line per finished episode, so a long evaluation is never silent.
    """
    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if deterministic is None:
        deterministic = not config.atari  # Atari policies are evaluated stochastically (zoo practice)
    seed = config.seed + EVAL_SEED_OFFSET if seed is None else seed
    venv = evaluation_env(config, min(episodes, MAX_EVAL_ENVS), seed, vecnormalize)
    mode = "deterministic" if deterministic else "stochastic"
    started = time.perf_counter()
    finished = 0

    def report(local_vars: dict[str, Any], _globals: dict[str, Any]) -> None:
        nonlocal finished
        done = len(local_vars.get("episode_rewards", ()))
        if done > finished and time.perf_counter() - started > QUIET_SECONDS:
            say(f"  evaluation episode {done}/{episodes} done")
        finished = done

    if announce:
        say(f"evaluating {episodes} episodes ({mode} actions) ...")
    try:
        check_spaces(model, venv, config)
        returns, lengths = evaluate_policy(
            model,
            venv,
            n_eval_episodes=episodes,
            deterministic=deterministic,
            return_episode_rewards=True,
            callback=report if announce else None,
        )
    finally:
        venv.close()
    return Evaluation([float(r) for r in returns], [int(n) for n in lengths], deterministic)  # type: ignore[union-attr]


def evaluate_target(
    target: str | Path,
    episodes: int = 10,
    deterministic: bool = False,
    algo: str | None = None,
    env: str | None = None,
    device: str = "auto",
    best: bool = False,
    seed: int | None = None,
    threads: int | None = None,
) -> Evaluation:
    """``acktr eval``: locate, load and evaluate a run folder or model zip."""
    located = locate(target, best=best)
    config = located.config if located.config is not None else bare_config(algo, env, device)
    if env is not None:
        config = with_env(config, env)  # checked against the model's spaces below
    if algo is not None:
        config.algo = algo
    model = load_model(config.algo, located.model, device=device)
    if config.policy is None:
        config.policy = type(model.policy).__name__  # decides the thread default (CNN or not)
    set_threads(config, threads)
    return evaluate_model(model, config, episodes, deterministic, located.vecnormalize, seed)


__all__ = ["Evaluation", "Located", "check_spaces", "evaluate_model", "evaluate_target", "locate"]
