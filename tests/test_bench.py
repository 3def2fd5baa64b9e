"""The benchmark dispatcher and the update benchmark (smoke-sized: timings are never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from acktr import bench
from acktr.cli import main as cli_main


def test_update_benchmark_writes_report_with_its_command(tmp_path: Path) -> None:
    out = tmp_path / "update.md"
    argv = [
        "update",
        "--batches",
        "2x2",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert "Command: `acktr bench update --batches 2x2" in text
    row = next(line for line in text.splitlines() if line.startswith("| 2×2 = 4 |"))
    cells = [cell.strip().strip("*×") for cell in row.strip("|").split("|")]
    acktr_ms, a2c_ms, ratio = float(cells[1]), float(cells[2]), float(cells[3])
    assert acktr_ms > 0 and a2c_ms > 0
    assert ratio == pytest.approx(acktr_ms / a2c_ms, rel=0.05)


def test_bench_is_reachable_from_the_cli_and_rejects_unknown_benchmarks(capsys) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli_main(["bench", "no-such-benchmark"])
    assert excinfo.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_update_benchmark_compares_presets_in_one_run(tmp_path: Path) -> None:
    out = tmp_path / "pareto.md"
    argv = ["update", "--policy", "mlp", "--presets", "exact,eva-subsampled", "--batches", "2x2"]
    assert bench.main([*argv, "--rounds", "1", "--warmup", "0", "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| exact | curvature=eigen" in text and "| eva-subsampled | curvature=eva" in text
    assert "### exact" in text and "### eva-subsampled" in text  # each preset's own phase table
    with pytest.raises(SystemExit, match="unknown preset"):
        bench.main(["update", "--presets", "fastest", "--rounds", "1"])


def test_the_acktr_default_preset_is_acktrs_default() -> None:
    from acktr.agents.acktr import DEFAULT_KFAC_OPTIONS
    from acktr.bench.update import PRESETS

    preset = PRESETS["acktr-default"]
    assert preset == {key: DEFAULT_KFAC_OPTIONS[key] for key in preset}
    assert PRESETS["lowrank-dense"] == {**preset, "sketch_min_dim": None}
    # the benchmarked policies (Nature CNN, 64-64 MLP, discrete actions) have no parameter outside a layer
    assert set(DEFAULT_KFAC_OPTIONS) - set(preset) == {"uncovered_curvature"}


def test_throughput_bench_refuses_non_atari_envs_and_times_learn() -> None:
    from stable_baselines3 import A2C

    from acktr.bench import main
    from acktr.bench.throughput import _timed_learn

    with pytest.raises(SystemExit, match="'CartPole' is not an Atari game"):
        main(["throughput", "--env", "CartPole"])
    model = A2C("MlpPolicy", "CartPole-v1", n_steps=5, seed=0, device="cpu")
    result = _timed_learn(model, warmup=20, steps=200)
    assert model.num_timesteps >= 220 and result["n_envs"] == 1
    assert result["steps_per_s"] > 0 and 0 < result["train_share"] < 1
