"""SB3 callbacks of an ``acktr train`` run: the episode log, checkpoints, progress and the best model."""

from __future__ import annotations

import collections

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from acktr import interrupts
from acktr.progress import Progress
from acktr.runs import MonitorLog, RunPaths, atomic_save_model, atomic_save_vecnormalize, save_checkpoint


class RunCallback(BaseCallback):
    """Writes monitor.csv, commits checkpoints at rollout boundaries and drives the progress display.

    Checkpoints are taken when a rollout starts: the model has then been trained on every step counted in
    ``num_timesteps``, so a resume from it neither repeats nor skips an update. monitor.csv is flushed at
    the end of every rollout, so ``acktr plot`` or ``tail -f`` see the run as it goes.
    """

    def __init__(
        self,
        paths: RunPaths,
        monitor: MonitorLog,
        total: int,
        checkpoint_freq: int,
        keep_checkpoints: int,
        vecnormalize: VecNormalize | None,
        progress: Progress,
        recent_returns: collections.deque[float],
        interrupt_at: int | None = None,
    ) -> None:
        super().__init__()
        self.paths, self.monitor, self.total = paths, monitor, total
        self.checkpoint_freq, self.keep_checkpoints = checkpoint_freq, keep_checkpoints
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

    def _on_rollout_end(self) -> None:
        self.monitor.flush(sync=False)

    def checkpoint(self) -> None:
        self.monitor.flush()
        save_checkpoint(
            self.paths,
            self.model,
            self.num_timesteps,
            self.vecnormalize,
            self.monitor.rows,
            keep=self.keep_checkpoints,
        )
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
        if interrupts.requested() is not None:  # SIGINT/SIGTERM: stop here, between two env steps
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


__all__ = ["RunCallback", "SaveBestCallback"]
