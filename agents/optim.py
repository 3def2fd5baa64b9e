"""``KFACOptimizer``: K-FAC preconditioning + KL trust region + SGD with momentum, as a torch Optimizer.

Being a ``torch.optim.Optimizer`` lets it sit in ``policy.optimizer``, where Stable-Baselines3 already
expects an optimizer: SB3 writes the scheduled learning rate into ``param_groups[i]["lr"]`` before each
update, saves ``policy.optimizer.state_dict()`` in the model zip and restores it on load. The state dict
therefore carries the K-FAC state (factors, decompositions, counters) next to the momentum buffers, which is
what makes a saved-and-reloaded run continue exactly like an uninterrupted one.

Update rule (OpenAI baselines' ACKTR), with η the group learning rate and m the momentum:

- cold start (the first ``cold_iter`` steps): ``buf ← m·buf + g``, ``θ ← θ − η_cold·buf`` on the plain
  gradient (baselines' cold SGD; the caller clips the gradient), while the statistics already accumulate;
- afterwards: ``u = ν·F̂⁻¹g`` from ``kfac.precondition(lr=η)`` (ν the trust-region scale), then
  ``buf ← m·buf + u``, ``θ ← θ − η(1−m)·buf``. The momentum buffer is reset when the K-FAC phase starts, as
  baselines used a separate optimizer for the cold phase. With lr η(1−m) the steady-state step of a
  constant direction is η·u, so η keeps the meaning it has in the trust region.

Non-finite updates: a step whose loss (when a closure gives one) or final update direction (the
preconditioned, trust-region-scaled gradient, or the plain gradient when cold) holds a NaN or inf is
skipped: no parameter, momentum buffer or step counter changes, and ``skipped_updates`` counts it. After
``max_consecutive_skips`` skips in a row (default :data:`DEFAULT_MAX_CONSECUTIVE_SKIPS`) ``step`` raises
:class:`NonFiniteUpdateError`: the parameters are still those of the last good update.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch as th
from torch import nn

# Consecutive non-finite updates tolerated before training stops: a transient fault (one NaN batch) is
# skipped, a persistent one (a diverged loss, broken rewards) stops the run within a few seconds of updates.
DEFAULT_MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteUpdateError(FloatingPointError):
    """``max_consecutive_skips`` updates in a row had a non-finite loss or update direction."""


def updates_are_finite(gradients: Sequence[th.Tensor], loss: float | None = None) -> bool:
    """Whether ``loss`` (if given) and every gradient tensor are free of NaN/inf (one host sync)."""
    if loss is not None and not math.isfinite(loss):
        return False
    if not gradients:
        return True
    # an L1 norm is non-finite iff an entry is (or it overflows float range, which no usable update does):
    # one multi-tensor reduction and one host sync, no boolean copies
    norms = list(th._foreach_norm(list(gradients), 1))
    if any(norm.dtype != th.float32 for norm in norms):
        norms = [norm.float() for norm in norms]
    return bool(th.isfinite(th.stack(norms).sum()))


class KFACOptimizer(th.optim.Optimizer):
    """Natural-gradient SGD-with-momentum over all trainable parameters of ``model``.

    The statistics come from outside: run the forward pass and a sampled-Fisher backward inside
    ``optimizer.kfac.collect_statistics()`` before ``loss.backward()`` and ``step()``.

    :param model: the module whose parameters are optimised and whose Linear/Conv2d layers get K-FAC blocks.
    :param lr: η, the initial learning rate (SB3 overwrites ``param_groups[i]["lr"]`` with its schedule).
        ``param_groups[0]`` holds the parameters outside the named trust-region groups and
        ``param_groups[1 + i]`` those of group i; each group steps with its own ``"lr"``.
    :param momentum: m.
    :param cold_iter: the cold start (baselines' ``cold_iter``): the first ``cold_iter`` steps are
        plain-gradient steps, and ``KFAC`` averages the statistics of its first ``cold_iter`` updates
        plainly (the same value is passed on as ``KFAC(cold_iter=...)``).
    :param cold_lr: step size of the cold steps; None uses the current η (baselines' default).
    :param named_trust_region_groups: ``[(parameter names, kl_clip), ...]``: separate trust regions, passed to
        ``KFAC(trust_region_groups=...)`` once the preconditioner is built (names, not tensors, so the
        optimizer survives ``.to(device)`` and holds nothing unpicklable); other parameters use ``kl_clip``.
    :param max_consecutive_skips: non-finite updates in a row after which ``step`` raises
        :class:`NonFiniteUpdateError` (each one is skipped and counted in ``skipped_updates``).
    :param kfac_kwargs: passed to ``acktr.curvature.KFAC`` (``kl_clip``, ``damping``, ``factor_decay``,
        ``update_inverses_every``, ``inverse_method``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.25,
        *,
        momentum: float = 0.9,
        cold_iter: int = 0,
        cold_lr: float | None = None,
        named_trust_region_groups: Sequence[tuple[Sequence[str], float | None]] = (),
        max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS,
        **kfac_kwargs: Any,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if (
            isinstance(max_consecutive_skips, bool)
            or not isinstance(max_consecutive_skips, int)
            or max_consecutive_skips < 1
        ):
            raise ValueError(f"max_consecutive_skips must be an int >= 1, got {max_consecutive_skips!r}")
        if isinstance(cold_iter, bool) or not isinstance(cold_iter, int) or cold_iter < 0:
            raise ValueError(f"cold_iter must be an int >= 0, got {cold_iter!r}")
        by_name = dict(model.named_parameters())
        for names, _ in named_trust_region_groups:
            unknown = sorted(set(names) - by_name.keys())
            if unknown:
                raise ValueError(
                    f"KFACOptimizer: trust-region group names {unknown} are not parameters of the model"
                )
        self.named_trust_region_groups = [(list(names), kl) for names, kl in named_trust_region_groups]
        # param_groups[0]: everything outside the named groups; param_groups[1 + i]: trust-region group i, so
        # each trust region can be stepped with its own learning rate (torch's per-group "lr").
        grouped = {name for names, _ in self.named_trust_region_groups for name in names}
        param_groups = [
            {"params": [p for name, p in by_name.items() if p.requires_grad and name not in grouped]}
        ] + [
            {"params": [by_name[name] for name in names if by_name[name].requires_grad]}
            for names, _ in self.named_trust_region_groups
        ]
        super().__init__(param_groups, dict(lr=lr, momentum=momentum))
        self.model = model
        self._cold_iter = cold_iter
        self.cold_lr = cold_lr
        self.kfac_kwargs = kfac_kwargs
        self.steps_taken = 0
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_updates = 0  # non-finite updates skipped over the whole run
        self.consecutive_skips = 0
        self.last_info: Any = None  # acktr.curvature.PreconditionInfo of the last K-FAC step, None when cold
        self._kfac: Any = None

    @property
    def kfac(self) -> Any:
        """The ``acktr.curvature.KFAC`` preconditioner, created on first use.

        Created lazily so that it sees the model on its final device (SB3 builds a policy, optimizer
        included, before moving it with ``.to(device)``).
        """
        if self._kfac is None:
            from acktr.curvature import KFAC

            kwargs = dict(self.kfac_kwargs)
            warn_unsupported = kwargs.pop("warn_unsupported", True)
            by_name = dict(self.model.named_parameters())
            if self.named_trust_region_groups:
                kwargs["trust_region_groups"] = [
                    ([by_name[name] for name in names], kl) for names, kl in self.named_trust_region_groups
                ]
            self._kfac = KFAC(
                self.model,
                lr=self.param_groups[0]["lr"],
                cold_iter=self._cold_iter,
                warn_unsupported=False,
                **kwargs,
            )
            # A policy's state-independent log_std is expected to be uncovered; warn about anything else.
            names = {id(p): name for name, p in by_name.items()}
            unexpected = [
                names[id(p)]
                for p in self._kfac.uncovered_parameters()
                if not names[id(p)].endswith("log_std")
            ]
            if unexpected and warn_unsupported:
                warnings.warn(
                    f"K-FAC has no block for parameters {unexpected}: they get the plain gradient scaled by "
                    "the trust region",
                    UserWarning,
                    stacklevel=2,
                )
        return self._kfac

    @property
    def cold_iter(self) -> int:
        """Length of the cold start (plain-gradient steps; plain factor averaging in ``kfac``)."""
        return self._cold_iter

    @cold_iter.setter
    def cold_iter(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"cold_iter must be an int >= 0, got {value!r}")
        self._cold_iter = value
        if self._kfac is not None:
            self._kfac.cold_iter = value

    @property
    def momentum(self) -> float:
        """m of every parameter group (assigning sets it for all groups, from the next step)."""
        return float(self.param_groups[0]["momentum"])

    @momentum.setter
    def momentum(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {value!r}")
        for group in self.param_groups:
            group["momentum"] = float(value)

    @property
    def in_cold_start(self) -> bool:
        """True while the next ``step()`` is a plain-gradient cold step."""
        return self.steps_taken < self._cold_iter

    def step(  # type: ignore[override]
        self, closure: Callable[[], float] | None = None, *, preconditioned: bool = False
    ) -> float | None:
        """Precondition ``p.grad`` in place (unless cold) and take one momentum step; skip it (and count it)
        if the loss or the update direction is not finite (see the module docstring). ``preconditioned``:
        ``p.grad`` already holds the step direction (the caller ran ``kfac.precondition`` and set
        ``last_info``); only the momentum step is taken."""
        loss = None
        if closure is not None:
            with th.enable_grad():
                loss = closure()
        cold = self.in_cold_start
        if cold:
            self.last_info = None
        else:
            if self.steps_taken == self._cold_iter and self._cold_iter > 0:
                self.state.clear()  # fresh momentum for the K-FAC phase
            if not preconditioned:
                self.last_info = self.kfac.precondition(
                    lr=self.param_groups[0]["lr"], group_lrs=self.group_lrs()
                )
        # the update direction as it will be applied (whatever produced it), not a proxy such as Σ⟨Δ, g⟩
        gradients = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not updates_are_finite(gradients, None if loss is None else float(loss)):
            self._skip_update()
            return loss
        self.consecutive_skips = 0
        with th.no_grad():
            for group in self.param_groups:
                momentum = group["momentum"]
                if cold:
                    group_step = group["lr"] if self.cold_lr is None else self.cold_lr
                else:
                    group_step = group["lr"] * (1.0 - momentum)
                params = [param for param in group["params"] if param.grad is not None]
                if not params:
                    continue
                # multi-tensor (foreach) ops: a few kernel launches per group instead of a few per parameter
                buffers, running, running_grads = [], [], []
                for param in params:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = param.grad.detach().clone()  # type: ignore[union-attr]
                    else:
                        running.append(state["momentum_buffer"])
                        running_grads.append(param.grad)
                    buffers.append(state["momentum_buffer"])
                if running:
                    th._foreach_mul_(running, momentum)
                    th._foreach_add_(running, running_grads)
                th._foreach_add_(params, buffers, alpha=-group_step)
        self.steps_taken += 1
        return loss

    def group_lrs(self) -> list[float] | None:
        """η of each trust-region group (``param_groups[1 + i]`` is group i, see ``__init__``), or None."""
        return [group["lr"] for group in self.param_groups[1:]] or None

    def _skip_update(self) -> None:
        self.skipped_updates += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteUpdateError(
                f"{self.consecutive_skips} consecutive updates had a non-finite (NaN/inf) loss or update "
                f"direction and were skipped ({self.skipped_updates} skipped in all); the parameters are "
                "those of the last good update: lower the learning rate or kl_clip, or check the scale of "
                "the rewards and observations (e.g. -p normalize=true)"
            )

    def step_snapshot(self, group: int = 0) -> list[th.Tensor]:
        """Copies of ``param_groups[group]``'s parameters, for :meth:`rescale_step` after the next step."""
        return [param.detach().clone() for param in self.param_groups[group]["params"]]

    @th.no_grad()
    def rescale_step(self, snapshot: list[th.Tensor], scale: float, group: int = 0) -> None:
        """Shrink the step just taken by ``param_groups[group]`` to ``scale`` times its size.

        ``θ ← θ₀ + scale·(θ − θ₀)`` with ``θ₀`` the :meth:`step_snapshot` taken before the step; the momentum
        buffers are scaled alike, so the shrunk part is not re-applied by the next steps.
        """
        for param, before in zip(self.param_groups[group]["params"], snapshot, strict=True):
            param.sub_(before).mul_(scale).add_(before)
            buffer = self.state[param].get("momentum_buffer") if param in self.state else None
            if buffer is not None:
                buffer.mul_(scale)

    def state_dict(self) -> dict[str, Any]:
        """Momentum buffers and param groups (torch format) plus ``"kfac"``, ``"steps_taken"`` and the
        skip counters."""
        state = super().state_dict()
        state["kfac"] = self.kfac.state_dict()
        state["steps_taken"] = self.steps_taken
        state["skipped_updates"] = self.skipped_updates
        state["consecutive_skips"] = self.consecutive_skips
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        kfac_state = state_dict.pop("kfac", None)
        steps_taken = state_dict.pop("steps_taken", None)
        self.skipped_updates = int(state_dict.pop("skipped_updates", 0))
        self.consecutive_skips = int(state_dict.pop("consecutive_skips", 0))
        super().load_state_dict(state_dict)
        if kfac_state is not None:
            self.kfac.load_state_dict(kfac_state)
        if steps_taken is not None:
            self.steps_taken = int(steps_taken)
