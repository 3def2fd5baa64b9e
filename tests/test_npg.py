"""NPG: step-size and line-search rules, the update's guarantees, TRPO keywords, save/load, CLI, learning."""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from sb3_contrib import TRPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from acktr.agents import npg as npg_module
from acktr.agents.fisher import exact_log_std_fisher, mean_kl, snapshot
from acktr.agents.npg import (
    CALIBRATION_RANGE,
    NPG,
    backtracking_coefficients,
    calibrated_step_scale,
    line_search_accepts,
    natural_step_size,
)

# ------------------------------------------------------------------------------------------ the maths


def test_natural_step_size_puts_the_quadratic_kl_at_target() -> None:
    """``α = sqrt(2δ / gᵀF⁻¹g)``: ½ (αΔ)ᵀF(αΔ) = δ with Δ = F⁻¹g, for random F ≻ 0 and g."""
    generator = th.Generator().manual_seed(0)
    for dim, target_kl in ((3, 0.01), (10, 0.05), (50, 1e-4)):
        root = th.randn(dim, dim, generator=generator, dtype=th.float64)
        fisher = root @ root.T + 0.1 * th.eye(dim, dtype=th.float64)
        gradient = th.randn(dim, generator=generator, dtype=th.float64)
        direction = th.linalg.solve(fisher, gradient)
        alpha = natural_step_size(float(gradient @ direction), target_kl)
        step = alpha * direction
        assert 0.5 * float(step @ fisher @ step) == pytest.approx(target_kl, rel=1e-10)
    assert natural_step_size(0.0, 0.01) == 0.0
    assert natural_step_size(float("nan"), 0.01) == 0.0
    assert natural_step_size(float("inf"), 0.01) == 0.0
    with pytest.raises(ValueError, match="target_kl"):
        natural_step_size(1.0, 0.0)


def test_backtracking_coefficients_are_powers_of_the_shrinking_factor() -> None:
    assert backtracking_coefficients(0.5, 4) == [1.0, 0.5, 0.25, 0.125]
    coefficients = backtracking_coefficients(0.8, 10)
    assert len(coefficients) == 10 and coefficients[0] == 1.0
    assert all(b / a == pytest.approx(0.8) for a, b in itertools.pairwise(coefficients))


@pytest.mark.parametrize(
    ("kl", "new", "old", "accepted"),
    [
        (0.005, 0.1, 0.0, True),
        (0.01, 0.1, 0.0, True),  # KL exactly δ is inside the trust region
        (0.0100001, 0.1, 0.0, False),  # KL above δ
        (0.005, 0.0, 0.0, False),  # the surrogate must improve strictly
        (0.005, -0.1, 0.0, False),
        (float("nan"), 0.1, 0.0, False),
        (0.005, float("nan"), 0.0, False),
    ],
)
def test_line_search_acceptance_rule(kl: float, new: float, old: float, accepted: bool) -> None:
    assert line_search_accepts(kl, 0.01, new, old) is accepted


# ---------------------------------------------------------------------------------------- the update


