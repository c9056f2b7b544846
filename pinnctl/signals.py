"""SIGTERM handled like Ctrl-C: it is what `timeout`, SLURM and systemd send, and a run
stopped by it must end the same way (final checkpoint, status "interrupted", summary.json).

The handler raises ``Terminated`` (a ``KeyboardInterrupt``) where the run happens to be,
so every path that already survives Ctrl-C survives SIGTERM; further SIGTERMs are ignored
while that clean-up runs. Only the main thread can own signal handlers; elsewhere the
context manager does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def exit_code(e: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean stop; the clean-up is not interrupted again
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
