"""Ctrl-C as the outer loop and the refit handle it: held while a step cannot be cut
short, counted where a library swallows it."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class InterruptGate:
    """SIGINT raises ``KeyboardInterrupt`` only while the gate is open; while closed (a
    checkpoint, a rollback, a commit) it is held and raised when the gate opens again.

    Installed for a run in the main thread over a callable SIGINT handler, which it
    calls (with the frame the signal landed in) in its place; elsewhere (another
    thread, SIGINT ignored) it installs nothing and ``open``/``close`` only keep the flag.
    ``seen`` counts the signals that arrived, so that a caller can tell a run that a
    library swallowed the ``KeyboardInterrupt`` of (skorch's ``fit`` does) from one
    that ended by itself: :meth:`watch`.
    """

    def __init__(self):
        self.is_open, self.held, self.previous, self.seen = True, None, None, 0

    @classmethod
    @contextmanager
    def watch(cls):
        """Run the block with a gate installed (always open); yields the gate, whose
        ``seen`` says afterwards whether a Ctrl-C arrived."""
        gate = cls()
        gate.install()
        try:
            yield gate
        finally:
            gate.uninstall()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if callable(previous):
            self.previous = previous
            signal.signal(signal.SIGINT, self._handler)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _handler(self, signum, frame):
        self.seen += 1
        if not self.is_open:
            self.held = (signum, frame)
            return
        # Closed at once: the rollback that the exception triggers must not be cut short.
        self.is_open = False
        self.previous(signum, frame)
        self.is_open = True  # the caller's handler did not raise: carry on

    def close(self) -> None:
        self.is_open = False

    def open(self) -> None:
        """Open; a SIGINT held while closed is delivered now."""
        self.is_open = True
        if self.held is not None:
            held, self.held = self.held, None
            self.seen -= 1  # counted when it was held
            self._handler(*held)
