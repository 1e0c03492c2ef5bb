"""Events as JSON lines: a listener that appends them, and a reader that follows the file.

NVFlare runs the server (and so the coordinator and the run's listeners) in another
process; the driver follows ``RUN/events.jsonl`` to show progress. The file is also a plain
trace of the run for people; the signed record is the ledger.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from pharmafl.pipeline.events import Event


class JsonlEventLog:
    """Appends every event as one JSON line, flushed at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        _drop_cut_line(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def on_event(self, event: Event) -> None:
        self._fh.write(
            json.dumps(
                {"type": event.type, "actor": event.actor, "payload": event.payload}, sort_keys=True, default=str
            )
            + "\n"
        )
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _drop_cut_line(path: Path) -> None:
    """A crash can leave the file's last line half-written; a resumed run appends after the last whole one."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def read_events(path: Path) -> list[Event]:
    """Every whole line of an events file, as events (a line a crash cut short is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True) if Path(path).is_file() else ():
        if line.endswith("\n"):
            d = json.loads(line)
            out.append(Event(d["type"], d["actor"], d["payload"]))
    return out


class EventFollower(threading.Thread):
    """Reads new lines of an events file as they appear and passes them to ``deliver``."""

    def __init__(self, path: Path, deliver: Callable[[Event], None], poll: float = 0.2, start: int = 0):
        super().__init__(daemon=True)
        self.path, self.deliver, self.poll = Path(path), deliver, poll
        self._halt = threading.Event()
        self._offset = start  # a resumed run: only what this session appends

    def run(self) -> None:
        while not self._halt.wait(self.poll):
            self.drain()

    def drain(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            fh.seek(self._offset)
            while True:
                line = fh.readline()
                if not line.endswith("\n"):
                    break  # incomplete line: read it next time
                self._offset = fh.tell()
                d = json.loads(line)
                self.deliver(Event(d["type"], d["actor"], d["payload"]))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.drain()
