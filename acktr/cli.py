"""The ``acktr`` command line: train, eval, record, plot, zoo and bench.

Mistakes a user can make (unknown env, bad ``-p`` value, missing run folder, corrupt model, unwritable
output, ...) print one line naming the problem and the fix and exit with code 2; ``--debug`` shows the
traceback instead. Heavy libraries (torch, SB3) are imported only after the arguments are parsed, so
``acktr --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Any, NoReturn

from acktr import __version__
from acktr.algorithms import ALGORITHMS, algorithm_names
from acktr.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: OpenMP wait policy of every acktr command unless the user set ``OMP_WAIT_POLICY`` (see main)
OPENMP_WAIT_POLICY = "PASSIVE"


def _count(text: str) -> int:
    """A whole number of steps/episodes; ``1e6`` and ``100_000`` are accepted, ``2.5`` is not."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    # int() of inf raises OverflowError, of nan ValueError
    if not math.isfinite(value) or value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``acktr train: error: ...; see acktr train --help``), exit 2,
    instead of the usage block followed by the error."""

    def error(self, message: str) -> NoReturn:
        _error_line_for(self.prog, f"{message}; see {self.prog} --help")
        raise SystemExit(EXIT_USER_ERROR)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def _algo_help() -> str:
    return "; ".join(f"{spec.name}: {spec.description}" for spec in ALGORITHMS.values())


def _add_train(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train an agent (hyperparameters from the zoo, overridable with -p)",
        description=(
            "Train an agent. Hyperparameters come from the zoo (`acktr zoo ENV`); -p overrides them. A run "
            "folder (runs/<algo>/<Env>_<N>) receives config.yml, monitor.csv, tb/, checkpoints/ and, at the "
            "end, model.zip. --resume RUN_DIR continues an interrupted run from its latest checkpoint (or "
            "extends a finished one with a larger --timesteps); on resume only --timesteps, --eval-freq, "
            "--eval-episodes, --checkpoint-freq, --keep-checkpoints, --no-tensorboard, --threads and "
            "--progress may be given."
        ),
    )
    parser.add_argument(
        "--env", help="environment: short name (CartPole, Breakout, HalfCheetah) or gymnasium id"
    )
    parser.add_argument(
        "--algo",
        choices=algorithm_names(),
        help=f"algorithm (default: acktr; on --resume the run's own). {_algo_help()}",
    )
    parser.add_argument(
        "--timesteps", type=_count, help="total env steps (default: the zoo's budget; 1e6 is accepted)"
    )
    parser.add_argument("--n-envs", type=_count, help="parallel envs (default: from the zoo)")
    parser.add_argument("--seed", type=int, help="random seed (default: drawn and recorded in config.yml)")
    parser.add_argument(
        "--backend",
        choices=["auto", "envpool", "gymnasium", "torch"],
        help="env backend (default auto: torch-native for classic control, envpool for Atari/MuJoCo, "
        "gymnasium otherwise); the one used is recorded in config.yml",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--run-dir", help="run folder (default: runs/<algo>/<Env>_<N>)")
    parser.add_argument(
        "--runs-root", default="runs", help="parent of the default run folders (default: runs)"
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue RUN_DIR from its latest checkpoint (see above)"
    )
    parser.add_argument(
        "--eval-freq",
        type=_count,
        help="evaluate every N env steps and keep best_model.zip (default: 0, off)",
    )
    parser.add_argument(
        "--eval-episodes",
        type=_count,
        help="episodes per evaluation and in the final evaluation (default: 10; 0: none)",
    )
    parser.add_argument(
        "--checkpoint-freq", type=_count, help="checkpoint every N env steps (default: 10 per run)"
    )
    parser.add_argument(
        "--keep-checkpoints",
        type=_count,
        help="newest checkpoints kept in checkpoints/ (default: 2; 0 keeps all)",
    )
    parser.add_argument(
        "--no-tensorboard", action="store_true", help="write no TensorBoard events (and no tb/ folder)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal; otherwise a log line every 10%% or 30 s)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: 1 on CPU unless the policy is a CNN)"
    )
    parser.add_argument(
        "-p",
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a hyperparameter (YAML value), e.g. -p kl_clip=0.002 "
        "-p policy_kwargs.net_arch=[64,64] -p normalize=true; repeatable",
    )
    parser.add_argument("--interrupt-at", type=int, help=argparse.SUPPRESS)  # testing: crash after N steps
    _add_common(parser)


def _add_model_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_DIR|MODEL.zip", help="a run folder or a model zip")
    parser.add_argument("--best", action="store_true", help="use best_model.zip of the run folder")
    parser.add_argument(
        "--algo", choices=algorithm_names(), help="algorithm of a bare model zip (default: acktr)"
    )
    parser.add_argument("--env", help="environment of a bare model zip (runs know theirs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--seed", type=int, help="seed of the evaluation envs (default: run seed + 10000)")
    parser.add_argument(
        "--deterministic", action="store_true", help="take the most likely action (default: sample)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: 1 on CPU unless the policy is a CNN)"
    )
    _add_common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="acktr",
        description="Natural-gradient (K-FAC) reinforcement learning: train, evaluate and benchmark agents.",
    )
    parser.add_argument("--version", action="version", version=f"acktr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(commands)

    eval_parser = commands.add_parser(
        "eval",
        help="mean ± std of the unclipped score of a trained model",
        description="Play whole episodes with a trained model and print the mean ± std of the game score.",
    )
    _add_model_target(eval_parser)
    eval_parser.add_argument("--episodes", type=_count, default=10, help="episodes to play (default 10)")

    record_parser = commands.add_parser(
        "record",
        help="write an mp4 of a trained model playing (headless)",
        description="Render a trained model playing into an mp4 (no display needed).",
    )
    _add_model_target(record_parser)
    record_parser.add_argument("--episodes", type=_count, default=1, help="episodes to record (default 1)")
    record_parser.add_argument("--out", help="video file (default: next to the model, <model>.mp4)")
    record_parser.add_argument("--fps", type=int, help="frames per second (default: the env's render fps)")
    record_parser.add_argument(
        "--max-frames", type=_count, default=10_000, help="stop after this many frames (default 10000)"
    )

    plot_parser = commands.add_parser(
        "plot",
        help="learning curves (return vs env steps) of one or more runs",
        description="Plot the moving-average episode return of runs against env steps (from monitor.csv).",
    )
    plot_parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders; runs of the same algo, env and -p overrides form one shaded mean curve",
    )
    plot_parser.add_argument("--out", default="curve.png", help="image file (default: curve.png)")
    plot_parser.add_argument(
        "--window", type=_count, default=20, help="episodes in the moving average (default 20)"
    )
    plot_parser.add_argument("--title", help="figure title")
    _add_common(plot_parser)

    zoo_parser = commands.add_parser(
        "zoo",
        help="list the tuned environments or print one resolved config",
        description="Without ENV: list the zoo entries of --algo. With ENV: print its resolved config.",
    )
    zoo_parser.add_argument("env", nargs="?", help="print the resolved hyperparameters for this environment")
    zoo_parser.add_argument("--algo", default="acktr", choices=algorithm_names(), help="default: acktr")
    zoo_parser.add_argument(
        "-p", "--param", dest="params", action="append", default=[], metavar="KEY=VALUE", help="as for train"
    )
    _add_common(zoo_parser)

    from acktr.bench import BENCHMARKS

    bench_parser = commands.add_parser(
        "bench",
        help="run a benchmark and print side-by-side ratios (acktr bench BENCHMARK --help)",
        description="Benchmarks: " + "; ".join(f"{name}: {text}" for name, (_, text) in BENCHMARKS.items()),
    )
    bench_parser.add_argument("benchmark", choices=list(BENCHMARKS), help="which benchmark")
    bench_parser.add_argument("options", nargs=argparse.REMAINDER, help="its options (see its --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: torch's spinning workers otherwise take the cores that
    # envpool's threads and the other processes of a small shared machine need (measured on 2 loaded cores:
    # `acktr train --env Breakout` 231 -> 459 env steps/s, zoo/benchmarks/throughput.md). It must be set
    # before torch loads its OpenMP runtime, which happens only after the arguments are parsed.
    os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench" and len(argv) > 1 and argv[1] not in ("-h", "--help"):
        from acktr import bench

        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "bench":  # only reached for `acktr bench --help`-like calls
        return 0
    try:
        return _dispatch(args, argv)
    except UserError as error:
        if args.debug:
            raise
        _error_line(args.command, str(error))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _error_line(args.command, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:  # unwritable run folder or output file, full disk, ...
        if args.debug:
            raise
        where = f" {error.filename}" if error.filename else ""
        message = f"cannot access{where}: {error.strerror or error}; check the path and its permissions"
        _error_line(args.command, message)
        return EXIT_USER_ERROR


def _error_line(command: str, message: str) -> None:
    _error_line_for(f"acktr {command}", message)


def _error_line_for(prog: str, message: str) -> None:
    # one line even when the message quotes a value with a newline in it
    text = " ".join(f"{prog}: error: {message}".split("\n"))
    with contextlib.suppress(OSError):  # stderr closed as well: nothing left to tell
        print(text, file=sys.stderr, flush=True)


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "train":
        return _train(args, argv)
    if args.command == "eval":
        return _eval(args)
    if args.command == "record":
        return _record(args)
    if args.command == "plot":
        return _plot(args)
    if args.command == "zoo":
        return _zoo(args)
    raise UserError(f"unknown command {args.command!r}; see acktr --help")


# Options that define a run and cannot change when it is resumed.
FIXED_ON_RESUME = {
    "--env": "env",
    "--n-envs": "n_envs",
    "--seed": "seed",
    "--run-dir": "run_dir",
    "--device": "device",
    "--backend": "backend",
    "-p": "params",
}


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from acktr.interrupts import deferred_interrupts

    # SIGINT/SIGTERM from here on stop training at the next env step (a resumable run, one line);
    # a second one stops at once
    with deferred_interrupts():
        return _train_deferred(args, argv)


def _train_deferred(args: argparse.Namespace, argv: list[str]) -> int:
    from acktr.train import TrainOptions, command_line, train

    if args.resume is not None:
        given = [flag for flag, name in FIXED_ON_RESUME.items() if getattr(args, name) not in (None, [])]
        if given:
            raise UserError(
                f"--resume continues with the run's own config.yml: drop {', '.join(given)} (on resume only "
                "--timesteps, --eval-freq, --eval-episodes, --checkpoint-freq, --keep-checkpoints, "
                "--no-tensorboard, --threads and --progress can change)"
            )
    elif args.env is None:
        raise UserError("--env is required (e.g. acktr train --env CartPole), or pass --resume RUN_DIR")
    if args.timesteps is not None and args.timesteps <= 0:
        raise UserError(f"--timesteps must be a positive number of env steps, got {args.timesteps}")
    options = TrainOptions(
        env=args.env,
        algo=args.algo,
        timesteps=args.timesteps,
        n_envs=args.n_envs,
        seed=args.seed,
        backend=args.backend or "auto",
        device=args.device or "auto",
        run_dir=args.run_dir,
        runs_root=args.runs_root,
        resume=args.resume,
        eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes,
        checkpoint_freq=args.checkpoint_freq,
        keep_checkpoints=args.keep_checkpoints,
        tensorboard=not args.no_tensorboard,
        progress=args.progress,
        overrides=list(args.params),
        threads=args.threads,
        interrupt_at=args.interrupt_at,
        command=command_line(argv),
    )
    result = train(options)
    return EXIT_INTERRUPTED if result.interrupted else 0


def _eval(args: argparse.Namespace) -> int:
    from acktr.evaluate import evaluate_target

    evaluation = evaluate_target(
        args.target,
        episodes=args.episodes,
        deterministic=args.deterministic,
        algo=args.algo,
        env=args.env,
        device=args.device,
        best=args.best,
        seed=args.seed,
        threads=args.threads,
    )
    mode = "deterministic" if evaluation.deterministic else "stochastic"
    print(
        f"mean return {evaluation.mean:.2f} ± {evaluation.std:.2f} "
        f"over {evaluation.episodes} episodes ({mode})"
    )
    return 0


def _record(args: argparse.Namespace) -> int:
    from acktr.record import record

    out, frames, returns = record(
        args.target,
        episodes=args.episodes,
        out=args.out,
        algo=args.algo,
        env=args.env,
        device=args.device,
        deterministic=args.deterministic,
        fps=args.fps,
        max_frames=args.max_frames,
        best=args.best,
        seed=args.seed,
        threads=args.threads,
    )
    scores = ", ".join(f"{r:.1f}" for r in returns) or "no finished episode"
    print(f"wrote {out} ({frames} frames; episode returns: {scores})")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from acktr.plotting import plot_runs

    if args.window < 1:
        raise UserError(f"--window must be >= 1, got {args.window}")
    out = plot_runs(args.runs, out=args.out, window=args.window, title=args.title)
    print(f"wrote {out}")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    import yaml

    from acktr.hyperparams import list_zoo

    if args.env is None:
        entries = list_zoo(args.algo)
        if not entries:
            print(f"no zoo file for {args.algo}: agent defaults are used")
            return 0
        width = max(len(key) for key, _, _ in entries)
        print(f"{'entry':<{width}}  {'steps':>8}  {'envs':>4}  source")
        for key, values, source in entries:
            steps = values.get("n_timesteps")
            steps_text = f"{float(steps):.0e}".replace("e+0", "e") if steps is not None else "-"
            print(f"{key:<{width}}  {steps_text:>8}  {values.get('n_envs', '-')!s:>4}  {source}")
        return 0
    from acktr.run_config import TrainOptions, resolve_config

    config = resolve_config(TrainOptions(env=args.env, algo=args.algo, seed=0, overrides=list(args.params)))
    data = config.to_dict()
    shown = {
        key: data[key]
        for key in ("algo", "env_id", "zoo_entry", "zoo_source", "n_timesteps", "n_envs", "backend_used")
    }
    shown["policy"] = (
        config.policy or "auto (CnnPolicy for images, MultiInputPolicy for dicts, else MlpPolicy)"
    )
    shown["normalize"] = config.normalize
    shown["hyperparams"] = data["hyperparams"]
    print(yaml.safe_dump(shown, sort_keys=False, default_flow_style=None).rstrip())
    return 0
