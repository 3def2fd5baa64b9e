"""Tuned hyperparameters ("the zoo"): one YAML file per algorithm in rl-baselines3-zoo's shape.

Each file maps a full environment id (``CartPole-v1``, ``ALE/Breakout-v5``) to a block of constructor
keywords plus the zoo keys ``n_timesteps``, ``n_envs``, ``policy``, ``normalize``, ``frame_stack`` and
``env_wrapper``; an ``atari`` (``minatar``) block covers every Atari (MinAtar) game without its own entry and
``default`` everything else. The comment line ``# source: ...`` right above an entry records where its values
came from and whether they were tuned here; :func:`entry_sources` reads those lines.

    from acktr.zoo import load_zoo, zoo_path
    load_zoo("acktr")["CartPole-v1"]["n_envs"]  # -> 8
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# Blocks that are not environment ids: a family block (every Atari / MinAtar game without its own entry), then
# the default for everything else.
SPECIAL_KEYS: tuple[str, ...] = ("default", "atari", "minatar")

_SOURCE_LINE = re.compile(r"^#\s*source:\s*(?P<text>.+?)\s*$")
_ENTRY_LINE = re.compile(r"^(?P<key>[A-Za-z0-9_./-]+):\s*(?:&\w+)?\s*$")


def zoo_path(algo: str) -> Path:
    """Path of the YAML file for ``algo`` (``acktr`` -> ``.../zoo/acktr.yml``; may not exist)."""
    return Path(str(resources.files("acktr.zoo").joinpath(f"{algo.replace('-', '_')}.yml")))


def available_zoos() -> list[str]:
    """Algorithms that have a zoo file (``["a2c", "acktr", "ppo"]``)."""
    return sorted(path.stem for path in zoo_path("acktr").parent.glob("*.yml"))


@functools.cache
def _load_cached(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict) or not all(isinstance(block, dict) for block in data.values()):
        raise ValueError(
            f"{path}: a zoo file maps environment ids to blocks of hyperparameters; fix its layout"
        )
    # YAML anchors are only for writing the file; hidden keys (leading dot) are templates, not entries.
    return {str(key): dict(block) for key, block in data.items() if not str(key).startswith(".")}


def load_zoo(algo: str) -> dict[str, dict[str, Any]]:
    """All entries of the zoo file of ``algo`` (an empty dict when the algorithm has no zoo file)."""
    path = zoo_path(algo)
    if not path.is_file():
        return {}
    return {key: dict(block) for key, block in _load_cached(str(path), path.stat().st_mtime_ns).items()}


def entry_sources(algo: str) -> dict[str, str]:
    """Entry key -> the text of the ``# source:`` comment directly above it in the zoo file."""
    path = zoo_path(algo)
    if not path.is_file():
        return {}
    sources: dict[str, str] = {}
    pending: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        source = _SOURCE_LINE.match(line)
        if source is not None:
            pending = source["text"] if pending is None else f"{pending} {source['text']}"
            continue
        entry = _ENTRY_LINE.match(line)
        if entry is not None and pending is not None:
            sources[entry["key"]] = pending
        if line.strip() and not line.startswith("#"):
            pending = None
    return sources


__all__ = ["SPECIAL_KEYS", "available_zoos", "entry_sources", "load_zoo", "zoo_path"]
