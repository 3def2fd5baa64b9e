"""Environment names: short names -> full gymnasium ids, Atari detection, backend availability.

``resolve_env_id("Breakout") == "ALE/Breakout-v5"``, ``resolve_env_id("HalfCheetah") == "HalfCheetah-v5"``
(the newest version gymnasium registers), ``resolve_env_id("CartPole") == "CartPole-v1"``,
``resolve_env_id("MinAtar/Breakout") == "MinAtar/Breakout-v1"`` (the ``minatar`` package's registration).
Full gymnasium ids pass through unchanged; envpool-style Atari ids (``"Breakout-v5"``) map to their ``ALE/``
gymnasium id.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import re
import sys
from types import ModuleType
from typing import Any

import gymnasium as gym

# Short names the project documents (issue 3); everything else registered in gymnasium resolves too.
CLASSIC_CONTROL_NAMES: tuple[str, ...] = (
    "CartPole",
    "Acrobot",
    "MountainCar",
    "MountainCarContinuous",
    "Pendulum",
    "LunarLander",
    "BipedalWalker",
)
MUJOCO_NAMES: tuple[str, ...] = (
    "HalfCheetah",
    "Hopper",
    "Walker2d",
    "Ant",
    "Humanoid",
    "Swimmer",
    "Reacher",
    "InvertedPendulum",
)

_VERSION_PATTERN = re.compile(r"^(?:(?P<namespace>[^/]+)/)?(?P<name>[^/]+?)-v(?P<version>\d+)$")


@functools.lru_cache(maxsize=1)
def _register_atari() -> bool:
    """Import ale_py once so that gymnasium's registry holds the ``ALE/*`` ids (False if not installed)."""
    if importlib.util.find_spec("ale_py") is None:
        return False
    import ale_py

    gym.register_envs(ale_py)
    return True


# the games and ids ``minatar.gym.register_envs()`` registers (minatar 1.0.x): -v0 with the full action set,
# -v1 with the game's minimal one
MINATAR_GAMES: tuple[str, ...] = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")


@functools.lru_cache(maxsize=1)
def _register_minatar() -> bool:
    """Register the ``MinAtar/*`` ids of the ``minatar`` package once (False if it is not installed).

    Registered as ``minatar.gym.register_envs()`` does, by entry-point string, without importing minatar:
    its import loads matplotlib (~100 MB of resident memory) even in processes that never make a MinAtar
    env. :func:`import_minatar` runs when one is made."""
    if importlib.util.find_spec("minatar") is None:
        return False
    if any(env_id.startswith("MinAtar/") for env_id in gym.registry):
        return True  # registered already, e.g. by the user's minatar.gym.register_envs()
    for game in MINATAR_GAMES:
        name = game.title().replace("_", "")
        for version, minimal in (("v0", False), ("v1", True)):
            gym.register(
                id=f"MinAtar/{name}-{version}",
                entry_point="minatar.gym:BaseEnv",
                kwargs={"game": game, "use_minimal_action_set": minimal},
            )
    return True