def _collect(model: NPG) -> None:
    """Fill the rollout buffer the way ``learn`` does (no update)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Nothing(BaseCallback):
        def _on_step(self) -> bool:
            return True

    model._setup_learn(total_timesteps=10**6, callback=None)
    callback = Nothing()
    callback.init_callback(model)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)  # type: ignore[arg-type]


def _surrogate_and_kl(model: NPG, data: Any, old: Any) -> tuple[float, float]:
    """Independent evaluation of the surrogate ``mean(Â π/π_old)`` (normalised Â) and the KL on the rollout
    ``data`` (one ``rollout_buffer.get()``: every call draws another row order)."""
    actions = (
        data.actions.long().flatten() if model.action_space.__class__.__name__ == "Discrete" else data.actions
    )
    advantages = (data.advantages - data.advantages.mean()) / (data.advantages.std() + 1e-8)
    with th.no_grad():
        distribution = model.policy.get_distribution(data.observations)
        ratio = th.exp(distribution.log_prob(actions) - data.old_log_prob)
        return float((advantages * ratio).mean()), float(mean_kl(old, distribution))


def _actor_and_critic(model: NPG) -> tuple[dict[str, th.Tensor], dict[str, th.Tensor]]:
    actor = set(model._actor_parameter_names)
    params = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    return (
        {name: p for name, p in params.items() if name in actor},
        {name: p for name, p in params.items() if name not in actor},
    )


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("CartPole-v1", {}),
        ("Pendulum-v1", {}),
        ("Pendulum-v1", {"use_sde": True, "sde_sample_freq": 4}),
        ("CartPole-v1", {"sub_sampling_factor": 4}),
    ],
    ids=["categorical", "gaussian", "gsde", "subsampled"],
)
def test_policy_step_stays_in_the_trust_region_and_improves_the_surrogate(
    env_id: str, kwargs: dict[str, Any]
) -> None:
    """Measured independently on the whole rollout: KL(π_old ‖ π_new) ≤ δ (a small multiple with
    sub-sampling, which checks the KL on every 4th row only) and the surrogate improved, or nothing moved."""
    target_kl = 0.01
    model = NPG(
        "MlpPolicy", env_id, n_steps=256, n_critic_updates=1, batch_size=128, seed=0, device="cpu", **kwargs
    )
    model.set_logger(configure(None, []))
    for _ in range(3):
        _collect(model)
        data = next(model.rollout_buffer.get(batch_size=None))
        with th.no_grad():
            old = snapshot(model.policy.get_distribution(data.observations))
        before, _ = _surrogate_and_kl(model, data, old)
        model.train()
        after, kl = _surrogate_and_kl(model, data, old)
        logged = model.logger.name_to_value
        subsampled = "sub_sampling_factor" in kwargs
        limit = 3.0 * target_kl if subsampled else target_kl
        assert kl <= limit * (1 + 1e-4), f"KL {kl} above {limit}"
        if logged["train/is_line_search_success"] == 1.0:
            assert kl > 0.0 and 0 <= logged["train/line_search_steps"] < model.line_search_max_iter
            if not subsampled:  # the surrogate and KL the line search saw are the ones measured here
                assert after > before
                assert logged["train/kl"] == pytest.approx(kl, rel=1e-4, abs=1e-7), (logged["train/kl"], kl)
        else:
            assert kl == pytest.approx(0.0, abs=1e-7)


def test_step_is_the_kfac_natural_gradient_at_the_predicted_kl() -> None:
    """Without the line search the actor moves by exactly ``α F̂⁻¹g``, and ``α`` puts the quadratic KL of the
    move, measured with a Fisher-vector product of the true KL's Hessian, near δ when F̂ ≈ F (one linear
    layer with a Gaussian head: K-FAC is exact up to sampling)."""
    model = NPG(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=2048,
        n_critic_updates=0,
        line_search=False,
        calibrate_step=False,  # the model's own step
        damping=1e-6,
        policy_kwargs={"net_arch": {"pi": [], "vf": [8]}},
        seed=1,
        device="cpu",
    )
    model.set_logger(configure(None, []))
    _collect(model)
    actor_before, _ = _actor_and_critic(model)
    model.train()
    logged = model.logger.name_to_value
    alpha = logged["train/step_size"]
    assert alpha == pytest.approx(natural_step_size(logged["train/natural_grad_dot"], model.target_kl))
    # the measured KL of the full step is the quadratic model's δ up to the sampled Fisher's error
    assert logged["train/kl"] == pytest.approx(model.target_kl, rel=0.5)
    actor_after, _ = _actor_and_critic(model)
    assert any(not th.equal(actor_before[name], actor_after[name]) for name in actor_before)


def test_preconditioned_conjugate_gradient_solves_with_a_poor_preconditioner() -> None:
    generator = th.Generator().manual_seed(3)
    root = th.randn(12, 12, generator=generator, dtype=th.float64)
    matrix = root @ root.T + 0.5 * th.eye(12, dtype=th.float64)
    right = [th.randn(12, generator=generator, dtype=th.float64)]
    diagonal = matrix.diagonal()  # Jacobi: a crude P⁻¹

    def product(vector: list[th.Tensor]) -> list[th.Tensor]:
        return [matrix @ vector[0]]

    def jacobi(vector: list[th.Tensor]) -> list[th.Tensor]:
        return [vector[0] / diagonal]

    exact = th.linalg.solve(matrix, right[0])
    start, no_residual = npg_module.preconditioned_conjugate_gradient(product, jacobi, right, 0)
    assert th.equal(start[0], right[0] / diagonal) and math.isnan(no_residual)
    few, residual_few = npg_module.preconditioned_conjugate_gradient(product, jacobi, right, 3)
    solved, residual = npg_module.preconditioned_conjugate_gradient(product, jacobi, right, 12)
    assert residual < 1e-8 < residual_few < 1.0
    assert th.allclose(solved[0], exact, rtol=1e-7, atol=1e-9)
    assert (few[0] - exact).norm() < (start[0] - exact).norm()


def test_fisher_cg_steps_refine_the_kfac_direction_to_the_exact_natural_gradient() -> None:
    """With as many CG steps as actor parameters, NPG's direction is ``(F + λI)⁻¹ g`` for the exact Fisher of
    the categorical policy, ``F = mean_s Jₛᵀ (diag p − p pᵀ) Jₛ`` (Jₛ: Jacobian of the logits, computed
    here by ``torch.func``), and the quadratic it reports is ``xᵀ(F + λI)x``; with 0 steps it is K-FAC's."""
    model = NPG(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=64,
        batch_size=64,
        n_critic_updates=0,
        fisher_cg_steps=40,
        policy_kwargs={"net_arch": {"pi": [4], "vf": [4]}},
        seed=0,
        device="cpu",
    )
    model.set_logger(configure(None, []))
    _collect(model)
    model.train()  # K-FAC statistics and decompositions of this policy
    assert 0.0 <= model.logger.name_to_value["train/cg_residual"] < 1e-2
    data = next(model.rollout_buffer.get(batch_size=None))
    observations = data.observations
    actor = [p for name, p in model.policy.named_parameters() if name in model._actor_parameter_names]
    names = [name for name, _ in model.policy.named_parameters() if name in model._actor_parameter_names]
    assert names == [
        "mlp_extractor.policy_net.0.weight",
        "mlp_extractor.policy_net.0.bias",
        "action_net.weight",
        "action_net.bias",
    ]
    with th.no_grad():
        old = snapshot(model.policy.get_distribution(observations))
    generator = th.Generator().manual_seed(1)
    gradient = [th.randn(p.shape, generator=generator) for p in actor]

    def logits(flat: th.Tensor, observation: th.Tensor) -> th.Tensor:
        w1, b1, w2, b2 = flat[:16].view(4, 4), flat[16:20], flat[20:28].view(2, 4), flat[28:30]
        return w2 @ th.tanh(w1 @ observation + b1) + b2

    flat = th.cat([p.detach().flatten() for p in actor]).double()
    jacobians = th.vmap(th.func.jacrev(logits), in_dims=(None, 0))(flat, observations.double())  # (B, 2, 30)
    probabilities = th.softmax(th.vmap(logits, in_dims=(None, 0))(flat, observations.double()), dim=-1)
    output_fisher = th.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None, :]
    fisher = th.einsum("bki,bkl,blj->ij", jacobians, output_fisher, jacobians) / len(observations)
    damped = fisher + model.damping * th.eye(30, dtype=th.float64)
    flat_gradient = th.cat([g.flatten() for g in gradient]).double()
    exact = th.linalg.solve(damped, flat_gradient)

    refined, quadratic, residual = model._refined_direction(observations, old, actor, gradient, 40)
    flat_refined = th.cat([x.flatten() for x in refined]).double()
    assert residual < 1e-3
    assert (flat_refined - exact).norm() <= 2e-3 * exact.norm()
    assert quadratic == pytest.approx(float(flat_refined @ damped @ flat_refined), rel=1e-3)
    # 0 steps: K-FAC's own direction F̂⁻¹g, further from the exact solve than the refined one
    kfac_only, _, _ = model._refined_direction(observations, old, actor, gradient, 0)
    for param, value in zip(actor, gradient, strict=True):
        param.grad = value.clone()
    model.kfac.precondition(lr=1.0, advance=False)
    for param, direction in zip(actor, kfac_only, strict=True):
        assert th.allclose(direction, param.grad, rtol=1e-5, atol=1e-7)
    flat_kfac = th.cat([x.flatten() for x in kfac_only]).double()
    assert (flat_kfac - exact).norm() > 10 * (flat_refined - exact).norm()


