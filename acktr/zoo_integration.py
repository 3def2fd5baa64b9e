"""Use the acktr agents from rl-baselines3-zoo (``rl_zoo3``).

    import acktr
    acktr.register_with_rl_zoo()        # then rl_zoo3.train / enjoy accept --algo acktr

or, from a shell (the registration has to happen in the process that runs rl_zoo3)::

    python -m acktr.zoo_integration train --algo acktr --env CartPole-v1 -n 20000
    python -m acktr.zoo_integration enjoy --algo acktr --env CartPole-v1 -f logs/

Registration adds the agents to ``rl_zoo3.utils.ALGOS`` (the table train, enjoy and the hyperparameter search
read) and makes the acktr zoo file (``acktr/zoo/acktr.yml``) the default ``--conf-file`` for them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from typing import Any

from acktr.zoo import zoo_path

# rl-zoo3 --algo name -> (module, class) of the agents this package provides
RL_ZOO_ALGOS: dict[str, tuple[str, str]] = {
    "acktr": ("acktr.agents", "ACKTR"),
    "npg": ("acktr.agents", "NPG"),
    "noisy_acktr": ("acktr.agents", "NoisyACKTR"),
}


def register_with_rl_zoo() -> list[str]:
    """Register the available acktr agents with rl-zoo3; returns the registered ``--algo`` names.

    Idempotent. Raises ImportError with the install command when rl-zoo3 is missing.
    """
    try:
        import rl_zoo3.exp_manager as exp_manager
        import rl_zoo3.utils as zoo_utils
    except ImportError as error:
        raise ImportError(
            "register_with_rl_zoo needs rl-zoo3: pip install 'acktr[dev]' (or rl-zoo3)"
        ) from error
    registered = []
    for name, (module_name, class_name) in RL_ZOO_ALGOS.items():
        cls = getattr(importlib.import_module(module_name), class_name, None)
        if cls is None:
            continue  # that agent is not in this version yet
        zoo_utils.ALGOS[name] = cls
        registered.append(name)
    manager = exp_manager.ExperimentManager
    if not getattr(manager.__init__, "_acktr_patched", False):
        manager.__init__ = _default_config_for_our_algos(manager.__init__)  # type: ignore[method-assign]
    return registered


def _default_config_for_our_algos(init: Any) -> Any:
    """Wrap ``ExperimentManager.__init__``: our algorithms read our zoo file unless --conf-file is given."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        algo = bound.arguments.get("algo")
        if algo in RL_ZOO_ALGOS and bound.arguments.get("config") is None and zoo_path(algo).is_file():
            bound.arguments["config"] = str(zoo_path(algo))
        init(*bound.args, **bound.kwargs)

    wrapped._acktr_patched = True  # type: ignore[attr-defined]
    return wrapped


def main(argv: list[str] | None = None) -> int:
    """``python -m acktr.zoo_integration train|enjoy [rl_zoo3 arguments]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "enjoy"):
        print("usage: python -m acktr.zoo_integration train|enjoy [rl_zoo3 arguments]", file=sys.stderr)
        return 2
    register_with_rl_zoo()
    command = argv[0]
    module = importlib.import_module(f"rl_zoo3.{command}")
    sys.argv = [f"rl_zoo3.{command}", *argv[1:]]
    getattr(module, command)()
    return 0


__all__ = ["RL_ZOO_ALGOS", "main", "register_with_rl_zoo"]

if __name__ == "__main__":
    raise SystemExit(main())
