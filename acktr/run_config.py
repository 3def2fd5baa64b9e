"""The typed configuration of a run: what ``acktr train`` resolves, ``config.yml`` stores, and resume, eval,
record and the benchmarks rebuild from.

    from acktr.run_config import TrainOptions, resolve_config
    config = resolve_config(TrainOptions(env="CartPole", seed=0))   # zoo + defaults + -p overrides
    config.n_envs, config.hyperparams["kl_clip"]
    RunConfig.from_dict(config.to_dict()) == config                 # the config.yml round trip

``RunConfig.hyperparams`` holds the agent's constructor keywords as YAML-safe data (schedules as
``"lin_<start>"``, classes as rl-zoo names); everything else is a typed field.
"""

from __future__ import annotations

import dataclasses
import random
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acktr import __version__
from acktr.algorithms import algorithm_class, get_algorithm
from acktr.errors import UserError
from acktr.hyperparams import (
    RENAMED,
    agent_parameters,
    apply_overrides,
    check_nested_keys,
    yaml_safe_default,
    zoo_entry,
)

CONFIG_VERSION = 2
BACKENDS = ("auto", "envpool", "gymnasium", "torch")


@dataclass
class TrainOptions:
    """What ``acktr train`` is asked for; None means "from the zoo / the default"."""

    env: str | None = None
    algo: str | None = None  # None: acktr for a new run, the run's own on resume
    timesteps: int | None = None
    n_envs: int | None = None
    seed: int | None = None
    backend: str = "auto"
    device: str = "auto"
    run_dir: str | None = None
    runs_root: str = "runs"
    resume: str | None = None
    eval_freq: int | None = None
    eval_episodes: int | None = None
    checkpoint_freq: int | None = None
    keep_checkpoints: int | None = None
    tensorboard: bool = True
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise
    overrides: list[str] = field(default_factory=list)
    threads: int | None = None
    interrupt_at: int | None = None  # testing aid: stop abruptly (no final save) after this many steps
    command: str = ""


@dataclass
class RunConfig:
    """A resolved run: ``config.yml`` is ``to_dict()`` of this, and ``from_dict`` reads it back."""

    algo: str
    env: str
    """The environment as the user wrote it (``Breakout``)."""
    env_id: str
    """Its full id (``ALE/Breakout-v5``)."""
    atari: bool
    n_timesteps: int
    n_envs: int
    seed: int
    backend: str
    """The backend asked for (``auto`` by default)."""
    backend_used: str
    """The backend training used: resume and eval rebuild the env with it (record renders with gymnasium)."""
    device: str
    policy: str | None
    """``MlpPolicy``/``CnnPolicy``/``MultiInputPolicy``/...; None until the observation space decides."""
    normalize: dict[str, Any] | None
    """VecNormalize keywords (``gamma`` comes from the hyperparameters); None: no normalisation."""
    frame_stack: int | None
    """Atari frames stacked per observation (None: the env's default, 4)."""
    hyperparams: dict[str, Any]
    """Constructor keywords of the agent (YAML-safe)."""
    eval_freq: int = 0
    eval_episodes: int = 10
    checkpoint_freq: int = 1
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk (0: all)."""
    tensorboard: bool = True
    zoo_entry: str = "(none)"
    zoo_source: str = ""
    overrides: list[str] = field(default_factory=list)
    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """YAML-safe mapping, ``config_version`` first."""
        return {"config_version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "config.yml") -> RunConfig:
        """Read a ``to_dict()`` mapping back (older config.yml layouts are migrated); UserError if invalid."""
        if not isinstance(data, dict):
            raise UserError(f"{source} is not a mapping; restore it or start a new run")
        data = _migrate(dict(data))
        version = data.pop("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise UserError(
                f"{source} has config_version {version}, this acktr reads {CONFIG_VERSION}; "
                f"use the acktr version that wrote it ({data.get('versions', {}).get('acktr', '?')})"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserError(
                f"{source}: unknown field(s) {', '.join(unknown)}; remove them or start a new run"
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, spec in fields.items():
            if name not in data:
                if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                    raise UserError(f"{source}: missing field {name!r}; restore the file or start a new run")
                continue
            value = data[name]
            if not _fits(value, hints[name]):
                raise UserError(
                    f"{source}: field {name!r} must be {_describe(hints[name])}, got {type(value).__name__} "
                    f"{value!r}; fix the file or start a new run"
                )
            values[name] = float(value) if hints[name] is float else value
        return cls(**values)


def _fits(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def _describe(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """config.yml written before the typed layout (no ``config_version``): zoo keys lived in hyperparams."""
    if "config_version" in data:
        return data
    hyperparams = dict(data.get("hyperparams") or {})
    data["policy"] = hyperparams.pop("policy", data.get("policy"))
    normalize = hyperparams.pop("normalize", None)
    data["normalize"] = {} if normalize is True else (normalize or None)
    data["frame_stack"] = hyperparams.pop("frame_stack", None)
    hyperparams.pop("env_wrapper", None)
    for old, new in RENAMED.items():
        if old in hyperparams:
            hyperparams[new] = hyperparams.pop(old)
    data["hyperparams"] = hyperparams
    data.setdefault("backend_used", data.get("backend", "auto"))
    data["config_version"] = CONFIG_VERSION
    return data


# ------------------------------------------------------------------------------------------- resolution


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


def normalize_keywords(value: Any) -> dict[str, Any] | None:
    """The zoo's ``normalize`` (true, false, None or a mapping) as VecNormalize keywords, None when off."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        import inspect

        from stable_baselines3.common.vec_env import VecNormalize

        allowed = [
            name
            for name in inspect.signature(VecNormalize.__init__).parameters
            if name not in ("self", "venv")
        ]
        check_nested_keys("normalize", value, allowed)
        return dict(value)
    raise UserError(f"normalize={value!r}: write true, false or a mapping such as {{norm_reward: false}}")