def test_calibrated_step_scale_puts_the_measured_kl_at_target_to_second_order() -> None:
    # a step whose measured KL is 4δ is halved (KL quadratic in the step length: 4δ/4 = δ)
    assert calibrated_step_scale(0.04, 0.01, smallest=0.01, largest=3.0) == pytest.approx(0.5)
    assert calibrated_step_scale(0.0025, 0.01, smallest=0.01, largest=3.0) == pytest.approx(2.0)
    assert calibrated_step_scale(1e-9, 0.01, smallest=0.01, largest=3.0) == 3.0  # clipped
    assert calibrated_step_scale(1e6, 0.01, smallest=0.01, largest=3.0) == 0.01
    for useless in (0.0, float("nan"), float("inf")):
        assert calibrated_step_scale(useless, 0.01, smallest=0.01, largest=3.0) == 1.0


def test_calibrated_step_lands_the_measured_kl_near_the_target() -> None:
    """K-FAC's model KL of its own step is off on SB3's 64-64 tanh policy (the measured KL 2-6x the model's
    here); without the line search, the calibrated step's measured KL is δ to second order, and the step is
    the model's step times sqrt(δ / measured KL of the model's step)."""
    model = NPG(
        "MlpPolicy",
        "Pendulum-v1",
        n_steps=2048,
        n_critic_updates=0,
        line_search=False,
        split_std_step=False,  # one block: one calibration factor for every parameter
        seed=1,
        device="cpu",
    )
    model.set_logger(configure(None, []))
    ratios = []
    for _ in range(3):
        _collect(model)
        model.train()
        logged = model.logger.name_to_value
        ratio = logged["train/kl_model_ratio"]
        ratios.append(ratio)
        model_step = natural_step_size(logged["train/natural_grad_dot"], model.target_kl)
        scale = calibrated_step_scale(
            ratio * model.target_kl,
            model.target_kl,
            smallest=CALIBRATION_RANGE[0],
            largest=CALIBRATION_RANGE[1],
        )
        assert logged["train/step_size"] == pytest.approx(model_step * scale)
        assert "train/std_step_size" not in logged
        assert 0.6 * model.target_kl <= logged["train/kl"] <= 1.2 * model.target_kl
    assert max(ratios) > 2.0  # the model was off: the calibration mattered


