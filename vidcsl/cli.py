"""The ``vidcsl`` command line: one sub-command per job.

Each stage owns its sub-commands in a module exposing ``add_commands(subparsers)``; this file only
wires them together, importing each lazily so ``vidcsl --help`` stays fast.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise. Set before torch loads
# libgomp (this module is the console script's first import). Beside another busy process, spinning threads
# take the cores the working ones need: benchmarks/bench_contention.py measured PGD on the small CNN 2.6x
# faster with PASSIVE beside a busy process, and no slower alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402

# Modules that register sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "vidcsl.data.cli",  # data check
    "vidcsl.train.cli",  # pretrain, supervise, probe, knn
    "vidcsl.robustness.cli",  # evaluate, nonrobust, study, demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidcsl",
        description="Contrastive self-supervised learning of image/video encoders and their adversarial robustness.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # stage not built yet
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command. User errors (:class:`vidcsl.errors.VidcslError`) print one line and return 2;
    SIGTERM / SIGINT (:class:`vidcsl.errors.Preempted`) print one line and return 3; anything else is a bug
    and propagates with its traceback."""
    from vidcsl.errors import EXIT_USER_ERROR, Preempted, VidcslError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        with signals_stop_the_command():
            return int(args.func(args) or 0)
    except VidcslError as err:
        print(f"vidcsl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as err:
        print(f"vidcsl {args.command}: {err}", file=sys.stderr)
        return err.exit_code


@contextlib.contextmanager
def signals_stop_the_command() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`vidcsl.errors.Preempted` wherever the command is; the trainer
    catches them itself to stop at a step boundary. Finished outputs are written atomically, so a rerun
    continues from them."""
    from vidcsl.errors import Preempted

    def stop(signum, frame):
        raise Preempted(f"stopped by {signal.Signals(signum).name}; finished outputs are kept, rerun the "
                        f"command to continue")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