@functools.lru_cache(maxsize=1)
def import_minatar() -> None:
    """Import ``minatar.gym`` without its import-time warning that seaborn (only used to render) is absent."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import minatar.gym  # noqa: F401
    finally:
        root.setLevel(level)


@functools.lru_cache(maxsize=1)
def _short_name_table() -> dict[str, str]:
    """Lower-cased short name -> full gymnasium id (newest version; plain ids before namespaced ones).

    MinAtar games are known as ``minatar/<game>``."""
    _register_atari()
    _register_minatar()
    best: dict[str, tuple[int, int, str]] = {}  # key -> (namespace rank, version, id)
    for env_id in gym.registry:
        match = _VERSION_PATTERN.match(env_id)
        if match is None:
            continue
        namespace, name = match["namespace"], match["name"]
        if namespace == "MinAtar":
            name = f"MinAtar/{name}"
        elif namespace not in (None, "ALE"):
            continue  # phys2d/, tabular/ ... are alternative implementations, not the canonical env
        if namespace is None and env_id.split("-v")[0] in _atari_legacy_names():
            continue  # legacy Atari ids (Breakout-v4, ...) lose to ALE/Breakout-v5
        rank = (1 if namespace == "ALE" else 0, int(match["version"]), env_id)
        key = name.lower()
        if key not in best or rank[:2] > best[key][:2]:
            best[key] = rank
    return {key: value[2] for key, value in best.items()}


@functools.lru_cache(maxsize=1)
def _atari_legacy_names() -> frozenset[str]:
    """Base names of the ``ALE/<Game>-v5`` ids (the plain ``<Game>-v4`` ids are their legacy versions)."""
    names = set()
    for env_id in gym.registry:
        if env_id.startswith("ALE/"):
            match = _VERSION_PATTERN.match(env_id)
            if match is not None:
                names.add(match["name"])
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def atari_game_names() -> tuple[str, ...]:
    """Short names of the Atari games (``Breakout``, ``Pong``, ...), without ``-ram`` variants."""
    _register_atari()
    return tuple(sorted(name for name in _atari_legacy_names() if not name.endswith("-ram")))


def known_env_names() -> list[str]:
    """Short names accepted by :func:`make_env`: classic control, MuJoCo, every Atari and MinAtar game."""
    return [*CLASSIC_CONTROL_NAMES, *MUJOCO_NAMES, *atari_game_names(), *minatar_game_names()]


@functools.lru_cache(maxsize=1)
def minatar_game_names() -> tuple[str, ...]:
    """Short names of the MinAtar games (``MinAtar/Breakout``, ...); empty without the package."""
    if not _register_minatar():
        return ()
    names = {
        match["name"]
        for env_id in gym.registry
        if (match := _VERSION_PATTERN.match(env_id)) and match["namespace"] == "MinAtar"
    }
    return tuple(f"MinAtar/{name}" for name in sorted(names))


def is_minatar(env_id: str) -> bool:
    """True for the MinAtar games (10×10×C boolean observations)."""
    return env_id.startswith("MinAtar/")


def resolve_env_id(name: str) -> str:
    """Map a short name (``"Breakout"``) or full id to the full gymnasium id (``"ALE/Breakout-v5"``).

    Raises:
        ValueError: (one line) the name is unknown; the message lists the closest known names.
    """
    _register_atari()
    _register_minatar()
    if name in gym.registry:
        return name
    if _VERSION_PATTERN.match(name) and f"ALE/{name}" in gym.registry:
        return f"ALE/{name}"  # envpool spells Atari ids without the ALE/ namespace
    table = _short_name_table()
    resolved = table.get(name.lower())
    if resolved is not None:
        return resolved
    candidates = [*known_env_names(), *(env_id for env_id in gym.registry if "/" not in env_id)]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    if not close:
        lowered = name.lower()
        close = [candidate for candidate in known_env_names() if lowered[:4] in candidate.lower()][:5]
    hint = f"closest known names: {', '.join(close)}" if close else "see acktr.envs.known_env_names()"
    raise ValueError(f"unknown environment {name!r}; {hint}")


def is_atari(env_id: str) -> bool:
    """True for Atari games (any spelling that resolves to an ALE environment)."""
    try:
        full_id = resolve_env_id(env_id)
    except ValueError:
        return False
    entry_point = str(gym.spec(full_id).entry_point)
    return full_id.startswith("ALE/") or "ale_py" in entry_point


def atari_game(env_id: str) -> str:
    """CamelCase game of an Atari id, e.g. ``"BreakoutNoFrameskip-v4"`` -> ``"Breakout"``."""
    full_id = resolve_env_id(env_id)
    game = gym.spec(full_id).kwargs.get("game")
    if isinstance(game, str):
        # ale_py stores snake_case ROM names; match them against the registered CamelCase names
        compact = game.replace("_", "").lower()
        for name in atari_game_names():
            if name.lower() == compact:
                return name
    match = _VERSION_PATTERN.match(full_id)
    assert match is not None, full_id
    return match["name"].replace("NoFrameskip", "").replace("Deterministic", "")


def envpool_registration(family: str | None = None) -> ModuleType:
    """envpool's ``registration`` module (``make``, ``list_all_envs``) with ``family``'s tasks registered
    (e.g. ``"atari"``; None: every family, as ``import envpool`` does).

    ``import envpool`` loads every family's extension module and its dependencies (matplotlib among them):
    about 165 MB of resident memory, of which an Atari run needs ~10. So the first import here puts envpool's
    package in ``sys.modules`` with its ``__init__`` deferred and imports only the family asked for; the
    package runs its ``__init__`` (registering the rest) on the first access of one of its own names, e.g. a
    user's ``envpool.make(...)`` in the same process, so it still behaves as the package it is.
    """
    package = sys.modules.get("envpool")
    if package is None:
        package = _deferred_envpool_package()
    if family is None:
        getattr(package, "list_all_envs")  # noqa: B009 (an attribute access that completes the package)
    else:
        importlib.import_module(f"envpool.{family}.registration")
    return importlib.import_module("envpool.registration")


def _deferred_envpool_package() -> ModuleType:
    spec = importlib.util.find_spec("envpool")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("envpool is not installed: pip install envpool, or use backend='gymnasium'")
    package = importlib.util.module_from_spec(spec)  # __path__ and __spec__ set, __init__ not run
    loader = spec.loader
    running = False

    def complete(name: str) -> Any:
        nonlocal running
        if running:  # names looked up while __init__ runs are absent until it sets them
            raise AttributeError(f"module 'envpool' has no attribute {name!r}")
        running = True
        try:
            loader.exec_module(package)  # the real __init__: every family's registration, the public API
        finally:
            running = False
        package.__dict__.pop("__getattr__", None)
        return getattr(package, name)

    package.__getattr__ = complete  # type: ignore[method-assign]  # PEP 562 module __getattr__
    sys.modules["envpool"] = package
    return package


def envpool_installed() -> bool:
    """Whether envpool can be imported here (without importing it)."""
    return "envpool" in sys.modules or importlib.util.find_spec("envpool") is not None


@functools.cache
def envpool_env_ids(family: str | None = None) -> frozenset[str]:
    """Task ids envpool can build here once ``family`` is loaded (e.g. ``"atari"``: that family only, plus any
    loaded before) or every family (None); empty when envpool is not installed."""
    if not envpool_installed():
        return frozenset()
    return frozenset(envpool_registration(family).list_all_envs())


def envpool_task_id(env_id: str) -> str | None:
    """The envpool task id for a gymnasium id, or None when envpool does not provide that environment."""
    if is_atari(env_id):
        task, available = f"{atari_game(env_id)}-v5", envpool_env_ids("atari")
    else:
        task, available = resolve_env_id(env_id), envpool_env_ids()
    return task if task in available else None