def test_split_std_step_calibrates_the_mean_and_log_std_blocks_apart() -> None:
    """With ``split_std_step`` the Gaussian's mean parameters and ``log_std`` get step lengths in the ratio
    the two-block trust region gives (``aᵢ ∝ pᵢ/cᵢ`` with ``cᵢ = pᵢ·ratioᵢ``, so ``a_mean/a_std =
    ratio_std/ratio_mean``), the step's measured KL is still δ up to third-order terms, and log_std is no
    longer held back by the mean's too-flat model: its step is longer than the mean's. log_std's diagonal
    Fisher is the exact 2 per dimension, so its model KL is the measured one (a sampled diagonal from one
    batch was off by 2.7x here)."""
    model = NPG(
        "MlpPolicy", "Pendulum-v1", n_steps=2048, n_critic_updates=0, line_search=False, seed=1, device="cpu"
    )
    model.set_logger(configure(None, []))
    for _ in range(3):
        _collect(model)
        log_std_before = model.policy.log_std.detach().clone()
        model.train()
        logged = model.logger.name_to_value
        mean_ratio, std_ratio = logged["train/kl_model_ratio"], logged["train/kl_model_ratio_std"]
        assert logged["train/step_size"] / logged["train/std_step_size"] == pytest.approx(
            std_ratio / mean_ratio, rel=1e-6
        )
        assert std_ratio == pytest.approx(1.0, abs=0.1)  # the exact Fisher: the quadratic model holds
        assert mean_ratio > 1.5  # the mean's K-FAC model is the one that is off
        assert logged["train/std_step_size"] > logged["train/step_size"]
        assert 0.6 * model.target_kl <= logged["train/kl"] <= 1.4 * model.target_kl
        assert not th.equal(model.policy.log_std.detach(), log_std_before)


