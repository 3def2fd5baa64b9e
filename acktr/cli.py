"""The ``acktr`` command line."""

from __future__ import annotations

import argparse
import sys

from acktr import __version__, bench


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acktr",
        description="Natural-gradient (K-FAC) reinforcement learning: train, evaluate and benchmark agents.",
    )
    parser.add_argument("--version", action="version", version=f"acktr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench_parser = commands.add_parser("bench", help="run a benchmark and print side-by-side ratios")
    bench.add_subparsers(bench_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        return bench.run(args, argv[1:])
    return 2
