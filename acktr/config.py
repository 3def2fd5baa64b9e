"""Algorithms, zoo look-up and ``-p key=value`` overrides for the command line.

A run's configuration is a plain YAML-safe dict (what ``config.yml`` stores); :func:`build_agent_kwargs` turns
it into constructor keywords (schedules, activation classes) at the last moment, so a loaded ``config.yml``
rebuilds exactly the same agent.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from acktr.zoo import SPECIAL_KEYS, entry_sources, load_zoo


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one-line message and exits with code 2."""


# --algo name -> (module, class name); names whose class is missing are "not available yet".
ALGORITHMS: dict[str, tuple[str, str]] = {
    "acktr": ("acktr.agents", "ACKTR"),
    "npg": ("acktr.agents", "NPG"),
    "noisy-acktr": ("acktr.agents", "NoisyACKTR"),
    "a2c": ("stable_baselines3", "A2C"),
    "ppo": ("stable_baselines3", "PPO"),
}

# Zoo keys that are not constructor keywords of the agent.
ZOO_KEYS: tuple[str, ...] = ("n_timesteps", "n_envs", "policy", "normalize", "frame_stack", "env_wrapper")
ZOO_KEY_TYPES: dict[str, Any] = {
    "n_timesteps": int,
    "n_envs": int,
    "policy": str,
    "normalize": bool | dict,
    "frame_stack": int,
    "env_wrapper": list | str | None,
}
# Constructor parameters the command line owns (set from --seed, --device, the run folder, ...).
RESERVED_PARAMS: tuple[str, ...] = (
    "self",
    "env",
    "seed",
    "device",
    "tensorboard_log",
    "verbose",
    "_init_setup_model",
)

_SCHEDULE = re.compile(r"^lin_(?P<start>[-+0-9.eE]+)$")


def algorithm_class(algo: str) -> Any:
    """The agent class of ``--algo`` (raises :class:`UserError` for unknown or not-yet-available ones)."""
    if algo not in ALGORITHMS:
        raise UserError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGORITHMS)}")
    module_name, class_name = ALGORITHMS[algo]
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError as error:
        raise UserError(
            f"algorithm {algo!r} cannot be imported ({error}); reinstall acktr (pip install -e .)"
        ) from None
    if cls is None:
        raise UserError(
            f"algorithm {algo!r} is not available yet in this version; use --algo acktr (or a2c/ppo)"
        )
    return cls


def agent_parameters(cls: Any) -> dict[str, inspect.Parameter]:
    """Constructor parameters of an agent class that ``-p`` may set (``policy`` included)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {
        name: p for name, p in parameters.items() if name not in RESERVED_PARAMS and p.kind != p.VAR_KEYWORD
    }


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``function``, one by one (a name that does not resolve is left out)."""
    globalns = getattr(function, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:
                annotation = eval(
                    annotation, dict(globalns)
                )  # annotations are code of the agent's own module
            except Exception:
                continue  # e.g. a forward reference to a name only imported under TYPE_CHECKING
        hints[name] = annotation
    return hints


def check_device(device: str) -> str:
    """``device`` if torch can use it (``auto``, ``cpu``, ``cuda[:N]`` with a visible GPU), else UserError."""
    import torch

    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu (or auto)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); pick another index"
        )
    return device


# ----------------------------------------------------------------------------------------------- zoo look-up


@dataclass
class ZooEntry:
    """The zoo block chosen for an environment: its key in the YAML file, its values and their source."""

    key: str
    values: dict[str, Any]
    source: str


def zoo_entry(algo: str, env_id: str, atari: bool) -> ZooEntry:
    """The block for ``env_id`` (full id): its own entry, else ``atari`` for Atari games, else ``default``."""
    zoo = load_zoo(algo)
    sources = entry_sources(algo)
    for key in (env_id, "atari" if atari else None, "default"):
        if key is not None and key in zoo:
            return ZooEntry(key, dict(zoo[key]), sources.get(key, ""))
    return ZooEntry("(none)", {}, "no zoo file for this algorithm: agent defaults")


