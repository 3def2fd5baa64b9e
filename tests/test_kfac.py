"""Behaviour of the KFAC preconditioner: trust region, state, robustness, hooks, errors."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acktr.curvature import KFAC, kfac_math


class ScaledMLP(nn.Module):
    """An MLP plus a bare parameter that no K-FAC block covers (like SB3's ``log_std``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.temperature = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.temperature


def sampled_fisher_loss(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    probs = torch.softmax(logits.detach(), dim=-1)
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return F.cross_entropy(logits, sampled)


def one_update(
    model: nn.Module,
    kfac: KFAC,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
):
    optimizer.zero_grad()
    with kfac.collect_statistics():
        logits = model(x)
        sampled_fisher_loss(logits, generator).backward(retain_graph=True)
    optimizer.zero_grad()
    F.cross_entropy(logits, labels).backward()
    info = kfac.precondition()
    optimizer.step()
    return info


def make_problem(seed: int = 0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ScaledMLP()
    x = torch.randn(32, 4)
    labels = torch.randint(0, 3, (32,))
    return model, x, labels


def statistics_then_gradient(net: nn.Module, kfac: KFAC, x: torch.Tensor, labels: torch.Tensor) -> None:
    """A statistics pass (sampled labels) in ``collect_statistics``, then the labels' loss into ``.grad``."""
    with kfac.collect_statistics():
        logits = net(x)
        sampled_fisher_loss(logits).backward(retain_graph=True)
    net.zero_grad()
    F.cross_entropy(logits, labels).backward()


def test_trust_region_scale_matches_formula_and_scales_uncovered_parameters() -> None:
    model, x, labels = make_problem()
    reference_model = copy.deepcopy(model)
    lr, kl_clip = 0.5, 1e-4
    kfac = KFAC(model, lr=lr, kl_clip=kl_clip, warn_unsupported=False)
    reference = KFAC(reference_model, lr=lr, kl_clip=None, warn_unsupported=False)
    for net, preconditioner in ((model, kfac), (reference_model, reference)):
        torch.manual_seed(11)
        statistics_then_gradient(net, preconditioner, x, labels)
    raw_grads = [p.grad.clone() for p in reference_model.parameters()]
    info = kfac.precondition()
    reference_info = reference.precondition()
    assert float(reference_info.step_scale) == 1.0
    natural = [p.grad.clone() for p in reference_model.parameters()]
    dot = sum((n * g).sum() for n, g in zip(natural, raw_grads, strict=True))
    expected_scale = min(1.0, (kl_clip / (lr**2 * float(dot))) ** 0.5)
    assert expected_scale < 1.0  # the test must exercise clipping
    assert float(info.natural_grad_dot) == pytest.approx(float(dot), rel=1e-5)
    assert float(info.step_scale) == pytest.approx(expected_scale, rel=1e-5)
    assert float(info.predicted_kl) == pytest.approx(kl_clip, rel=1e-4)
    for clipped, unclipped in zip(model.parameters(), natural, strict=True):
        torch.testing.assert_close(clipped.grad, unclipped * expected_scale, rtol=1e-5, atol=1e-8)
    # the uncovered parameter kept its raw gradient direction, scaled by the same ν
    raw_temperature = raw_grads[[name for name, _ in model.named_parameters()].index("temperature")]
    torch.testing.assert_close(model.temperature.grad, raw_temperature * expected_scale, rtol=1e-5, atol=1e-8)


def test_a_further_gradient_of_the_same_update_neither_refreshes_nor_advances() -> None:
    """``precondition(advance=False, kl_clip=c)``: the same curvature (no refresh, ``steps`` unchanged) and
    the trust region ``c`` for this call only, as the split trust region of ACKTR uses it."""
    model, x, labels = make_problem()
    lr = 0.5
    kfac = KFAC(model, lr=lr, kl_clip=1e-4, update_inverses_every=1, warn_unsupported=False)
    statistics_then_gradient(model, kfac, x, labels)
    gradients = [p.grad.clone() for p in model.parameters()]
    first = kfac.precondition()
    assert kfac.steps == 1 and first.inverses_updated
    scaled = [p.grad.clone() for p in model.parameters()]
    for param, grad in zip(model.parameters(), gradients, strict=True):
        param.grad = grad.clone()
    again = kfac.precondition(kl_clip=None, advance=False)  # due every update, but not refreshed here
    assert kfac.steps == 1 and not again.inverses_updated and kfac.kl_clip == 1e-4
    assert float(again.step_scale) == 1.0  # no trust region for this call
    assert float(again.natural_grad_dot) == pytest.approx(float(first.natural_grad_dot), rel=1e-6)
    expected = min(1.0, (1e-4 / (lr**2 * float(first.natural_grad_dot))) ** 0.5)
    assert float(first.step_scale) == pytest.approx(expected, rel=1e-5) and expected < 1.0
    for param, first_step in zip(model.parameters(), scaled, strict=True):  # same direction, other scale
        torch.testing.assert_close(first_step, param.grad * expected, rtol=1e-5, atol=1e-8)


def test_trust_region_formula_function() -> None:
    dot = torch.tensor(4.0)
    assert float(kfac_math.trust_region_scale(dot, 0.5, 0.01)) == pytest.approx((0.01 / (0.25 * 4.0)) ** 0.5)
    assert float(kfac_math.trust_region_scale(dot, 0.01, 0.01)) == 1.0
    assert float(kfac_math.trust_region_scale(dot, 0.5, None)) == 1.0
    assert float(kfac_math.trust_region_scale(torch.tensor(0.0), 0.5, 0.01)) == 1.0


def test_lr_override_and_callable_lr() -> None:
    model, x, labels = make_problem()
    schedule_value = [0.3]
    kfac = KFAC(model, lr=lambda: schedule_value[0], kl_clip=1e-6, warn_unsupported=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    info = one_update(model, kfac, optimizer, x, labels)
    assert float(info.predicted_kl) == pytest.approx(1e-6, rel=1e-4)
    dot = float(info.natural_grad_dot)
    assert float(info.step_scale) == pytest.approx((1e-6 / (0.09 * dot)) ** 0.5, rel=1e-4)
    optimizer.zero_grad()
    with kfac.collect_statistics():
        logits = model(x)
        sampled_fisher_loss(logits).backward(retain_graph=True)
    optimizer.zero_grad()
    F.cross_entropy(logits, labels).backward()
    info = kfac.precondition(lr=0.01)
    assert float(info.step_scale) == pytest.approx(
        min(1.0, (1e-6 / (1e-4 * float(info.natural_grad_dot))) ** 0.5)
    )


def test_state_dict_round_trip_is_bit_identical() -> None:
    model, x, labels = make_problem(3)
    kfac = KFAC(model, update_inverses_every=2, cold_iter=2, warn_unsupported=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        one_update(model, kfac, optimizer, x, labels, generator)

    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "kfac": kfac.state_dict()}, buffer
    )
    generator_state = generator.get_state()

    continued = [one_update(model, kfac, optimizer, x, labels, generator) for _ in range(3)]

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored_model, _, _ = make_problem(99)  # different init: everything must come from the checkpoint
    restored_model.load_state_dict(saved["model"])
    restored_kfac = KFAC(restored_model, update_inverses_every=2, cold_iter=2, warn_unsupported=False)
    restored_kfac.load_state_dict(saved["kfac"])
    restored_optimizer = torch.optim.SGD(restored_model.parameters(), lr=0.05, momentum=0.9)
    restored_optimizer.load_state_dict(saved["optimizer"])
    generator.set_state(generator_state)
    resumed = [
        one_update(restored_model, restored_kfac, restored_optimizer, x, labels, generator) for _ in range(3)
    ]

    for original, loaded in zip(model.parameters(), restored_model.parameters(), strict=True):
        assert torch.equal(original, loaded)
        assert torch.equal(original.grad, loaded.grad)
    for a, b in zip(continued, resumed, strict=True):
        assert torch.equal(a.step_scale, b.step_scale)
    assert restored_kfac.steps == kfac.steps == 6


def test_load_state_dict_rejects_other_architectures() -> None:
    model, _, _ = make_problem()
    kfac = KFAC(model, warn_unsupported=False)
    other = KFAC(nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="same architecture"):
        other.load_state_dict(kfac.state_dict())
    with pytest.raises(ValueError, match="not a KFAC state_dict"):
        kfac.load_state_dict({"weight": torch.zeros(1)})


def test_eigensolver_failure_keeps_previous_decomposition(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, labels = make_problem(4)
    kfac = KFAC(model, update_inverses_every=1, warn_unsupported=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    one_update(model, kfac, optimizer, x, labels)
    before = [
        (b.activation_eigen.eigenvectors.clone(), b.gradient_eigen.eigenvalues.clone()) for b in kfac.blocks
    ]

    def broken_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("injected failure")

    monkeypatch.setattr(torch.linalg, "eigh", broken_eigh)
    info = one_update(model, kfac, optimizer, x, labels)
    assert info.eigh_failures == len(kfac.blocks)
    for block, (vectors, values) in zip(kfac.blocks, before, strict=True):
        assert torch.equal(block.activation_eigen.eigenvectors, vectors)
        assert torch.equal(block.gradient_eigen.eigenvalues, values)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    info = one_update(model, kfac, optimizer, x, labels)
    assert info.eigh_failures == 2 * len(kfac.blocks)
    assert info.as_dict()["eigh_failures"] == 2 * len(kfac.blocks)


def test_float32_eigensolver_failure_retries_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    real_eigh = torch.linalg.eigh
    calls: list[torch.dtype] = []

    def float32_fails(matrix, *args, **kwargs):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("injected float32 failure")
        return real_eigh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", float32_fails)
    factor = torch.randn(5, 5)
    factor = factor @ factor.T
    result = kfac_math.safe_eigh(factor)
    assert result is not None and calls == [torch.float32, torch.float64]
    assert result.eigenvalues.dtype == torch.float32
    torch.testing.assert_close(
        result.eigenvectors @ torch.diag(result.eigenvalues) @ result.eigenvectors.T,
        factor,
        rtol=1e-4,
        atol=1e-4,
    )


def test_non_finite_statistics_are_skipped() -> None:
    model, x, labels = make_problem(5)
    kfac = KFAC(model, warn_unsupported=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    one_update(model, kfac, optimizer, x, labels)
    factors = [(b.activation_factor.clone(), b.gradient_factor.clone()) for b in kfac.blocks]
    bad = x.clone()
    bad[0, 0] = float("nan")
    with kfac.collect_statistics():
        model(bad).sum().backward()
    for block, (activation, gradient) in zip(kfac.blocks, factors, strict=True):
        assert torch.equal(block.activation_factor, activation)
        assert torch.equal(block.gradient_factor, gradient)


def test_unsupported_modules_are_listed_in_one_warning() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Embedding(5, 2), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"1 \(BatchNorm1d\), 2 \(Embedding\)") as record:
        KFAC(model)
    assert len([w for w in record if "K-FAC covers no block" in str(w.message)]) == 1


def test_hooks_exist_only_inside_collect_statistics() -> None:
    model, x, labels = make_problem(6)
    kfac = KFAC(model, warn_unsupported=False)
    linear = model.body[0]
    assert not linear._forward_hooks
    with kfac.collect_statistics():
        assert linear._forward_hooks
        with torch.no_grad():
            model(x)  # ignored: no graph
        logits = model(x)
        sampled_fisher_loss(logits).backward(retain_graph=True)
    assert not linear._forward_hooks
    snapshot = [b.gradient_factor.clone() for b in kfac.blocks]
    # a second backward through the retained graph after the block must not touch the statistics
    F.cross_entropy(logits, labels).backward()
    model(x).sum().backward()
    for block, gradient in zip(kfac.blocks, snapshot, strict=True):
        assert torch.equal(block.gradient_factor, gradient)
    assert all(block.statistics_updates == 1 for block in kfac.blocks)


def test_cold_start_averages_plainly_then_decays() -> None:
    layer = nn.Linear(2, 1, bias=False)
    kfac = KFAC(layer, factor_decay=0.9, cold_iter=2)
    seen = []
    for value in (1.0, 3.0, 5.0, 7.0):
        x = torch.full((1, 2), value)
        with kfac.collect_statistics():
            layer(x).sum().backward()
        seen.append(float(kfac.blocks[0].activation_factor[0, 0]))
    # plain average of 1 and 9, then exponential averaging with 0.9
    assert seen[0] == pytest.approx(1.0)
    assert seen[1] == pytest.approx(5.0)
    assert seen[2] == pytest.approx(0.9 * 5.0 + 0.1 * 25.0)
    assert seen[3] == pytest.approx(0.9 * seen[2] + 0.1 * 49.0)


def test_update_factors_every_and_update_inverses_every() -> None:
    model, x, labels = make_problem(7)
    kfac = KFAC(
        model, update_factors_every=2, update_inverses_every=3, stagger_refresh=False, warn_unsupported=False
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    refreshed = [bool(one_update(model, kfac, optimizer, x, labels).inverses_updated) for _ in range(6)]
    assert refreshed == [True, False, False, True, False, False]
    assert kfac.blocks[0].statistics_updates == 3


def test_bfloat16_model_keeps_float32_factors() -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(torch.bfloat16)
    kfac = KFAC(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 4, dtype=torch.bfloat16)
    labels = torch.randint(0, 3, (16,))
    info = one_update(model, kfac, optimizer, x, labels)
    assert kfac.blocks[0].activation_factor.dtype == torch.float32
    assert all(p.grad.dtype == torch.bfloat16 and torch.isfinite(p.grad).all() for p in model.parameters())
    assert 0.0 < float(info.step_scale) <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"damping": "0.1"}, TypeError, "damping must be a number"),
        ({"damping": -1.0}, ValueError, "damping must be > 0"),
        ({"factor_decay": 1.0}, ValueError, r"factor_decay must be in \[0, 1\)"),
        ({"kl_clip": 0}, ValueError, "kl_clip must be > 0"),
        ({"update_inverses_every": 0}, ValueError, "update_inverses_every must be >= 1"),
        ({"update_factors_every": 1.5}, TypeError, "update_factors_every must be an int"),
        ({"inverse_method": "svd"}, ValueError, "inverse_method must be 'eigen' or 'cholesky'"),
        ({"curvature": "svd"}, ValueError, "curvature must be one of"),
        ({"row_fraction": 1.5}, ValueError, r"row_fraction must be in \(0, 1\]"),
        ({"statistics_fraction": 0}, ValueError, "statistics_fraction must be > 0"),
        ({"rank": 0}, ValueError, "rank must be >= 1"),
        ({"loss_reduction": "none"}, ValueError, "loss_reduction must be one of"),
    ],
)
def test_bad_hyperparameters_give_clear_errors(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        KFAC(nn.Linear(2, 2), **kwargs)


def test_hyperparameters_set_between_steps_are_validated_and_used() -> None:
    model, x, labels = make_problem()
    kfac = KFAC(model, inverse_method="cholesky", kl_clip=None, warn_unsupported=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    one_update(model, kfac, optimizer, x, labels)
    first_inverse = kfac.blocks[0].activation_inverse
    assert first_inverse is not None
    # damping is baked into the Cholesky inverses: a new value recomputes them at the next step
    kfac.damping = 0.5
    assert kfac.blocks[0].activation_inverse is None
    one_update(model, kfac, optimizer, x, labels)
    assert kfac.blocks[0].activation_inverse is not None
    assert not torch.equal(kfac.blocks[0].activation_inverse, first_inverse)
    # switching the approximation keeps the K-FAC factors and decomposes the new way at the next step
    factor = kfac.blocks[0].activation_factor.clone()
    kfac.curvature = "eigen"
    assert kfac.inverse_method == "eigen" and torch.equal(kfac.blocks[0].activation_factor, factor)
    one_update(model, kfac, optimizer, x, labels)
    assert kfac.blocks[0].activation_eigen is not None and not hasattr(kfac.blocks[0], "activation_inverse")
    for name, value, error in (
        ("damping", 0.0, ValueError),
        ("factor_decay", 1.0, ValueError),
        ("cold_iter", -1, ValueError),
        ("update_inverses_every", 2.0, TypeError),
        ("curvature", "svd", ValueError),
        ("kl_clip", "0.1", TypeError),
    ):
        before = getattr(kfac, name)
        with pytest.raises(error):
            setattr(kfac, name, value)
        assert getattr(kfac, name) == before


def test_models_without_supported_layers_and_nested_blocks_are_errors() -> None:
    with pytest.raises(ValueError, match=r"no nn\.Linear or nn\.Conv2d"):
        KFAC(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module"):
        KFAC("model")  # type: ignore[arg-type]
    kfac = KFAC(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="nested"), kfac.collect_statistics(), kfac.collect_statistics():
        pass


def test_modules_argument_restricts_coverage() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match=r"2 \(Linear\)"):
        kfac = KFAC(model, modules=[model[0]])
    assert [b.name for b in kfac.blocks] == ["0"]
    assert {id(p) for p in kfac.uncovered_parameters()} == {id(model[2].weight), id(model[2].bias)}


def test_kfac_optimizer_reduces_loss_faster_than_sgd() -> None:
    """Sanity of the whole pipeline: K-FAC steps make progress on a real problem."""
    torch.manual_seed(9)
    x = torch.randn(256, 10)
    teacher = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
    with torch.no_grad():
        labels = teacher(x).argmax(1)
    losses = {}
    for name in ("kfac", "sgd"):
        torch.manual_seed(10)
        student = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        kfac = KFAC(student, lr=0.1, kl_clip=1e-2, damping=1e-2, update_inverses_every=5)
        for _ in range(60):
            if name == "kfac":
                one_update(student, kfac, optimizer, x, labels)
            else:
                optimizer.zero_grad()
                F.cross_entropy(student(x), labels).backward()
                optimizer.step()
        losses[name] = float(F.cross_entropy(student(x), labels).detach())
    assert losses["kfac"] < 0.7 * losses["sgd"]


def test_no_top_level_agents_envs_or_curvature_module(tmp_path) -> None:
    """The folders install only as acktr.*; PyPI has unrelated ``agents``/``envs`` packages."""
    import acktr

    repo_root = str(__import__("pathlib").Path(acktr.__file__).resolve().parents[1])
    code = (
        "import importlib.util, acktr.curvature, acktr.agents, acktr.envs, acktr.zoo\n"
        "for name in ('agents', 'curvature', 'envs', 'zoo'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    print(name, None if spec is None else spec.origin)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    for line in result.stdout.splitlines():
        name, origin = line.split(" ", 1)
        assert origin == "None" or not origin.startswith(repo_root), (
            f"top-level {name!r} resolves to {origin}"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("curvature", ["eigen", "ekfac", "cholesky", "lowrank", "eva"])
def test_cuda_matches_cpu(curvature: str) -> None:
    """Factors, decompositions and the preconditioned gradient live on the model's device, for every
    approximation (``"lowrank"`` decomposes these narrow factors exactly)."""
    results = []
    for device in ("cpu", "cuda"):
        model, x, labels = make_problem(12)
        model = model.to(device)
        kfac = KFAC(model, kl_clip=1e-3, warn_unsupported=False, curvature=curvature, rank=2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        noise = torch.randn(32, 3, generator=torch.Generator().manual_seed(0)).to(device)
        optimizer.zero_grad()
        with kfac.collect_statistics():
            logits = model(x.to(device))
            target = logits.detach() + noise
            (0.5 * (logits - target).square().sum(1).mean()).backward(retain_graph=True)
        optimizer.zero_grad()
        F.cross_entropy(logits, labels.to(device)).backward()
        info = kfac.precondition()
        assert info.step_scale.device.type == device
        statistic = kfac.blocks[0].approximation.running()[0]
        assert statistic is not None and statistic.device.type == device
        results.append([p.grad.cpu() for p in model.parameters()])
    for cpu_grad, cuda_grad in zip(*results, strict=True):
        torch.testing.assert_close(cuda_grad, cpu_grad, rtol=1e-3, atol=1e-5)


def test_unsupported_conv_configurations_are_left_uncovered() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1), nn.Flatten(), nn.Linear(2, 1))
    with pytest.warns(UserWarning, match=r"0 \(Conv2d, groups=4\)"):
        kfac = KFAC(model)
    assert [block.name for block in kfac.blocks] == ["1", "3"]


def test_layers_whose_forward_never_runs_get_a_warning_and_plain_gradients() -> None:
    torch.manual_seed(13)
    attention = nn.MultiheadAttention(4, 1, batch_first=True)  # out_proj.weight is used functionally
    with pytest.warns(UserWarning, match="K-FAC covers no block"):
        kfac = KFAC(attention, kl_clip=None)
    x = torch.randn(2, 3, 4)
    with kfac.collect_statistics():
        attention(x, x, x)[0].sum().backward()
    attention.zero_grad()
    attention(x, x, x)[0].square().sum().backward()
    raw = attention.out_proj.weight.grad.clone()
    with pytest.warns(UserWarning, match=r"no statistics for layers \['out_proj'\]"):
        kfac.precondition()
    torch.testing.assert_close(attention.out_proj.weight.grad, raw)


def test_frozen_layers_and_frozen_biases() -> None:
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model[2].bias.requires_grad_(False)
    kfac = KFAC(model, factor_decay=0.0, kl_clip=None, damping=0.1)
    assert [block.name for block in kfac.blocks] == ["2"]
    x = torch.randn(8, 3)
    with kfac.collect_statistics():
        out = model(x)
        (0.5 * (out - (out.detach() + torch.randn_like(out))).square().sum(1).mean()).backward()
    block = kfac.blocks[0]
    assert block.activation_factor.shape == (4, 4)  # no homogeneous coordinate for a frozen bias
    model.zero_grad()
    model(x).sum().backward()
    raw = model[2].weight.grad.clone()
    kfac.precondition()
    a, g = block.activation_factor, block.gradient_factor
    expected = torch.linalg.solve(torch.kron(a, g) + 0.1 * torch.eye(8), raw.T.reshape(-1)).reshape(4, 2).T
    torch.testing.assert_close(model[2].weight.grad, expected, rtol=1e-4, atol=1e-6)
    assert model[2].bias.grad is None and model[0].weight.grad is None


class ActorCritic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.actor = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.critic = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(x), self.critic(x).squeeze(1)


def test_trust_region_groups_scale_each_group_by_its_own_formula() -> None:
    torch.manual_seed(15)
    model = ActorCritic()
    reference_model = copy.deepcopy(model)
    x, labels, returns = torch.randn(32, 4), torch.randint(0, 3, (32,)), 50.0 * torch.randn(32)
    lr, actor_clip, critic_clip = 0.5, 1e-3, 0.3
    kfac = KFAC(
        model, lr=lr, kl_clip=actor_clip, trust_region_groups=[(model.critic.parameters(), critic_clip)]
    )
    reference = KFAC(reference_model, lr=lr, kl_clip=None)
    for net, preconditioner in ((model, kfac), (reference_model, reference)):
        torch.manual_seed(16)
        with preconditioner.collect_statistics():
            logits, values = net(x)
            fisher = (
                sampled_fisher_loss(logits)
                + (values - (values + torch.randn_like(values)).detach()).square().mean()
            )
            fisher.backward(retain_graph=True)
        net.zero_grad()
        (F.cross_entropy(logits, labels) + (values - returns).square().mean()).backward()
    info = kfac.precondition()
    reference.precondition()
    assert len(info.group_step_scales) == 1
    critic_dot = float(info.group_natural_grad_dots[0])
    actor_dot = float(info.natural_grad_dot) - critic_dot
    expected_actor = min(1.0, (actor_clip / (lr**2 * actor_dot)) ** 0.5)
    expected_critic = min(1.0, (critic_clip / (lr**2 * critic_dot)) ** 0.5)
    assert float(info.step_scale) == pytest.approx(expected_actor, rel=1e-3)  # float32 difference of dots
    assert float(info.group_step_scales[0]) == pytest.approx(expected_critic, rel=1e-5)
    assert expected_actor != pytest.approx(expected_critic)
    for (name, clipped), unclipped in zip(
        model.named_parameters(), reference_model.parameters(), strict=True
    ):
        scale = expected_critic if name.startswith("critic") else expected_actor
        torch.testing.assert_close(clipped.grad, unclipped.grad * scale, rtol=1e-3, atol=1e-7)
    assert float(info.predicted_kl) == pytest.approx(
        lr**2 * (expected_actor**2 * actor_dot + expected_critic**2 * critic_dot), rel=1e-4
    )


def test_trust_region_groups_reject_split_layers_and_foreign_parameters() -> None:
    model = ActorCritic()
    with pytest.raises(ValueError, match="same group"):
        KFAC(model, trust_region_groups=[([model.critic[0].weight], 0.1)])
    with pytest.raises(ValueError, match="not in the model"):
        KFAC(model, trust_region_groups=[([nn.Parameter(torch.zeros(1))], 0.1)])


def test_group_learning_rates_enter_each_group_trust_region() -> None:
    """With ``group_lrs`` each group's ν uses its own η, and the predicted KL sums η_g² ν_g² ⟨Δ, g⟩_g."""
    torch.manual_seed(17)
    model = ActorCritic()
    x, labels, returns = torch.randn(32, 4), torch.randint(0, 3, (32,)), 5.0 * torch.randn(32)
    actor_lr, critic_lr, actor_clip, critic_clip = 2.0, 0.05, 1e-3, 1e-3
    kfac = KFAC(model, kl_clip=actor_clip, trust_region_groups=[(model.critic.parameters(), critic_clip)])
    with kfac.collect_statistics():
        logits, values = model(x)
        critic_fisher = (values - (values + torch.randn_like(values)).detach()).square().mean()
        (sampled_fisher_loss(logits) + critic_fisher).backward(retain_graph=True)
    model.zero_grad()
    (F.cross_entropy(logits, labels) + (values - returns).square().mean()).backward()
    with pytest.raises(ValueError, match="group_lrs has 2 entries"):
        kfac.precondition(lr=actor_lr, group_lrs=[0.1, 0.2])
    info = kfac.precondition(lr=actor_lr, group_lrs=[critic_lr])
    critic_dot = float(info.group_natural_grad_dots[0])
    actor_dot = float(info.natural_grad_dot) - critic_dot
    expected_actor = min(1.0, (actor_clip / (actor_lr**2 * actor_dot)) ** 0.5)
    expected_critic = min(1.0, (critic_clip / (critic_lr**2 * critic_dot)) ** 0.5)
    # the same δ, different η: with one shared η both scales would be equal-shaped functions of their dots
    assert float(info.step_scale) == pytest.approx(expected_actor, rel=1e-3)
    assert float(info.group_step_scales[0]) == pytest.approx(expected_critic, rel=1e-5)
    assert expected_actor < 1.0
    assert float(info.predicted_kl) == pytest.approx(
        actor_lr**2 * expected_actor**2 * actor_dot + critic_lr**2 * expected_critic**2 * critic_dot, rel=1e-4
    )


def test_statistics_backward_records_the_same_statistics_as_backward_and_leaves_grads_alone() -> None:
    """``statistics_backward`` backpropagates only to the covered layers' outputs (and the uncovered
    parameters): the factors and the diagonal Fisher equal those of ``loss.backward()``, and ``.grad`` is
    untouched."""
    from tests.test_diagonal_fisher import GaussianPolicy, sampled_nll

    torch.manual_seed(3)
    conv = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    )
    x = torch.randn(12, 2, 8, 8)
    obs = torch.randn(20, 3)
    for make, loss_of in (
        (lambda: copy.deepcopy(conv), lambda model: sampled_fisher_loss(model(x))),
        (GaussianPolicy, lambda model: sampled_nll(model, obs)),
    ):
        torch.manual_seed(4)
        reference_model = make()
        model = copy.deepcopy(reference_model)
        options = dict(kl_clip=None, uncovered_curvature="diagonal")
        reference, kfac = KFAC(reference_model, **options), KFAC(model, **options)
        for parameter in model.parameters():
            parameter.grad = torch.full_like(parameter, 7.0)
        for seed in range(3):
            torch.manual_seed(seed)
            with reference.collect_statistics():
                loss_of(reference_model).backward()
            torch.manual_seed(seed)
            with kfac.collect_statistics():
                kfac.statistics_backward(loss_of(model))
        for expected, block in zip(reference.blocks, kfac.blocks, strict=True):
            torch.testing.assert_close(block.activation_factor, expected.activation_factor, rtol=0, atol=0)
            torch.testing.assert_close(block.gradient_factor, expected.gradient_factor, rtol=1e-6, atol=1e-9)
        for expected, fisher in zip(reference._uncovered_fishers, kfac._uncovered_fishers, strict=True):
            torch.testing.assert_close(fisher.diagonal, expected.diagonal)
        assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())

    kfac = KFAC(conv, kl_clip=None, update_factors_every=2)
    with pytest.raises(RuntimeError, match="inside collect_statistics"):
        kfac.statistics_backward(conv(x).sum())
    with kfac.collect_statistics():
        kfac.statistics_backward(sampled_fisher_loss(conv(x)))
    with kfac.collect_statistics():  # an inactive block (update_factors_every=2): nothing to do
        kfac.statistics_backward(sampled_fisher_loss(conv(x)))
    assert kfac.blocks[0].statistics_updates == 1
