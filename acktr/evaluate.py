"""``acktr eval``: the unclipped game score of a trained model (mean ± std over whole episodes).

from acktr.evaluate import evaluate_target
evaluation = evaluate_target("runs/acktr/CartPole-v1_1", episodes=10, deterministic=True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from acktr.config import UserError
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


@dataclass
class Located:
    """A model to load: its file, the run's config (None for a bare zip) and its VecNormalize stats."""

    model: Path
    config: dict[str, Any] | None
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
    config = read_yaml(run_dir / CONFIG_NAME) if (run_dir / CONFIG_NAME).is_file() else None
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


def bare_config(algo: str | None, env: str | None, device: str) -> dict[str, Any]:
    """A minimal run config for a model zip without a run folder (needs --env)."""
    from acktr.envs import is_atari, resolve_env_id

    if env is None:
        raise UserError("this model has no config.yml next to it; pass --env ENV (and --algo if not acktr)")
    try:
        env_id = resolve_env_id(env)
    except ValueError as error:
        raise UserError(str(error)) from None
    return {
        "algo": algo or "acktr",
        "env_id": env_id,
        "atari": is_atari(env_id),
        "seed": 0,
        "device": device,
        "backend": "auto",
        "hyperparams": {},
    }


def eval_env_for(
    config: dict[str, Any],
    n_envs: int,
    seed: int,
    vecnormalize: VecNormalize | Path | None,
    render_mode: str | None = None,
) -> VecEnv:
    """Evaluation env: full games, raw rewards, frozen observation statistics when the run normalised."""
    from acktr.train import make_vec_env

    venv = make_vec_env(config, n_envs, seed, training=False, render_mode=render_mode)
    if isinstance(vecnormalize, Path):
        try:
            venv = VecNormalize.load(str(vecnormalize), venv)
        except Exception as error:
            raise UserError(
                f"cannot load {vecnormalize} ({error.__class__.__name__}); delete or restore it"
            ) from None
        venv.training, venv.norm_reward = False, False
    elif vecnormalize is not None:
        normalized = VecNormalize(venv, training=False, norm_reward=False)
        normalized.obs_rms = copy.deepcopy(vecnormalize.obs_rms)
        normalized.clip_obs, normalized.epsilon = vecnormalize.clip_obs, vecnormalize.epsilon
        normalized.norm_obs = vecnormalize.norm_obs
        venv = normalized
    return venv


def evaluate_model(
    model: Any,
    config: dict[str, Any],
    episodes: int,
    deterministic: bool | None = None,
    vecnormalize: VecNormalize | Path | None = None,
    seed: int | None = None,
) -> Evaluation:
    """Play ``episodes`` whole episodes and collect the unclipped returns (``info["episode"]``)."""
    from acktr.train import EVAL_SEED_OFFSET

    if episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {episodes}")
    if deterministic is None:
        deterministic = not config.get(
            "atari", False
        )  # Atari policies are evaluated stochastically (zoo practice)
    seed = int(config.get("seed", 0)) + EVAL_SEED_OFFSET if seed is None else seed
    venv = eval_env_for(config, min(episodes, MAX_EVAL_ENVS), seed, vecnormalize)
    try:
        returns, lengths = evaluate_policy(
            model, venv, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
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
) -> Evaluation:
    """``acktr eval``: locate, load and evaluate a run folder or model zip."""
    from acktr.train import load_model

    located = locate(target, best=best)
    config = located.config if located.config is not None else bare_config(algo, env, device)
    if algo is not None:
        config = {**config, "algo": algo}
    model = load_model(config["algo"], located.model, device=device)
    return evaluate_model(model, config, episodes, deterministic, located.vecnormalize, seed)


__all__ = ["Evaluation", "Located", "eval_env_for", "evaluate_model", "evaluate_target", "locate"]