def list_zoo(algo: str) -> list[tuple[str, dict[str, Any], str]]:
    """(key, values, source) of every entry of ``algo``'s zoo, environment ids first, special blocks last."""
    zoo = load_zoo(algo)
    sources = entry_sources(algo)
    keys = [key for key in zoo if key not in SPECIAL_KEYS] + [key for key in SPECIAL_KEYS if key in zoo]
    return [(key, zoo[key], sources.get(key, "")) for key in keys]


# ----------------------------------------------------------------------------------------- -p key=value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"policy_kwargs.net_arch=[64,64]"`` -> ``(["policy_kwargs", "net_arch"], [64, 64])`` (YAML values)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"-p {text!r} is not key=value; write e.g. -p kl_clip=0.002")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # unparsable as YAML: keep the text (type checking decides whether a string is allowed)
    return key.split("."), value


def apply_overrides(algo: str, hyperparams: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Copy of ``hyperparams`` with every ``-p`` override applied and type-checked against the agent."""
    cls = algorithm_class(algo)
    parameters = agent_parameters(cls)
    hints = _type_hints(cls.__init__)
    result = dict(hyperparams)
    for text in overrides:
        path, value = parse_override(text)
        name = path[0]
        if name not in parameters and name not in ZOO_KEYS:
            close = _closest(name, [*parameters, *ZOO_KEYS])
            raise UserError(
                f"unknown hyperparameter {name!r} for {algo}{close}; see `acktr zoo --algo {algo} ENV`"
            )
        if len(path) == 1:
            annotation = ZOO_KEY_TYPES.get(name, hints.get(name))
            result[name] = check_value(name, value, annotation, parameters.get(name))
            continue
        if name not in ("policy_kwargs", "normalize", "kfac_kwargs", "rollout_buffer_kwargs"):
            raise UserError(f"-p {text!r}: {name} has no sub-keys; write -p {name}=VALUE")
        container = result.get(name)
        container = dict(container) if isinstance(container, dict) else {}
        if name == "policy_kwargs" and len(path) == 2:
            value = check_policy_kwarg(path[1], value, result.get("policy", "MlpPolicy"), cls)
        target = container
        for part in path[1:-1]:
            child = target.get(part)
            target[part] = dict(child) if isinstance(child, dict) else {}
            target = target[part]
        target[path[-1]] = value
        result[name] = container
    return result


def _closest(name: str, candidates: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, candidates, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace(
        "collections.abc.Callable[[float], float]", "lin_<start> schedule"
    )
    return text


def check_value(name: str, value: Any, annotation: Any, parameter: inspect.Parameter | None) -> Any:
    """``value`` converted to what ``annotation`` allows (int -> float, ``lin_X`` schedules) or UserError."""
    if (
        annotation is None
        and parameter is not None
        and parameter.default not in (inspect.Parameter.empty, None)
    ):
        annotation = type(parameter.default)
    if annotation is None:
        return value
    ok, converted = _matches(value, annotation)
    if not ok:
        raise UserError(
            f"-p {name}={value!r}: expected {_type_name(annotation)}, got {type(value).__name__}; "
            f"e.g. -p {name}={_example(annotation)}"
        )
    return converted


def _example(annotation: Any) -> str:
    """A value of the first simple type ``annotation`` allows, written as on the command line."""
    for kind, example in ((float, "0.001"), (int, "8"), (bool, "true"), (list, "[64,64]"), (dict, "{a: 1}")):
        if _accepts(annotation, kind):
            return example
    return "VALUE"


def _accepts(annotation: Any, kind: type) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, kind) for arg in typing.get_args(annotation))
    return (origin or annotation) is kind


def _matches(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``annotation`` (a resolved type hint) and the value to use."""
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            ok, converted = _matches(value, arg)
            if ok:
                return True, converted
        return False, value
    if annotation is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(annotation), value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or annotation in (list, tuple):
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, tuple) else value
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    if origin is type or annotation is type:
        return False, value  # classes cannot be written on the command line
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        # SB3 schedules: "lin_0.25" (linear decay to 0) is written as a string
        return isinstance(value, str) and _SCHEDULE.match(value) is not None, value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value


