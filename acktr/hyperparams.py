"""Hyperparameters: zoo look-up, rl-zoo notation, ``-p key=value`` overrides and constructor keywords.

Everything a run's ``config.yml`` stores is YAML-safe data; classes (activations, optimizers) are kept as
their rl-zoo names (``"nn.ReLU"``) and schedules as ``"lin_<start>"``, and :func:`build_agent_kwargs` turns
them into objects only when the agent is built, so a saved configuration rebuilds exactly the same agent.

rl-zoo3's YAML writes some values as Python expressions (``policy_kwargs: "dict(net_arch=[64, 64],
activation_fn=nn.ReLU)"``). :func:`parse_notation` reads that notation without evaluating code: it accepts
``dict(...)`` calls, ``{...}``, lists, tuples, numbers, strings, ``True``/``False``/``None`` and the names in
:data:`NAMED_OBJECTS`; anything else is a one-line :class:`~acktr.errors.UserError`.
"""

from __future__ import annotations

import ast
import collections.abc
import difflib
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from acktr.algorithms import algorithm_class, get_algorithm
from acktr.errors import UserError
from acktr.zoo import SPECIAL_KEYS, entry_sources, load_zoo

# Zoo keys that are not constructor keywords of the agent (rl-zoo3's layout).
ZOO_KEYS: tuple[str, ...] = ("n_timesteps", "n_envs", "policy", "normalize", "frame_stack", "env_wrapper")
ZOO_KEY_TYPES: dict[str, Any] = {
    "n_timesteps": int,
    "n_envs": int,
    "policy": str,
    "normalize": bool | dict,
    "frame_stack": int,
    "env_wrapper": list | str | None,
}
# Keys whose value may be written in rl-zoo's Python notation, and that take nested ``-p a.b=...`` keys.
NESTED_KEYS: tuple[str, ...] = ("policy_kwargs", "normalize", "kfac_kwargs", "rollout_buffer_kwargs")
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
# Hyperparameters that were renamed: old name -> new name (for a helpful error and old config.yml files).
RENAMED: dict[str, str] = {"stats_decay": "factor_decay"}

