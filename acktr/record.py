"""``acktr record``: an mp4 of a trained model playing, rendered headlessly (``render_mode="rgb_array"``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from acktr.errors import UserError
from acktr.evaluate import check_spaces, locate
from acktr.factory import EVAL_SEED_OFFSET, evaluation_env, load_model, set_threads
from acktr.run_config import bare_config, with_env

ATARI_FPS = 15  # the console runs at 60 frames/s and the agent acts (and we render) every 4th frame


def _fps(venv: Any, atari: bool) -> int:
    if atari:
        return ATARI_FPS
    try:
        metadata = venv.get_attr("metadata")[0] or {}
    except (AttributeError, IndexError):
        metadata = {}
    return int(metadata.get("render_fps") or 30)


def _choose_gl_backend(env_id: str) -> None:
    """MuJoCo renders through OpenGL: without a display, pick an offscreen backend (EGL, else OSMesa)."""
    if os.environ.get("MUJOCO_GL") or os.environ.get("DISPLAY"):
        return
    import gymnasium as gym

    try:
        entry_point = str(gym.spec(env_id).entry_point)
    except gym.error.Error:
        return
    if ".mujoco." in entry_point:
        os.environ["MUJOCO_GL"] = "egl"  # read by mujoco when the env is created below


def record(
    target: str | Path,
    episodes: int = 1,
    out: str | Path | None = None,
    algo: str | None = None,
    env: str | None = None,
    device: str = "auto",
    deterministic: bool = False,
    fps: int | None = None,
    max_frames: int = 10_000,
    best: bool = False,
    seed: int | None = None,
    threads: int | None = None,
) -> tuple[Path, int, list[float]]:
    """Play ``episodes`` episodes and write them to ``out`` (default: the model path with ``.mp4``).

    Returns the video path, the number of frames written and the unclipped return of each finished episode.
    """
    import imageio.v2 as imageio

    if episodes < 1 or max_frames < 1:
        raise UserError("--episodes and --max-frames must be >= 1")
    if fps is not None and fps < 1:
        raise UserError(f"--fps must be >= 1, got {fps}")
    located = locate(target, best=best)
    config = located.config if located.config is not None else bare_config(algo, env, device)
    if env is not None:
        config = with_env(config, env)  # checked against the model's spaces below
    if algo is not None:
        config.algo = algo
    out_path = Path(out) if out is not None else located.model.with_suffix(".mp4")
    if out_path.suffix.lower() != ".mp4":
        raise UserError(f"--out {out_path}: the video is written as mp4; give a file name ending in .mp4")
    model = load_model(config.algo, located.model, device=device)
    if config.policy is None:
        config.policy = type(model.policy).__name__
    set_threads(config, threads)
    env_seed = config.seed + EVAL_SEED_OFFSET if seed is None else seed
    _choose_gl_backend(config.env_id)
    venv = evaluation_env(config, 1, env_seed, located.vecnormalize, render_mode="rgb_array")
    returns: list[float] = []
    frames = 0
    tmp_path = out_path.with_name(f".{out_path.stem}.tmp.mp4")
    try:
        check_spaces(model, venv, config)
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            writer = imageio.get_writer(
                str(tmp_path), fps=fps or _fps(venv, config.atari), macro_block_size=2
            )
        except OSError as error:
            raise UserError(
                f"cannot write {out_path} ({error.strerror or error}); pick another --out"
            ) from None
        try:
            obs = venv.reset()
            frame = venv.render()
            if frame is None:
                raise UserError(f"{config.env_id} returned no rgb_array frame; it cannot be recorded")
            writer.append_data(np.asarray(frame, dtype=np.uint8))
            frames += 1
            while len(returns) < episodes and frames < max_frames:
                action, _ = model.predict(obs, deterministic=deterministic)
                obs, _, _, infos = venv.step(action)
                episode = infos[0].get("episode")
                if episode is not None:
                    returns.append(float(episode["r"]))
                writer.append_data(np.asarray(venv.render(), dtype=np.uint8))
                frames += 1
        finally:
            writer.close()
        tmp_path.replace(out_path)
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder of --out is not a folder: already reported
            tmp_path.unlink(missing_ok=True)
        venv.close()
    return out_path, frames, returns


__all__ = ["record"]