def test_blockwise_step_lengths_maximise_the_gain_on_the_kl_ellipse() -> None:
    gains, curvatures, target = [3.0, 0.5], [12.0, 0.25], 0.01
    lengths = npg_module.blockwise_step_lengths(gains, curvatures, target)
    # on the constraint ½ Σ aᵢ² cᵢ = δ ...
    assert 0.5 * sum(a * a * c for a, c in zip(lengths, curvatures, strict=True)) == pytest.approx(target)
    # ... and no other point of it gains more (brute force over the ellipse's angle)
    best = max(
        gains[0] * math.sqrt(2 * target / curvatures[0]) * math.cos(angle)
        + gains[1] * math.sqrt(2 * target / curvatures[1]) * math.sin(angle)
        for angle in [index * math.pi / 20000 for index in range(10001)]
    )
    assert sum(a * p for a, p in zip(lengths, gains, strict=True)) == pytest.approx(best, rel=1e-8)
    # with K-FAC's own curvature (cᵢ = pᵢ) every block gets the one natural step sqrt(2δ / Σ pᵢ)
    natural = natural_step_size(sum(gains), target)
    assert npg_module.blockwise_step_lengths(gains, gains, target) == pytest.approx([natural, natural])
    # a block with no gain or no usable curvature takes no step; none usable: no step at all
    assert npg_module.blockwise_step_lengths([1.0, 0.0], [1.0, 1.0], target)[1] == 0.0
    assert npg_module.blockwise_step_lengths([1.0, 1.0], [1.0, float("nan")], target)[1] == 0.0
    assert npg_module.blockwise_step_lengths([0.0], [1.0], target) == [0.0]
    with pytest.raises(ValueError, match="target_kl"):
        npg_module.blockwise_step_lengths([1.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="gains"):
        npg_module.blockwise_step_lengths([1.0], [1.0, 2.0], target)


def _value_loss(model: NPG, data: Any) -> float:
    with th.no_grad():
        values = model.policy.predict_values(data.observations).flatten()
        return float(th.nn.functional.mse_loss(values, data.returns))


def test_critic_epochs_move_only_the_critic_and_lower_the_value_loss() -> None:
    for critic_optimizer in ("kfac", "adam"):
        model = NPG(
            "MlpPolicy",
            "CartPole-v1",
            n_steps=512,
            batch_size=128,
            n_critic_updates=10,
            seed=0,
            device="cpu",
            critic_optimizer=critic_optimizer,
        )
        _collect(model)
        data = next(model.rollout_buffer.get(batch_size=None))

        actor_before, critic_before = _actor_and_critic(model)
        loss_before = _value_loss(model, data)
        model._critic_epochs()
        actor_after, critic_after = _actor_and_critic(model)
        assert all(th.equal(actor_before[name], actor_after[name]) for name in actor_before), critic_optimizer
        assert all(not th.equal(critic_before[name], critic_after[name]) for name in critic_before)
        # measured: 10 epochs of 4 minibatches halve it with the K-FAC critic (Adam at 1e-3: about -25%)
        assert _value_loss(model, data) < (0.5 if critic_optimizer == "kfac" else 0.9) * loss_before, (
            critic_optimizer
        )


def test_actor_curvature_covers_the_actor_and_log_std_only() -> None:
    model = NPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, seed=0, device="cpu")
    policy_names = {id(p): name for name, p in model.policy.named_parameters()}
    covered = {policy_names[id(p)] for p in model.kfac.covered_parameters()}
    uncovered = {policy_names[id(p)] for p in model.kfac.uncovered_parameters()}
    assert uncovered == {"log_std"} and model.kfac.uncovered_curvature == "diagonal"
    assert covered == {name for name in policy_names.values() if "policy_net" in name or "action_net" in name}
    assert model.critic_kfac is not None
    critic = {policy_names[id(p)] for p in model.critic_kfac.covered_parameters()}
    assert critic == {name for name in policy_names.values() if "value_net" in name}
    assert not model.critic_kfac.uncovered_parameters()