def _check_kfac_kwargs(hyperparams: dict[str, Any], agent_keywords: list[str]) -> None:
    """Unknown ``kfac_kwargs`` keys are named at resolution time, not deep inside the agent."""
    kfac_kwargs = hyperparams.get("kfac_kwargs")
    if kfac_kwargs is None:
        return
    import inspect

    from acktr.curvature import KFAC

    owned = ("self", "model", "lr", "trust_region_groups", "modules", "warn_unsupported", *agent_keywords)
    allowed = [name for name in inspect.signature(KFAC.__init__).parameters if name not in owned]
    allowed.append("max_consecutive_skips")  # read by the KFACOptimizer that holds the KFAC
    check_nested_keys("kfac_kwargs", kfac_kwargs, allowed)


# Seeds above the run's own: evaluation envs (seed + 10,000 + i) and resumed runs' envs (seed + step).
EVAL_SEED_SPAN = 2**28

# More copies than any backend here vectorises usefully (torch CartPole peaks near 4,096); a typo such as
# --n-envs 1e9 would otherwise exhaust memory before any check sees the observation size.
MAX_N_ENVS = 1 << 20


def _positive_int(name: str, value: Any, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise UserError(f"{flag} must be a positive whole number, got {value!r}")
    return int(value)


def resolve_config(options: TrainOptions) -> RunConfig:
    """The configuration of a new run, from the zoo, the agent's defaults and the overrides."""
    from acktr.envs import choose_backend, is_atari, resolve_env_id

    if options.env is None:
        raise UserError("--env is required (e.g. --env CartPole), or pass --resume RUN_DIR")
    spec = get_algorithm(options.algo or "acktr")
    cls = algorithm_class(spec.name)
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
    entry = zoo_entry(spec.name, env_id, atari)
    hyperparams = apply_overrides(spec.name, entry.values, options.overrides)

    zoo_timesteps = hyperparams.pop("n_timesteps", 1_000_000)
    zoo_n_envs = hyperparams.pop("n_envs", 8)
    timesteps = _positive_int(
        "n_timesteps",
        options.timesteps if options.timesteps is not None else float(zoo_timesteps),
        "--timesteps",
    )
    n_envs = _positive_int("n_envs", options.n_envs if options.n_envs is not None else zoo_n_envs, "--n-envs")
    if n_envs > MAX_N_ENVS:
        raise UserError(
            f"--n-envs {n_envs:,} is more than {MAX_N_ENVS:,} env copies; pass a smaller --n-envs"
        )
    policy = hyperparams.pop("policy", "CnnPolicy" if atari else None)
    normalize = normalize_keywords(hyperparams.pop("normalize", None))
    frame_stack = hyperparams.pop("frame_stack", None)
    hyperparams.pop("env_wrapper", None)  # rl-zoo3's Atari wrapper: make_env preprocesses Atari itself
    if frame_stack is not None:
        frame_stack = _positive_int("frame_stack", frame_stack, "frame_stack")
    _check_kfac_kwargs(hyperparams, list(agent_parameters(cls)))
    for name, parameter in agent_parameters(cls).items():
        if name != "policy" and name not in hyperparams and parameter.default is not parameter.empty:
            ok, value = yaml_safe_default(parameter.default)
            if ok:
                hyperparams[name] = value
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    if not 0 <= seed < 2**32 - EVAL_SEED_SPAN:  # numpy seeds are 32-bit; eval envs use seed + 10,000 + i
        raise UserError(f"--seed must be a whole number in [0, {2**32 - EVAL_SEED_SPAN:,}), got {seed}")
    eval_freq = 0 if options.eval_freq is None else options.eval_freq
    eval_episodes = 10 if options.eval_episodes is None else options.eval_episodes
    if eval_freq < 0 or eval_episodes < 0:
        raise UserError("--eval-freq and --eval-episodes must be >= 0 (0 turns evaluation off)")
    checkpoint_freq = options.checkpoint_freq
    if checkpoint_freq is not None and checkpoint_freq <= 0:
        raise UserError(f"--checkpoint-freq must be a positive number of env steps, got {checkpoint_freq}")
    keep = 2 if options.keep_checkpoints is None else options.keep_checkpoints
    if keep < 0:
        raise UserError(f"--keep-checkpoints must be >= 0 (0 keeps all), got {keep}")
    return RunConfig(
        algo=spec.name,
        env=options.env,
        env_id=env_id,
        atari=atari,
        n_timesteps=timesteps,
        n_envs=n_envs,
        seed=int(seed),
        backend=options.backend,
        backend_used=backend_used,
        device=options.device,
        policy=policy,
        normalize=normalize,
        frame_stack=frame_stack,
        hyperparams=hyperparams,
        eval_freq=int(eval_freq),
        eval_episodes=int(eval_episodes),
        checkpoint_freq=int(checkpoint_freq or max(1, timesteps // 10)),
        keep_checkpoints=int(keep),
        tensorboard=bool(options.tensorboard),
        zoo_entry=entry.key,
        zoo_source=entry.source,
        overrides=list(options.overrides),
        command=options.command,
        versions=versions(),
    )


def with_env(config: RunConfig, env: str) -> RunConfig:
    """``config`` for another environment (``acktr eval RUN --env ENV``): its id, kind and backend."""
    from acktr.envs import choose_backend, is_atari, resolve_env_id

    try:
        env_id = resolve_env_id(env)
    except ValueError as error:
        raise UserError(str(error)) from None
    if env_id == config.env_id:
        return config
    return dataclasses.replace(
        config, env=env, env_id=env_id, atari=is_atari(env_id), backend_used=choose_backend(env_id, "auto")
    )


def bare_config(algo: str | None, env: str | None, device: str) -> RunConfig:
    """A minimal configuration for a model zip that has no run folder (needs ``--env``)."""
    from acktr.envs import choose_backend, is_atari, resolve_env_id

    if env is None:
        raise UserError("this model has no config.yml next to it; pass --env ENV (and --algo if not acktr)")
    try:
        env_id = resolve_env_id(env)
    except ValueError as error:
        raise UserError(str(error)) from None
    return RunConfig(
        algo=get_algorithm(algo or "acktr").name,
        env=env,
        env_id=env_id,
        atari=is_atari(env_id),
        n_timesteps=1,
        n_envs=1,
        seed=0,
        backend="auto",
        backend_used=choose_backend(env_id, "auto"),
        device=device,
        policy=None,
        normalize=None,
        frame_stack=None,
        hyperparams={},
    )


def versions() -> dict[str, str]:
    import stable_baselines3
    import torch

    return {
        "acktr": __version__,
        "torch": str(torch.__version__),
        "stable_baselines3": str(stable_baselines3.__version__),
    }


__all__ = [
    "BACKENDS",
    "CONFIG_VERSION",
    "RunConfig",
    "TrainOptions",
    "bare_config",
    "check_device",
    "normalize_keywords",
    "resolve_config",
    "versions",
    "with_env",
]
