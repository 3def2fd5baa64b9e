"""``VecCheckFinite``: NaN/inf observations, rewards and actions caught at the env boundary.

SB3's ``VecCheckNan`` finds them but reports a multi-line message (with the whole observation batch) and no
step; this subclass reuses its array check and raises :class:`~acktr.errors.NonFiniteEnvError` with one line
naming the env id, the copy, the env step and the fix, before a NaN reaches the rollout buffer (where it would
surface much later as a NaN policy). :func:`acktr.factory.make_run_env` applies it on every backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from acktr.errors import NonFiniteEnvError


class VecCheckFinite(VecCheckNan):
    """Raise a one-line :class:`NonFiniteEnvError` on the first NaN/inf observation, reward or action.

    :param venv: the env to check (observations may be arrays or dicts of arrays; integer arrays, e.g.
        Atari frames, cannot hold NaN and are not scanned).
    :param env_id: named in the message.
    :param start_step: env steps taken before this env was made (a resumed run), so the message gives the
        run's step count.
    """

    def __init__(self, venv: VecEnv, env_id: str, start_step: int = 0) -> None:
        super().__init__(venv, raise_exception=True, warn_once=False, check_inf=True)
        self.env_id = env_id
        self.env_steps = int(start_step)

    def step_async(self, actions: np.ndarray) -> None:
        self._check("action", actions, "")
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        observations, rewards, dones, infos = self.venv.step_wait()
        self.env_steps += self.num_envs
        self._check("observation", observations, "returned")
        self._check("reward", rewards, "returned")
        for index in np.flatnonzero(dones):
            terminal = infos[index].get("terminal_observation")
            if terminal is not None:
                self._check("terminal observation", _batch_of_one(terminal), "returned", first_env=int(index))
        return observations, rewards, dones, infos

    def reset(self) -> VecEnvObs:
        observations = self.venv.reset()
        self._check("observation", observations, "returned at reset")
        return observations

    def _check(self, what: str, value: Any, verb: str, first_env: int | None = None) -> None:
        arrays = value.items() if isinstance(value, dict) else [("", value)]
        for key, array in arrays:
            array = np.asarray(array)
            if array.dtype.kind not in "fc" or not self.check_array_value(what, array):
                continue
            rows = array.reshape(len(array), -1) if array.ndim > 0 else array.reshape(1, 1)
            bad_env = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
            env_index = bad_env if first_env is None else first_env
            kind = "NaN" if np.isnan(rows[bad_env]).any() else "inf"
            name = f"{what} {key!r}" if key else what
            if what == "action":
                fix = (
                    "the policy's parameters diverged: lower the learning rate or kl_clip, or normalise "
                    "observations and rewards (-p normalize=true)"
                )
            else:
                fix = (
                    "the environment is numerically broken there: fix its dynamics or reward, or clip or "
                    "replace non-finite values in a gymnasium wrapper"
                )
            at = f"at env step {self.env_steps:,}"
            if what == "action":
                happened = f"the policy sent env {env_index} a {kind} action {at}"
            else:
                happened = f"env {env_index} {verb} a {kind} {name} {at}"
            raise NonFiniteEnvError(f"{self.env_id}: {happened}; {fix}")


def _batch_of_one(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: np.asarray(item)[None] for key, item in value.items()}
    return np.asarray(value)[None]


__all__ = ["VecCheckFinite"]