def test_log_std_diagonal_fisher_is_the_analytic_one() -> None:
    """For a state-independent diagonal Gaussian the Fisher of each ``log σ_i`` is exactly 2; the actor
    K-FAC's diagonal estimate (one sampled-Fisher backward per update, as NPG runs it) averages to it."""
    model = NPG("MlpPolicy", "Pendulum-v1", n_steps=256, seed=0, device="cpu")
    _collect(model)
    observations = next(model.rollout_buffer.get(batch_size=None)).observations
    from acktr.agents.fisher import sampled_log_prob

    samples = []
    for _ in range(400):
        with model.kfac.collect_statistics():
            (-sampled_log_prob(model.policy.get_distribution(observations)).mean()).backward()
        model.policy.zero_grad(set_to_none=True)
        fisher = model.kfac.diagonal_fisher(model.policy.log_std)
        samples.append(fisher.diagonal.clone())  # factor_decay 0: this update's sample alone
    estimate = th.stack(samples).mean(0)
    assert estimate.shape == model.policy.log_std.shape
    # each sample is a scaled chi-square(1): std 2·sqrt(2)/sqrt(400) ≈ 0.14 around 2
    assert th.allclose(estimate, th.full_like(estimate, 2.0), atol=0.45), estimate


@pytest.mark.parametrize("algo", ["npg", "trpo"])
def test_zoo_entries_are_keywords_of_their_agent_and_sourced(algo: str) -> None:
    from acktr.algorithms import algorithm_class
    from acktr.hyperparams import ZOO_KEYS, agent_parameters
    from acktr.zoo import entry_sources, load_zoo

    allowed = set(agent_parameters(algorithm_class(algo))) | set(ZOO_KEYS)
    sources = entry_sources(algo)
    zoo = load_zoo(algo)
    for env_id in (
        "CartPole-v1",
        "Pendulum-v1",
        "Acrobot-v1",
        "LunarLander-v3",
        "HalfCheetah-v5",
        "Hopper-v5",
    ):
        assert env_id in zoo, f"{algo}.yml has no {env_id} entry"
    for key, values in zoo.items():
        assert not set(values) - allowed, f"{algo} {key}: {set(values) - allowed} are not keywords"
        source = sources.get(key, "").lower()
        assert "tuned" in source or "untested" in source, f"{algo} {key} needs a '# source: ...' line"
    if algo == "npg":  # TRPO's conjugate-gradient keywords are left out of NPG's own entries
        assert not any(set(values) & set(npg_module.CG_ONLY_KEYWORDS) for values in zoo.values())


# ------------------------------------------------------------------------------------ drop-in for TRPO


def test_accepts_every_trpo_keyword_with_trpo_defaults() -> None:
    trpo_parameters = inspect.signature(TRPO.__init__).parameters
    npg_parameters = inspect.signature(NPG.__init__).parameters
    assert set(trpo_parameters) <= set(npg_parameters)
    defaults = {
        name: p.default
        for name, p in trpo_parameters.items()
        if name not in ("self", "policy", "env") and p.default is not inspect.Parameter.empty
    }
    npg_module._warned_cg_keywords.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = NPG("MlpPolicy", "CartPole-v1", **{**defaults, "device": "cpu"})
        NPG("MlpPolicy", "CartPole-v1", **{**defaults, "device": "cpu"})  # second model: no second warning
    cg_warnings = [str(w.message) for w in caught if "conjugate-gradient" in str(w.message)]
    assert len(cg_warnings) == 2 and {m.split(":")[1].split()[0] for m in cg_warnings} == {
        "cg_max_steps",
        "cg_damping",
    }
    trpo = TRPO("MlpPolicy", "CartPole-v1", device="cpu")
    for name in (
        "n_steps",
        "batch_size",
        "gamma",
        "gae_lambda",
        "line_search_shrinking_factor",
        "line_search_max_iter",
        "n_critic_updates",
        "use_sde",
        "sde_sample_freq",
        "normalize_advantage",
        "target_kl",
        "sub_sampling_factor",
        "ent_coef",
        "vf_coef",
    ):
        assert getattr(model, name) == getattr(trpo, name), name
    assert model.lr_schedule(1.0) == trpo.lr_schedule(1.0)
    assert model.cg_max_steps == 15 and model.cg_damping == 0.1
    assert set(NPG.policy_aliases) == set(TRPO.policy_aliases)
    for alias, cls in TRPO.policy_aliases.items():
        assert issubclass(NPG.policy_aliases[alias], cls.__mro__[1]) or NPG.policy_aliases[alias] is cls


