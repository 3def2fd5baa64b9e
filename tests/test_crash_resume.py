"""Crash safety of ``acktr train``: SIGKILL at random moments (and in the middle of a checkpoint write),
SIGINT and SIGTERM at start-up and mid-run, concurrent runs into one runs folder, and determinism on CPU.

The SIGKILL tests run ``acktr train`` as child processes; the child can slow its checkpoint writes down
(``ACKTR_TEST_CHECKPOINT_DELAY``: half the zip is written, then it sleeps) so that a kill lands inside one.
Counts are appended to ``$ACKTR_RELIABILITY_LOG`` when it is set.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from acktr.cli import main
from acktr.runs import RunPaths, claim_run_dir, latest_checkpoint, read_monitor, read_scalars

CHILD = textwrap.dedent(
    """
    import os, sys, time
    delay = float(os.environ.get("ACKTR_TEST_CHECKPOINT_DELAY", "0"))
    if delay:
        import acktr.runs as runs
        saves = []

        def slow_save(model, path):
            saves.append(path)
            if len(saves) == 1:  # the first checkpoint is written normally
                return runs._atomic(path, lambda tmp: model.save(str(tmp)), suffix=".zip")

            def write(tmp):
                model.save(str(tmp))
                data = tmp.read_bytes()
                with open(tmp, "wb") as handle:  # half a zip on disk, as a kill in mid-write leaves it
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    time.sleep(delay)
                    handle.write(data[len(data) // 2 :])

            runs._atomic(path, write, suffix=".zip")

        runs.atomic_save_model = slow_save
    from acktr.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)
FAST = ["--n-envs", "8", "-p", "n_steps=5", "--seed", "0", "--no-progress", "--eval-episodes", "0"]


def record_counts(test: str, **counts: Any) -> None:
    path = os.environ.get("ACKTR_RELIABILITY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"test": test, **counts}) + "\n")


def start_child(args: list[str], folder: Path, checkpoint_delay: float = 0.0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACKTR_TEST_CHECKPOINT_DELAY": str(checkpoint_delay)}
    log = open(folder / f"child_{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=log, stderr=log, env=env)


class ForkedChild:
    """``acktr train`` in a fork of this process (torch already imported: it starts at once), with
    ``subprocess.Popen``'s ``poll``/``send_signal``/``wait``/``returncode``."""

    def __init__(self, args: list[str], folder: Path, checkpoint_delay: float) -> None:
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                log = os.open(folder / f"fork_{os.getpid()}.log", os.O_WRONLY | os.O_CREAT)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.environ["ACKTR_TEST_CHECKPOINT_DELAY"] = str(checkpoint_delay)
                namespace: dict[str, Any] = {}
                exec(CHILD.replace("sys.exit(main(sys.argv[1:]))", ""), namespace)
                code = namespace["main"](args)
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def wait_until(condition: Callable[[], bool], process: Any, timeout: float) -> bool:
    """Poll ``condition`` every 5 ms until it holds (True) or the process ended or time ran out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.005)
    return False


def child_logs(folder: Path) -> str:
    """The end of every child's output, for a failure message."""
    return " | ".join(path.read_text(errors="replace")[-600:] for path in sorted(folder.glob("*.log")))


def temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(".*.tmp*") if p.is_file()]


def checkpoint_writes(run_dir: Path) -> list[int]:
    """Steps of the checkpoint zips being written (their temporary files exist)."""
    names = [re.match(r"\.step_(\d+)\.zip\.", p.name) for p in temporaries(run_dir / "checkpoints")]
    return [int(match.group(1)) for match in names if match]


def check_latest_checkpoint_loads(run_dir: Path) -> int | None:
    """The newest committed checkpoint loads, holds its step and finite parameters; returns its step."""
    from acktr.agents import ACKTR

    checkpoint = latest_checkpoint(RunPaths(run_dir))  # raises if latest.yml names a missing file
    if checkpoint is None:
        return None
    model = ACKTR.load(checkpoint["model"])
    assert model.num_timesteps == checkpoint["step"]
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    return int(checkpoint["step"])


def check_finished_run(run_dir: Path, total: int, restarts: int) -> None:
    """model.zip at ``total`` steps; monitor.csv and TensorBoard with every step range at most once."""
    from acktr.agents import ACKTR

    assert ACKTR.load(run_dir / "model.zip").num_timesteps == total
    rows = read_monitor(run_dir / "monitor.csv")
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps), "episodes out of order: a step range was logged twice"
    assert sum(row["l"] for row in rows) <= total, "more episode steps than env steps: duplicated episodes"
    # the steps lost are those of episodes running at a checkpoint that was resumed from (8 copies, at most
    # 500 steps each) and of the 8 episodes unfinished at the end
    assert sum(row["l"] for row in rows) >= total - 8 * 500 * (restarts + 1)
    for tag, points in read_scalars(run_dir / "tb").items():
        tag_steps = [step for step, _ in points]
        assert tag_steps == sorted(set(tag_steps)), f"{tag}: duplicated or out-of-order steps"
        assert tag_steps[-1] <= total
    assert not temporaries(run_dir), "temporary files left behind"


def kill_and_resume(
    tmp_path: Path,
    total: int,
    kills: list[tuple[str, float]],
    checkpoint_freq: int,
    start: Callable[[list[str], Path, float], Any],
    finish_after: int | None = None,
) -> dict[str, Any]:
    """Run ``acktr train`` to ``total`` steps, SIGKILLed once per entry of ``kills``: ``("write", 0)``
    kills it in the middle of its next checkpoint write, ``("random", t)`` t seconds after it started.
    After every kill the newest checkpoint must load; the next process resumes (or starts over when no
    run folder was written yet); a last one, in this process, finishes the run (``finish_after`` steps
    after the newest checkpoint when given, for a ``total`` too large to reach)."""
    run_dir = tmp_path / "run"
    new_run = ["train", "--env", "CartPole", "--timesteps", str(total)]
    new_run += ["--checkpoint-freq", str(checkpoint_freq), "--run-dir", str(run_dir), *FAST]
    resume = ["train", "--resume", str(run_dir), "--no-progress"]
    counts: dict[str, Any] = {"kills": 0, "kills_in_checkpoint_write": 0, "kills_before_run_folder": 0}
    counts["finished_early"] = 0
    resumed_from: list[int | None] = []
    counts["resumed_from"] = resumed_from
    for kind, seconds in kills:
        args = resume if (run_dir / "config.yml").is_file() else new_run
        committed = (check_latest_checkpoint_loads(run_dir) or 0) if args is resume else 0
        process = start(args, tmp_path, 2.0 if kind == "write" else 0.0)
        if kind == "write":  # the child writes its first checkpoint at once and the next ones slowly
            slow_from = committed + 2 * checkpoint_freq
            wait_until(
                lambda slow_from=slow_from: any(s >= slow_from for s in checkpoint_writes(run_dir)),
                process,
                240,
            )
        else:
            wait_until(lambda: False, process, seconds)
        if process.poll() is not None:  # it finished (or failed) before the kill
            assert process.returncode == 0, f"child failed: {child_logs(tmp_path)}"
            counts["finished_early"] += 1
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        being_written = checkpoint_writes(run_dir)
        counts["kills"] += 1
        counts["kills_in_checkpoint_write"] += int(bool(being_written))
        if kind == "write":
            assert being_written, f"the kill missed the checkpoint write: {child_logs(tmp_path)}"
        if not (run_dir / "config.yml").is_file():
            counts["kills_before_run_folder"] += 1
            continue
        step = check_latest_checkpoint_loads(run_dir)
        resumed_from.append(step)
        if being_written:  # the checkpoint being written was not committed: the newest is an older one
            assert step is None or step < min(being_written)
    if not (run_dir / "model.zip").is_file():
        final = resume if (run_dir / "config.yml").is_file() else new_run
        if finish_after is not None:  # a shorter total for the last process, which only --resume may set
            committed = (check_latest_checkpoint_loads(run_dir) or 0) if final is resume else 0
            total = committed + finish_after
            final = [*final, "--timesteps", str(total)]
        code, _, err = run_cli(final)
        assert code == 0, err
    counts["total"] = total
    check_finished_run(run_dir, total, counts["kills"])
    return counts


def test_sigkill_in_a_checkpoint_write_leaves_the_previous_checkpoint_and_resume_reaches_the_total(
    tmp_path: Path,
) -> None:
    """Default suite: one kill inside the second checkpoint write (half a zip on disk), then --resume."""
    counts = kill_and_resume(tmp_path, 1600, [("write", 0.0)], checkpoint_freq=400, start=ForkedChild)
    assert counts["kills_in_checkpoint_write"] == 1
    assert counts["resumed_from"] == [400]
    record_counts("sigkill_short", **counts)


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """Eight kills: six at random moments (start-up included), two inside checkpoint writes."""
    rng = np.random.default_rng(14)
    kills = [("random", float(rng.uniform(0.5, 14.0))) for _ in range(6)]
    kills[2:2] = [("write", 0.0)]
    kills.append(("write", 0.0))
    counts = kill_and_resume(
        tmp_path, 10**7, kills, checkpoint_freq=2000, start=start_child, finish_after=4000
    )
    assert counts["kills"] == 8 and counts["kills_in_checkpoint_write"] >= 2
    record_counts("sigkill_random", kill_times=[round(t, 2) for _, t in kills], **counts)


# ------------------------------------------------------------------------------------- SIGINT / SIGTERM


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("moment", ["start-up", "mid-run"])
def test_a_signal_leaves_a_resumable_run_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals, moment: str
) -> None:
    """The signal is sent to this process while the env is being built (start-up) or after the first
    checkpoint (mid-run); training stops at the next env step, says how to resume in one line, and the
    resumed run reaches its total."""
    import acktr.factory
    import acktr.train
    from acktr.agents import ACKTR
    from acktr.callbacks import RunCallback

    if moment == "start-up":
        build_run = acktr.factory.build_run

        def build_and_signal(config: Any) -> Any:
            os.kill(os.getpid(), signum)
            return build_run(config)

        monkeypatch.setattr(acktr.train, "build_run", build_and_signal)
    else:
        on_rollout_start = RunCallback._on_rollout_start

        def signal_after_first_checkpoint(self: RunCallback) -> None:
            on_rollout_start(self)
            if self.num_timesteps >= 440:
                os.kill(os.getpid(), signum)

        monkeypatch.setattr(RunCallback, "_on_rollout_start", signal_after_first_checkpoint)
    handler_before = signal.getsignal(signal.SIGINT)
    run_dir = tmp_path / "run"
    args = ["train", "--env", "CartPole", "--timesteps", "1200", "--checkpoint-freq", "400"]
    code, out, err = run_cli([*args, "--run-dir", str(run_dir), *FAST])
    assert code == 130 and err == "", err
    stopped = [line for line in out.splitlines() if line.startswith("interrupted")]
    assert len(stopped) == 1 and f"interrupted by {signum.name} at step" in stopped[0]
    assert f"acktr train --resume {run_dir}" in stopped[0]
    step = check_latest_checkpoint_loads(run_dir)
    assert step == (None if moment == "start-up" else 400)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    monkeypatch.undo()
    code, out, err = run_cli(["train", "--resume", str(run_dir), "--no-progress"])
    assert code == 0, err
    assert ACKTR.load(run_dir / "model.zip").num_timesteps == 1200


# ------------------------------------------------------------------------------------------- concurrency

CLAIM = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from acktr.runs import claim_run_dir
    start = float(sys.argv[2])
    while time.time() < start:  # all processes race for the same folder name at once
        pass
    print(claim_run_dir(sys.argv[1], "acktr", "CartPole-v1"))
    """
)


def test_eight_processes_claiming_run_folders_at_once_get_distinct_ones(tmp_path: Path) -> None:
    (tmp_path / "acktr" / "CartPole-v1_3").mkdir(parents=True)
    start = time.time() + 2.0
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    claimed = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sorted(int(Path(path).name.split("_")[-1]) for path in claimed) == list(range(4, 12))
    assert claim_run_dir(tmp_path, "acktr", "CartPole-v1").name == "CartPole-v1_12"


@pytest.mark.slow
def test_eight_concurrent_acktr_train_runs_into_one_runs_folder(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    args = ["train", "--env", "CartPole", "--timesteps", "400", "--runs-root", str(root), *FAST]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "acktr", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(8)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in outputs]
    folders = sorted((root / "acktr").iterdir())
    assert [folder.name for folder in folders] == [f"CartPole-v1_{n}" for n in range(1, 9)]
    for folder in folders:
        config = (folder / "config.yml").read_text()
        assert "CartPole-v1" in config
        assert len(read_monitor(folder / "monitor.csv")) > 0
        from acktr.agents import ACKTR

        assert ACKTR.load(folder / "model.zip").num_timesteps == 400
    record_counts("concurrent_runs", processes=8, distinct_folders=len(folders))


# ------------------------------------------------------------------------------------------- determinism


def parameters(path: Path) -> torch.Tensor:
    from acktr.agents import ACKTR

    model = ACKTR.load(path, device="cpu")
    return torch.cat([p.detach().flatten() for p in model.policy.parameters()])


def test_same_seed_on_cpu_gives_identical_parameters_and_learning_curves(tmp_path: Path) -> None:
    args = ["train", "--env", "CartPole", "--timesteps", "2000", "--device", "cpu", *FAST]
    for name in ("a", "b"):
        code, _, err = run_cli([*args, "--run-dir", str(tmp_path / name)])
        assert code == 0, err
    assert torch.equal(parameters(tmp_path / "a" / "model.zip"), parameters(tmp_path / "b" / "model.zip"))

    def curve(name: str) -> list[tuple[float, float, float]]:
        return [(r["r"], r["l"], r["step"]) for r in read_monitor(tmp_path / name / "monitor.csv")]

    assert curve("a") == curve("b") and len(curve("a")) > 20
    scalars_a, scalars_b = read_scalars(tmp_path / "a" / "tb"), read_scalars(tmp_path / "b" / "tb")
    assert {tag: v for tag, v in scalars_a.items() if not tag.startswith("time/")} == {
        tag: v for tag, v in scalars_b.items() if not tag.startswith("time/")
    }


def test_a_resumed_runs_event_file_sorts_after_the_killed_ones(tmp_path: Path) -> None:
    """Found by the SIGKILL test in the full suite: a resume within the same second as the killed process
    (whose pid was higher) wrote an event file that sorted first, so its steps came before the older ones."""
    from torch.utils.tensorboard import SummaryWriter

    from acktr.runs import wait_for_later_event_file_name

    now = int(time.time())
    killed = tmp_path / f"events.out.tfevents.{now}.host.99999999.0"
    killed.write_bytes(b"")
    wait_for_later_event_file_name(tmp_path)
    assert time.time() >= now + 1
    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("x", 1.0, 1)
    writer.close()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == killed.name
