"""Server-Sent Events (`text/event-stream`) read line by line, as the WHATWG HTML standard's
"event stream interpretation" says. By hand: httpx streams lines but has no SSE parser, and the
format is these few rules."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: its type (`message` when the stream names none), data, last id, retry."""

    event: str
    data: str
    id: str
    retry_ms: int | None = None


class EventParser:
    """Turns a stream's lines (without their line ends) into events, one line at a time."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None

    @property
    def last_id(self) -> str:
        """The last event id seen: sent back as `Last-Event-ID` when reconnecting."""
        return self._last_id

    @property
    def retry_ms(self) -> int | None:
        """The reconnection time the stream asked for, in milliseconds."""
        return self._retry

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line; the event it completes, if it is the blank line that ends one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment (servers send them to keep the connection alive)
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None  # any other field is ignored, as the standard says

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:  # a blank line with no data before it dispatches nothing
            return None
        return ServerSentEvent(event, "\n".join(data), self._last_id, self._retry)


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """The events of a whole stream; an event left without its blank line at the end is dropped."""
    parser = EventParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