@pytest.mark.parametrize("name", ["IdentityEnvMultiDiscrete", "IdentityEnvMultiBinary"])
def test_trains_on_every_trpo_action_space(name: str) -> None:
    from stable_baselines3.common import envs as sb3_envs

    env = make_vec_env(lambda: getattr(sb3_envs, name)(3), n_envs=2)
    model = NPG("MlpPolicy", env, n_steps=64, batch_size=64, n_critic_updates=2, seed=0, device="cpu")
    model.learn(256)
    assert model._n_updates == 2


def test_bad_settings_are_refused_with_the_fix() -> None:
    for kwargs, match in (
        ({"critic_optimizer": "sgd"}, "critic_optimizer must be one of kfac, adam"),
        ({"line_search_shrinking_factor": 1.0}, r"line_search_shrinking_factor must be in \(0, 1\)"),
        ({"target_kl": 0.0}, "target_kl must be a positive number"),
        ({"kfac_kwargs": {"kl_clip": 0.1}}, "set by NPG itself"),
        ({"sub_sampling_factor": 0}, "sub_sampling_factor must be an int >= 1"),
        ({"kfac_kwargs": {"damping": 0.1}}, r"pass it as NPG's own keyword, NPG\(damping=...\)"),
        ({"fisher_cg_steps": -1}, "fisher_cg_steps must be an int >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            NPG("MlpPolicy", "CartPole-v1", device="cpu", **kwargs)


@pytest.mark.parametrize("curvature", ["ekfac", "lowrank", "cholesky"])
def test_kfac_kwargs_choose_the_actor_curvature_and_its_schedule(curvature: str) -> None:
    model = NPG(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=64,
        batch_size=64,
        kfac_kwargs={"curvature": curvature, "update_inverses_every": 3},
        device="cpu",
    )
    assert model.kfac.curvature == curvature and model.kfac.update_inverses_every == 3
    model.learn(128)
    assert model.kfac.blocks[0].has_curvature


# ------------------------------------------------------------------------------------------- save/load


@pytest.mark.parametrize("critic_optimizer", ["kfac", "adam"])
def test_save_load_round_trip_continues_bit_for_bit(tmp_path: Path, critic_optimizer: str) -> None:
    """Saved mid-training and loaded, the next update (same rollout, same random state) equals the
    uninterrupted one bit for bit; a fresh curvature/critic-optimizer state would not."""
    kwargs = dict(n_steps=128, batch_size=64, n_critic_updates=3, critic_optimizer=critic_optimizer)
    model = NPG("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", **kwargs)
    model.learn(128 * 4)
    model.save(tmp_path / "npg.zip")
    loaded = NPG.load(tmp_path / "npg.zip", env=model.env, device="cpu")
    state, loaded_state = model.policy.optimizer.state_dict(), loaded.policy.optimizer.state_dict()
    assert state["actor_kfac"]["steps"] == loaded_state["actor_kfac"]["steps"] == 4
    assert str(state) == str(loaded_state)  # every factor, decomposition, moment and counter

    _collect(model)
    loaded.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    fresh = NPG("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", **kwargs)
    fresh.set_parameters({"policy": model.policy.state_dict()}, exact_match=False)
    fresh.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    results = []
    for agent in (model, loaded, fresh):
        agent.set_logger(configure(None, []))
        agent._current_progress_remaining = model._current_progress_remaining
        th.manual_seed(123)
        np.random.seed(123)  # the rollout buffer's minibatch order
        agent.train()
        results.append(th.cat([p.detach().flatten() for p in agent.policy.parameters()]))
    assert th.equal(results[0], results[1])
    assert not th.equal(results[0], results[2])


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_trains_evaluates_and_resumes_npg(tmp_path: Path) -> None:
    from acktr.cli import main

    def run_cli(args: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        return code, out.getvalue(), err.getvalue()

    run_dir = tmp_path / "run"
    base = [
        "train",
        "--algo",
        "npg",
        "--env",
        "CartPole",
        "--timesteps",
        "2048",
        "--seed",
        "0",
        "--no-progress",
    ]
    options = [
        "-p",
        "n_steps=256",
        "-p",
        "n_critic_updates=2",
        "--checkpoint-freq",
        "512",
        "--eval-episodes",
        "0",
    ]
    code, out, err = run_cli([*base, *options, "--run-dir", str(run_dir), "--interrupt-at", "1100"])
    assert code == 130, err
    code, out, err = run_cli(["train", "--resume", str(run_dir), "--no-progress"])
    assert code == 0, err
    model = NPG.load(run_dir / "model.zip", device="cpu")
    assert model.num_timesteps == 2048 and model.kfac.steps == 4  # 4 updates of 2 x 256 steps, counters kept
    code, out, _ = run_cli(["eval", str(run_dir), "--episodes", "2"])
    assert code == 0 and "over 2 episodes" in out


# ------------------------------------------------------------------------------------------- learning


def _final_mean(model: NPG) -> float:
    return float(np.mean([info["r"] for info in model.ep_info_buffer]))


def test_npg_learns_cartpole_quickly() -> None:
    """The default suite's short learning check: the zoo entry lifts CartPole from ~22 to > 100 in 15k
    steps."""
    from acktr.bench.sample_efficiency import build_model

    model = build_model("npg", "CartPole-v1", seed=0)
    model.learn(15_000)
    assert _final_mean(model) > 100.0  # measured: 130 at 15k steps (seed 0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env_id", "threshold", "budget"), [("CartPole-v1", 475.0, 200_000), ("Pendulum-v1", -300.0, 100_000)]
)
def test_npg_zoo_entries_reach_their_thresholds(env_id: str, threshold: float, budget: int) -> None:
    from acktr.bench.sample_efficiency import build_model, steps_to_threshold

    model = build_model("npg", env_id, seed=0)
    steps = steps_to_threshold(model, threshold, budget)
    assert steps is not None and math.isfinite(steps), f"{env_id}: 100-episode mean below {threshold}"


@pytest.mark.parametrize("algorithm", ["npg", "acktr"])
def test_a_one_row_rollout_with_advantage_normalisation_is_refused_like_sb3(algorithm: str) -> None:
    """The std of one advantage is NaN. SB3's PPO and sb3-contrib's TRPO assert this; ours is a ValueError
    with the fix that is also an AssertionError, so code written for them keeps catching it."""
    from acktr import ACKTR

    cls, extra = (NPG, {"batch_size": 1}) if algorithm == "npg" else (ACKTR, {})
    for error in (ValueError, AssertionError):
        with pytest.raises(error, match="n_steps \\* n_envs must be > 1 to normalise advantages"):
            cls("MlpPolicy", "Pendulum-v1", n_steps=1, normalize_advantage=True, device="cpu", **extra)
    cls("MlpPolicy", "Pendulum-v1", n_steps=1, normalize_advantage=False, device="cpu", **extra).learn(3)


def test_log_std_fisher_is_exact_for_a_diagonal_gaussian_and_sampled_for_gsde() -> None:
    """SB3's state-independent log_std has the exact diagonal Fisher 2 per dimension (per-example scores
    ``z² − 1`` averaged over many draws agree); gSDE's depends on the state's features and keeps the sampled
    estimate; a Categorical policy has no log_std."""
    model = NPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, seed=0, device="cpu")
    exact = exact_log_std_fisher(model.policy)
    assert exact is not None and th.equal(exact, th.full_like(model.policy.log_std, 2.0))
    fisher = model.kfac.diagonal_fisher(model.policy.log_std)
    assert fisher.exact and fisher.diagonal is not None and th.equal(fisher.diagonal, exact)
    # the closed form against per-example scores of the policy's own Gaussian
    observation = th.zeros(1, *model.observation_space.shape)
    normal = model.policy.get_distribution(observation).distribution
    samples = normal.sample((20000,))
    log_std = model.policy.log_std
    scores = th.autograd.functional.jacobian(
        lambda value: th.distributions.Normal(normal.mean, value.exp()).log_prob(samples).sum(-1), log_std
    )
    assert float(scores.square().mean()) == pytest.approx(2.0, rel=0.05)

    gsde = NPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, use_sde=True, seed=0, device="cpu")
    assert exact_log_std_fisher(gsde.policy) is None
    assert not gsde.kfac.diagonal_fisher(gsde.policy.log_std).exact
    assert exact_log_std_fisher(NPG("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64).policy) is None
