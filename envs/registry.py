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
import importlib.util
import re

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


@functools.lru_cache(maxsize=1)
def _register_minatar() -> bool:
    """Register the ``MinAtar/*`` ids of the ``minatar`` package once (False if it is not installed)."""
    if importlib.util.find_spec("minatar") is None:
        return False
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # minatar warns at import that seaborn (only used to render) is missing
    try:
        import minatar.gym
    finally:
        root.setLevel(level)
    if not any(env_id.startswith("MinAtar/") for env_id in gym.registry):
        minatar.gym.register_envs()
    return True


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


@functools.lru_cache(maxsize=1)
def envpool_env_ids() -> frozenset[str]:
    """Task ids envpool can build here (empty when envpool is not installed)."""
    if importlib.util.find_spec("envpool") is None:
        return frozenset()
    import envpool

    return frozenset(envpool.list_all_envs())


def envpool_task_id(env_id: str) -> str | None:
    """The envpool task id for a gymnasium id, or None when envpool does not provide that environment."""
    available = envpool_env_ids()
    if not available:
        return None
    task = f"{atari_game(env_id)}-v5" if is_atari(env_id) else resolve_env_id(env_id)
    return task if task in available else None
