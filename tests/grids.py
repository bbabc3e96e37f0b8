"""Grids for tests that kill the server: fedloom's local engine with a crash."""

from __future__ import annotations

from fedloom.engine import LocalGrid


class CrashingGrid(LocalGrid):
    """The server process dying mid-run: the grid raises in round ``crash_round``."""

    def __init__(self, *args, crash_round: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.crash_round, self.calls = crash_round, 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.calls += 1
            if self.calls == self.crash_round:
                raise SystemExit("server killed")
        return super().send_and_receive(messages, timeout=timeout)
