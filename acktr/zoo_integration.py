"""Use the acktr agents from rl-baselines3-zoo (``rl_zoo3``).

    import acktr
    acktr.register_with_rl_zoo()        # then rl_zoo3.train / enjoy accept --algo acktr

or, from a shell (the registration has to happen in the process that runs rl_zoo3)::

    python -m acktr.zoo_integration train --algo acktr --env CartPole-v1 -n 20000
    python -m acktr.zoo_integration enjoy --algo acktr --env CartPole-v1 -f logs/

Registration adds this package's agents (the ``ours`` entries of :mod:`acktr.algorithms`, under their rl-zoo3
names) to ``rl_zoo3.utils.ALGOS`` (the table train, enjoy and the hyperparameter search read) and makes
their acktr zoo file (``acktr/zoo/<zoo>.yml``) the default ``--conf-file``. Needs
``pip install 'acktr[zoo]'``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from typing import Any

from acktr.algorithms import our_algorithms
from acktr.zoo import zoo_path

INSTALL_HINT = "pip install 'acktr[zoo]' (rl-zoo3 and requests)"


def _zoo_files() -> dict[str, str]:
    """rl-zoo3 name -> zoo file of each of our agents."""
    return {spec.rl_zoo_name: str(zoo_path(spec.zoo)) for spec in our_algorithms()}


def register_with_rl_zoo() -> list[str]:
    """Register this package's agents with rl-zoo3; returns the registered ``--algo`` names.

    Idempotent. Raises ImportError with the install command when rl-zoo3 (or a module it needs) is missing.
    """
    try:
        import rl_zoo3.exp_manager as exp_manager
        import rl_zoo3.utils as zoo_utils
    except ImportError as error:
        raise ImportError(f"register_with_rl_zoo needs rl-zoo3 ({error}): {INSTALL_HINT}") from error
    registered = []
    for spec in our_algorithms():
        zoo_utils.ALGOS[spec.rl_zoo_name] = spec.load()
        registered.append(spec.rl_zoo_name)
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
        zoo_file = _zoo_files().get(bound.arguments.get("algo", ""))
        if zoo_file is not None and bound.arguments.get("config") is None:
            bound.arguments["config"] = zoo_file
        init(*bound.args, **bound.kwargs)

    wrapped._acktr_patched = True  # type: ignore[attr-defined]
    return wrapped


def main(argv: list[str] | None = None) -> int:
    """``python -m acktr.zoo_integration train|enjoy [rl_zoo3 arguments]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "enjoy"):
        print("usage: python -m acktr.zoo_integration train|enjoy [rl_zoo3 arguments]", file=sys.stderr)
        return 2
    try:
        register_with_rl_zoo()
        command = argv[0]
        module = importlib.import_module(f"rl_zoo3.{command}")
    except ImportError as error:
        print(f"acktr.zoo_integration: error: {error}", file=sys.stderr)
        return 2
    sys.argv = [f"rl_zoo3.{command}", *argv[1:]]
    getattr(module, command)()
    return 0


__all__ = ["main", "register_with_rl_zoo"]

if __name__ == "__main__":
    raise SystemExit(main())