_ACTIVATIONS: dict[str, str] = {
    "tanh": "Tanh",
    "relu": "ReLU",
    "elu": "ELU",
    "leaky_relu": "LeakyReLU",
    "leakyrelu": "LeakyReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "selu": "SELU",
}


def check_policy_kwarg(key: str, value: Any, policy: Any, agent_class: Any) -> Any:
    """Type-check one ``policy_kwargs.<key>`` override against the policy class constructor."""
    if key == "activation_fn":
        if not isinstance(value, str) or value.lower() not in _ACTIVATIONS:
            raise UserError(
                f"-p policy_kwargs.activation_fn={value!r}: choose one of {', '.join(_ACTIVATIONS)}"
            )
        return value.lower()
    policy_class: Any = agent_class.policy_aliases.get(policy, policy) if isinstance(policy, str) else policy
    if not isinstance(policy_class, type):
        return value
    constructor: Any = getattr(policy_class, "__init__")  # noqa: B009 (typed as Any on purpose)
    parameters = {
        name: p for name, p in inspect.signature(constructor).parameters.items() if p.kind != p.VAR_KEYWORD
    }
    skip = ("self", "observation_space", "action_space", "lr_schedule")
    if key not in parameters or key in skip:
        allowed = [name for name in parameters if name not in skip]
        raise UserError(
            f"unknown policy_kwargs key {key!r} for {policy_class.__name__}{_closest(key, allowed)}; "
            f"valid keys: {', '.join(allowed)}"
        )
    return check_value(f"policy_kwargs.{key}", value, _type_hints(constructor).get(key), parameters[key])


# ------------------------------------------------------------------------------------- config -> kwargs


def build_schedule(value: Any) -> Any:
    """``"lin_0.25"`` -> SB3 ``LinearSchedule`` from 0.25 to 0; numbers pass through."""
    if isinstance(value, str):
        match = _SCHEDULE.match(value)
        if match is None:
            raise UserError(
                f"learning_rate {value!r} is not a number or lin_<start>; e.g. -p learning_rate=lin_0.25"
            )
        from stable_baselines3.common.utils import LinearSchedule

        return LinearSchedule(start=float(match["start"]), end=0.0, end_fraction=1.0)
    return value


def build_agent_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from a resolved (YAML-safe) hyperparameter dict: zoo keys out, objects built."""
    kwargs = {key: value for key, value in hyperparams.items() if key not in ZOO_KEYS or key == "policy"}
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        if key in kwargs:
            kwargs[key] = build_schedule(kwargs[key])
    policy_kwargs = kwargs.get("policy_kwargs")
    if isinstance(policy_kwargs, str):
        raise UserError("policy_kwargs must be a mapping in YAML (not a python string); rewrite it as a dict")
    if isinstance(policy_kwargs, dict):
        policy_kwargs = dict(policy_kwargs)
        activation = policy_kwargs.get("activation_fn")
        if isinstance(activation, str):
            from torch import nn

            policy_kwargs["activation_fn"] = getattr(nn, _ACTIVATIONS.get(activation.lower(), activation))
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def normalize_kwargs(value: Any, gamma: float) -> dict[str, Any] | None:
    """VecNormalize keywords from the zoo's ``normalize`` (true, false or a dict), or None when off."""
    if value in (None, False):
        return None
    if value is True:
        return {"gamma": gamma}
    if isinstance(value, dict):
        return {"gamma": gamma, **value}
    raise UserError(f"normalize={value!r}: write true, false or a mapping such as {{norm_reward: false}}")


__all__ = [
    "ALGORITHMS",
    "ZOO_KEYS",
    "UserError",
    "ZooEntry",
    "algorithm_class",
    "apply_overrides",
    "build_agent_kwargs",
    "check_device",
    "list_zoo",
    "normalize_kwargs",
    "parse_override",
    "zoo_entry",
]
