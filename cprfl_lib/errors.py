"""The one exception type users see.

Every error caused by input (a file, a line, a value, a missing download) is raised as
:class:`CprflError` with a one-line message that names the offending thing and, where
there is one, what to do about it. The CLI prints it without a traceback and exits 2.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

_WORKER_WRAPPED = "Caught CprflError in DataLoader worker"


class CprflError(Exception):
    """A user-facing error: one line, naming the file, line or value at fault."""

    def __init__(self, *args: object) -> None:
        # A DataLoader worker (data.num_workers > 0) re-raises our error with the worker's whole
        # traceback as its message; keep the original one line, which is the traceback's last.
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith(_WORKER_WRAPPED):
            args = (args[0].rstrip().splitlines()[-1].split("CprflError: ", 1)[-1],)
        super().__init__(*args)


class NonFiniteError(CprflError):
    """Logits or a loss that are NaN or infinite: the engine says at which step, or skips it under fp16."""


def _terminate(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_command(prog: str, action: Callable[[], object], interrupted: str = "interrupted") -> int:
    """A command-line entry point's exit code: 0, or 2 with ``prog: error: <one line>``, or 130 on Ctrl-C.

    SIGTERM (what a scheduler or ``kill`` sends) is handled like Ctrl-C: the work stops where it
    is, atomic writes leave the previous files whole, and one line says so.
    """
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        action()
    except CprflError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = f"interrupted by {exc.args[0]}" if exc.args and str(exc.args[0]).startswith("SIG") else "interrupted"
        print(f"{prog}: {interrupted.replace('interrupted', how, 1)}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