# Names rl-zoo notation may use -> the object they stand for ("module:attribute"), imported at build time.
NAMED_OBJECTS: dict[str, str] = {
    **{
        f"nn.{name}": f"torch.nn:{name}"
        for name in ("ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "SELU")
    },
    "th.optim.Adam": "torch.optim:Adam",
    "th.optim.RMSprop": "torch.optim:RMSprop",
    "th.optim.SGD": "torch.optim:SGD",
    "RMSpropTFLike": "stable_baselines3.common.sb2_compat.rmsprop_tf_like:RMSpropTFLike",
    "MinAtarCNN": "acktr.agents.extractors:MinAtarCNN",
}
# ``-p policy_kwargs.activation_fn=relu`` spellings -> canonical names
_ACTIVATIONS: dict[str, str] = {
    "tanh": "nn.Tanh",
    "relu": "nn.ReLU",
    "elu": "nn.ELU",
    "leaky_relu": "nn.LeakyReLU",
    "leakyrelu": "nn.LeakyReLU",
    "gelu": "nn.GELU",
    "silu": "nn.SiLU",
    "selu": "nn.SELU",
}
_SCHEDULE = re.compile(r"^lin_(?P<start>[-+0-9.eE]+)$")


# ------------------------------------------------------------------------------------- rl-zoo notation


def canonical_name(text: str) -> str | None:
    """``"th.nn.ReLU"``, ``"torch.nn.ReLU"``, ``"nn.ReLU"``, ``"relu"`` -> ``"nn.ReLU"``; None if unknown."""
    name = re.sub(r"^(th|torch)\.nn\.", "nn.", text.strip())
    name = re.sub(r"^torch\.optim\.", "th.optim.", name)
    if name in NAMED_OBJECTS:
        return name
    return _ACTIVATIONS.get(name.lower())


def parse_notation(text: str, key: str) -> Any:
    """rl-zoo's Python notation -> YAML-safe data, without evaluating code.

    ``"dict(net_arch=[64, 64], activation_fn=nn.ReLU, ortho_init=False)"`` ->
    ``{"net_arch": [64, 64], "activation_fn": "nn.ReLU", "ortho_init": False}``.

    :raises UserError: for anything that is not a literal, a ``dict(...)`` call or a known name.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return _literal(tree.body)
    except (SyntaxError, ValueError) as error:
        names = ", ".join(sorted(NAMED_OBJECTS))
        raise UserError(
            f"{key}: {text!r} is not notation acktr can read ({error}); write a YAML mapping, or use only "
            f"dict(...), lists, numbers, strings, True/False/None and the names {names}"
        ) from None


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("a sign applies to numbers only")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(element) for element in node.elts]
    if isinstance(node, ast.Dict):
        result = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                raise ValueError("** unpacking is not allowed")
            name = _literal(key)
            if not isinstance(name, (str, int)):
                raise ValueError("mapping keys must be strings or integers")
            result[name] = _literal(value)
        return result
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(keyword.arg is None for keyword in node.keywords):
            raise ValueError("dict(...) takes keyword arguments only")
        return {str(keyword.arg): _literal(keyword.value) for keyword in node.keywords}
    if isinstance(node, (ast.Name, ast.Attribute)):
        dotted = ast.unparse(node)
        name = canonical_name(dotted)
        if name is None:
            raise ValueError(f"unknown name {dotted!r}")
        return name
    raise ValueError(f"{ast.unparse(node)!r} is not a literal")


def resolve_named(value: Any) -> Any:
    """A known name (``"nn.ReLU"``, ``"relu"``) -> the object; anything else unchanged."""
    if not isinstance(value, str):
        return value
    name = canonical_name(value)
    if name is None:
        return value
    module_name, _, attribute = NAMED_OBJECTS[name].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def read_zoo_values(values: dict[str, Any]) -> dict[str, Any]:
    """A zoo block with notation strings parsed and renamed keys rejected (one-line UserErrors)."""
    result = {}
    for key, value in values.items():
        if key in RENAMED:
            raise UserError(f"zoo key {key!r} is now called {RENAMED[key]!r}; rename it in the zoo file")
        if key in NESTED_KEYS and isinstance(value, str):
            value = parse_notation(value, key)
        result[key] = value
    return result


# ----------------------------------------------------------------------------------------------- zoo


@dataclass
class ZooEntry:
    """The zoo block chosen for an environment: its key in the YAML file, its values and their source."""

    key: str
    values: dict[str, Any]
    source: str


def zoo_entry(algo: str, env_id: str, atari: bool) -> ZooEntry:
    """The block for ``env_id`` (full id): its own entry, else its family's (``atari`` for Atari games,
    ``minatar`` for MinAtar games), else ``default``."""
    zoo_name = get_algorithm(algo).zoo
    try:
        zoo = load_zoo(zoo_name)
    except ValueError as error:
        raise UserError(str(error)) from None
    sources = entry_sources(zoo_name)
    family = "atari" if atari else "minatar" if env_id.startswith("MinAtar/") else None
    for key in (env_id, family, "default"):
        if key is not None and key in zoo:
            return ZooEntry(key, read_zoo_values(zoo[key]), sources.get(key, ""))
    return ZooEntry("(none)", {}, "no zoo file for this algorithm: agent defaults")


def list_zoo(algo: str) -> list[tuple[str, dict[str, Any], str]]:
    """(key, values, source) of every entry of ``algo``'s zoo, environment ids first, special blocks last."""
    zoo_name = get_algorithm(algo).zoo
    zoo = load_zoo(zoo_name)
    sources = entry_sources(zoo_name)
    keys = [key for key in zoo if key not in SPECIAL_KEYS] + [key for key in SPECIAL_KEYS if key in zoo]
    return [(key, zoo[key], sources.get(key, "")) for key in keys]


# ----------------------------------------------------------------------------------------- -p key=value


def _constructors(cls: Any) -> list[Callable[..., Any]]:
    """``cls.__init__``, then its bases' for as long as a constructor forwards ``**kwargs`` to its base (an
    agent subclass such as NoisyACKTR takes every keyword of ACKTR)."""
    constructors: list[Callable[..., Any]] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        constructors.append(init)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return constructors


def agent_parameters(cls: Any) -> dict[str, inspect.Parameter]:
    """Constructor parameters of an agent class that ``-p`` may set (``policy`` included)."""
    merged: dict[str, inspect.Parameter] = {}
    for init in _constructors(cls):
        for name, p in inspect.signature(init).parameters.items():
            if name in RESERVED_PARAMS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in merged:
                continue
            merged[name] = p
    return merged


