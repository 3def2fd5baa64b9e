"""Fuzzed input with hypothesis: ``acktr train`` flags and ``-p`` hyperparameters, and corrupt, truncated or
foreign zip files given to ``acktr eval`` and ``acktr train --resume``.

Every input must end in exit code 0 (a valid one: the run is stopped after its first update) or 2 with
exactly one line on stderr and no traceback; an exception escaping ``main`` fails the test. The API behind
it raises typed exceptions (:class:`acktr.errors.UserError`). The default suite tries 30 examples per test
(< 20 s); the slow tests try many more. Counts go to ``$ACKTR_RELIABILITY_LOG`` when it is set.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acktr.cli import main
from acktr.errors import UserError

# Reproducible cases by default; ACKTR_FUZZ_RANDOM=1 explores new ones on every run.
FUZZ_SETTINGS = dict(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not os.environ.get("ACKTR_FUZZ_RANDOM"),
    database=None,
)
DEFAULT_EXAMPLES = 30
SLOW_EXAMPLES = 2000


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as error:  # argparse's errors (and --help)
            code = error.code if isinstance(error.code, int) else 1
    return code, out.getvalue(), err.getvalue()


class Tally:
    """Outcomes of the cases one test tried (written to ``$ACKTR_RELIABILITY_LOG``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.outcomes: dict[str, int] = {"cases": 0, "exit_0": 0, "exit_2": 0}

    def add(self, code: int) -> None:
        self.outcomes["cases"] += 1
        self.outcomes[f"exit_{code}"] = self.outcomes.get(f"exit_{code}", 0) + 1

    def write(self) -> None:
        path = os.environ.get("ACKTR_RELIABILITY_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"test": self.name, **self.outcomes}) + "\n")


def check_outcome(code: int, err: str, args: list[str]) -> None:
    assert code in (0, 2), f"exit {code} for {args}: {err}"
    assert "Traceback" not in err, f"traceback for {args}: {err}"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("acktr "), f"{args}: {err!r}"


@pytest.fixture
def one_update(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Valid fuzzed runs stop after their first update (whatever --timesteps says) and skip the final
    evaluation, so that every case costs a fraction of a second."""
    from acktr.callbacks import RunCallback

    def on_step(self: RunCallback) -> bool:
        return int(getattr(self.model, "_n_updates", 0)) < 1

    monkeypatch.setattr(RunCallback, "_on_step", on_step)
    yield


# ---------------------------------------------------------------------------------------------- values

NASTY_TEXT = [
    "0", "-1", "1", "2.5", "-0.5", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "abc", "", " ",
    "[]", "{}", "[1, 2]", "[64, -3]", "{a: 1}", "null", "true", "false", "99999999999999999999", "0x10",
    "1_000", "ü", "'", '"', "- a", ": b", "!!python/object:os.system", "&a [*a]", "lin_0.25", "lin_-1",
    "nan_0.1", "[[[[]]]]",
]  # fmt: skip
# plausible values, so that some cases get past validation into the run itself
PLAUSIBLE_TEXT = ["0.1", "0.5", "0.99", "2", "4", "8", "1e-3", "lin_0.1", "[32]", "[16, 16]", "eigen", "eva"]
values = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.sampled_from(PLAUSIBLE_TEXT),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=10),
)


def acktr_keys() -> list[str]:
    """The ACKTR constructor's keywords, the zoo-only keys, nested keys of the dict-valued ones."""
    from acktr.agents import ACKTR

    keys = [name for name in inspect.signature(ACKTR.__init__).parameters if name not in ("self", "env")]
    keys += ["n_timesteps", "n_envs", "normalize", "frame_stack", "policy"]
    keys += ["policy_kwargs.net_arch", "policy_kwargs.activation_fn", "policy_kwargs.ortho_init"]
    keys += ["kfac_kwargs.curvature", "kfac_kwargs.rank", "kfac_kwargs.statistics_fraction"]
    keys += ["kfac_kwargs.max_consecutive_skips", "kfac_kwargs.max_refresh_failures", "normalize.norm_reward"]
    return keys


keys = st.one_of(st.sampled_from(acktr_keys()), st.text(min_size=1, max_size=8))
overrides = st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=3)
FLAGS = [
    "--n-envs", "--seed", "--backend", "--device", "--eval-freq", "--eval-episodes", "--checkpoint-freq",
    "--keep-checkpoints", "--threads", "--timesteps", "--env", "--algo",
]  # fmt: skip
# Valid but enormous workloads are not errors (10^12 evaluation episodes would simply run): these flags get
# invalid values or small and very large counts only where a very large one is refused up front.
WORKLOAD_FLAGS = ("--eval-freq", "--eval-episodes", "--n-envs")


def _is_large_valid_count(text: str) -> bool:
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        return False
    return number == number and abs(number) != float("inf") and number == int(number) and 64 < number <= 2**20


def flag_value(flag: str) -> st.SearchStrategy[tuple[str, str]]:
    if flag in WORKLOAD_FLAGS:
        bounded = values.filter(lambda text: not _is_large_valid_count(text))
        if flag != "--n-envs":  # evaluation: any valid count above 64 would run that many episodes
            bounded = bounded.filter(lambda text: not _is_large_valid_count(text) and not _huge(text))
        return bounded.map(lambda text: (flag, text))
    return values.map(lambda text: (flag, text))


def _huge(text: str) -> bool:
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        return False
    return number == number and number > 64 and (number == float("inf") or number == int(number))


flags = st.lists(st.sampled_from(FLAGS).flatmap(flag_value), max_size=3)


def train_args(flag_values: list[tuple[str, str]], params: list[str], run_dir: Path) -> list[str]:
    args = ["train", "--env", "CartPole", "--no-progress", "--eval-episodes", "0", "--n-envs", "2"]
    args += ["-p", "n_steps=4", "--run-dir", str(run_dir)]
    for flag, value in flag_values:
        args += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
    for param in params:
        args += [f"--param={param}"]
    return args


def fuzz_train(tmp_path: Path, name: str, examples: int) -> Tally:
    tally = Tally(name)
    counter = iter(range(10**9))

    @settings(max_examples=examples, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(flags, overrides)
    def case(flag_values: list[tuple[str, str]], params: list[str]) -> None:
        args = train_args(flag_values, params, tmp_path / f"run{next(counter)}")
        code, _, err = run_cli(args)
        check_outcome(code, err, args)
        tally.add(code)

    case()
    tally.write()
    return tally


def test_fuzzed_train_flags_and_hyperparameters_end_in_one_line(tmp_path: Path, one_update: None) -> None:
    tally = fuzz_train(tmp_path, "fuzz_train", DEFAULT_EXAMPLES)
    assert tally.outcomes["cases"] >= DEFAULT_EXAMPLES and tally.outcomes["exit_2"] > 0


@pytest.mark.slow
def test_fuzzed_train_flags_and_hyperparameters_many_cases(tmp_path: Path, one_update: None) -> None:
    tally = fuzz_train(tmp_path, "fuzz_train_slow", SLOW_EXAMPLES)
    assert tally.outcomes["cases"] >= SLOW_EXAMPLES


# ---------------------------------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    code, _, err = run_cli(
        [
            *["train", "--env", "CartPole", "--timesteps", "400", "--n-envs", "2", "-p", "n_steps=4"],
            *["--checkpoint-freq", "200", "--no-progress", "--eval-episodes", "0", "--run-dir", str(run_dir)],
        ]
    )
    assert code == 0, err
    return run_dir


def damaged(data: bytes, kind: str, draw: Any) -> bytes:
    """``data`` truncated, with bytes flipped, or a foreign zip (valid archive, other members)."""
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "flip":
        mutable = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            mutable[position] ^= draw(st.integers(1, 255))
        return bytes(mutable)
    if kind == "foreign":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for member in draw(st.lists(st.sampled_from(["data", "policy.pth", "x.txt"]), max_size=3)):
                archive.writestr(member, draw(st.binary(max_size=64)))
        return buffer.getvalue()
    return draw(st.binary(max_size=256))  # random bytes


def fuzz_model_files(run_dir: Path, tmp_path: Path, name: str, examples: int) -> Tally:
    import shutil

    tally = Tally(name)
    model_bytes = (run_dir / "model.zip").read_bytes()
    counter = iter(range(10**9))

    @settings(max_examples=examples, **FUZZ_SETTINGS)  # type: ignore[arg-type]
    @given(st.sampled_from(["truncate", "flip", "foreign", "random"]), st.booleans(), st.data())
    def case(kind: str, as_resume: bool, data: st.DataObject) -> None:
        bad = damaged(model_bytes, kind, data.draw)
        copy = tmp_path / f"run{next(counter)}"
        if as_resume:  # the newest checkpoint of an unfinished run is damaged
            shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("model.zip"))
            latest = yaml.safe_load((copy / "checkpoints" / "latest.yml").read_text())
            (copy / "checkpoints" / latest["model"]).write_bytes(bad)
            args = ["train", "--resume", str(copy), "--no-progress", "--eval-episodes", "0"]
        else:
            copy.mkdir()
            (copy / "model.zip").write_bytes(bad)
            args = ["eval", str(copy / "model.zip"), "--env", "CartPole", "--episodes", "1"]
        code, _, err = run_cli(args)
        check_outcome(code, err, args)
        tally.add(code)

    case()
    tally.write()
    return tally


def test_fuzzed_model_files_for_eval_and_resume_end_in_one_line(
    good_run: Path, tmp_path: Path, one_update: None
) -> None:
    tally = fuzz_model_files(good_run, tmp_path, "fuzz_model_files", DEFAULT_EXAMPLES)
    assert tally.outcomes["exit_2"] > 0


@pytest.mark.slow
def test_fuzzed_model_files_many_cases(good_run: Path, tmp_path: Path, one_update: None) -> None:
    tally = fuzz_model_files(good_run, tmp_path, "fuzz_model_files_slow", 600)
    assert tally.outcomes["cases"] >= 600


def test_the_api_raises_typed_errors_for_a_corrupt_model_and_bad_hyperparameters(tmp_path: Path) -> None:
    from acktr.factory import load_model
    from acktr.run_config import TrainOptions, resolve_config

    corrupt = tmp_path / "model.zip"
    corrupt.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(UserError, match="cannot load"):
        load_model("acktr", corrupt)
    with pytest.raises(UserError, match="n_steps"):
        resolve_config(TrainOptions(env="CartPole", overrides=["n_steps=abc"]))
