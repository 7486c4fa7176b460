"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM without losing it.

During ``fit`` the first such signal only asks the Trainer to stop: the current step
finishes, a checkpoint of it is written, logs are flushed and the progress bar closed,
and ``fit`` returns with ``trainer.interrupted`` set. The handlers that were there
before are put back at that moment, so a second signal acts at once (Ctrl-C raises
KeyboardInterrupt, SIGTERM terminates); checkpoints already on disk stay intact,
because orbax publishes a checkpoint only once it is complete.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager: call ``request_stop(signal)`` on the first SIGINT/SIGTERM inside it.

    Signal handlers can only be set from the main thread; elsewhere it does nothing. A
    signal the process ignores (a job started with ``nohup`` ignores SIGINT) stays ignored.
    """

    def __init__(self, request_stop: Callable[[signal.Signals], None]):
        self._request_stop = request_stop
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal (nohup) stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _handle(self, signum: int, frame) -> None:
        self._restore()  # the next signal gets the old behaviour: immediate
        self._request_stop(signal.Signals(signum))

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