def agent_type_hints(cls: Any) -> dict[str, Any]:
    """Resolved annotations of the constructor parameters :func:`agent_parameters` lists."""
    hints: dict[str, Any] = {}
    for init in reversed(_constructors(cls)):  # a subclass's annotation wins
        hints.update(_type_hints(init))
    return hints


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations of ``function``, one by one (a name that does not resolve is left out)."""
    globalns = getattr(function, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        if isinstance(annotation, str):
            try:  # an annotation is code of the agent's own module (never configuration text)
                annotation = eval(annotation, dict(globalns))
            except Exception:
                continue  # e.g. a forward reference to a name only imported under TYPE_CHECKING
        hints[name] = annotation
    return hints


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
    hints = agent_type_hints(cls)
    result = dict(hyperparams)
    for text in overrides:
        path, value = parse_override(text)
        name = path[0]
        if name in RENAMED:
            raise UserError(f"-p {name} is now called {RENAMED[name]}; write -p {RENAMED[name]}=...")
        if name not in parameters and name not in ZOO_KEYS:
            close = _closest(name, [*parameters, *ZOO_KEYS])
            raise UserError(
                f"unknown hyperparameter {name!r} for {algo}{close}; see `acktr zoo --algo {algo} ENV`"
            )
        if len(path) == 1:
            if name in NESTED_KEYS and isinstance(value, str):
                value = parse_notation(value, f"-p {name}")
            annotation = ZOO_KEY_TYPES.get(name, hints.get(name))
            result[name] = check_value(name, value, annotation, parameters.get(name))
            continue
        if name not in NESTED_KEYS:
            raise UserError(f"-p {text!r}: {name} has no sub-keys; write -p {name}={path[-1]}")
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


def check_policy_kwarg(key: str, value: Any, policy: Any, agent_class: Any) -> Any:
    """Type-check one ``policy_kwargs.<key>`` override against the policy class constructor."""
    if key == "activation_fn":
        name = canonical_name(value) if isinstance(value, str) else None
        if name is None or not name.startswith("nn."):
            raise UserError(
                f"-p policy_kwargs.activation_fn={value!r}: choose one of {', '.join(_ACTIVATIONS)}"
            )
        return name
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


def check_nested_keys(name: str, value: Any, allowed: list[str]) -> None:
    """UserError naming the first key of the mapping ``value`` that is not in ``allowed``."""
    if not isinstance(value, dict):
        raise UserError(f"{name} must be a mapping, got {type(value).__name__} {value!r}")
    for key in value:
        if key not in allowed:
            raise UserError(
                f"unknown {name} key {key!r}{_closest(str(key), allowed)}; valid keys: {', '.join(allowed)}"
            )


# ------------------------------------------------------------------------------------- config -> kwargs


def build_schedule(value: Any, name: str = "learning_rate") -> Any:
    """``"lin_0.25"`` -> SB3 ``LinearSchedule`` from 0.25 to 0; numbers pass through."""
    if isinstance(value, str):
        match = _SCHEDULE.match(value)
        if match is None:
            raise UserError(f"{name} {value!r} is not a number or lin_<start>; e.g. -p {name}=lin_0.25")
        from stable_baselines3.common.utils import LinearSchedule

        return LinearSchedule(start=float(match["start"]), end=0.0, end_fraction=1.0)
    return value


def build_agent_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from YAML-safe hyperparameters: schedules and named classes built."""
    kwargs = dict(hyperparams)
    for key in ("learning_rate", "clip_range", "clip_range_vf", "noise_target_kl"):
        if key in kwargs:
            kwargs[key] = build_schedule(kwargs[key], key)
    policy_kwargs = kwargs.get("policy_kwargs")
    if isinstance(policy_kwargs, str):
        policy_kwargs = parse_notation(policy_kwargs, "policy_kwargs")
    if isinstance(policy_kwargs, dict):
        policy_kwargs = {key: resolve_named(value) for key, value in policy_kwargs.items()}
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def yaml_safe_default(value: Any) -> tuple[bool, Any]:
    """Whether a constructor default can be written into config.yml, and how."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True, value
    start, end, fraction = (getattr(value, name, None) for name in ("start", "end", "end_fraction"))
    if type(value).__name__ == "LinearSchedule" and end == 0.0 and fraction == 1.0:
        return True, f"lin_{start}"
    return False, None


__all__ = [
    "NAMED_OBJECTS",
    "ZOO_KEYS",
    "ZooEntry",
    "agent_parameters",
    "apply_overrides",
    "build_agent_kwargs",
    "check_nested_keys",
    "check_value",
    "list_zoo",
    "parse_notation",
    "parse_override",
    "read_zoo_values",
    "resolve_named",
    "zoo_entry",
]
