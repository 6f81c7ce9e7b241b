"""What every replay source shares: the :class:`EventSource` and :class:`SourceReader`
protocols, record origins, the replay error, and the Kafka key of a raw event.

A source yields ``(key, value, origin)`` in a fixed order, so a run can stop anywhere and a
later run resume after the same record. ``value`` is the raw wire-format event, untouched
(a bad one is dead-lettered downstream, never here); ``key`` is the Kafka key, for files
the event's user id (:func:`user_key`), as the importers and the generator key them. Every
source can say how far a reader got (:meth:`SourceReader.position`, JSON) and start a
reader there. Implementations: :mod:`streams.replay.files` and
:mod:`streams.replay.kafka_range`; :func:`streams.replay.sources.open_source` picks one by
name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol, Self

from streams.contracts.deadletters import SourceRef
from streams.contracts.events import EventError, loads

Origin = tuple[int, int]  # (file index, line or row) or (partition, offset)


class ReplayError(RuntimeError):
    """A replay that cannot start or go on; the message says why and what to do."""


def user_key(value: bytes) -> bytes | None:
    """The Kafka key of a raw event: its ``user_id`` as ``streams.contracts.events.event_key`` gives
    it (an integer id as its decimal string, a leading byte-order mark ignored: the contract's
    own parse); None when the bytes do not say."""
    try:
        obj = loads(value)
    except EventError:
        return None
    if not isinstance(obj, dict):
        return None
    user = obj.get("user_id")
    if isinstance(user, str):
        return user.encode()
    if isinstance(user, int) and not isinstance(user, bool):
        return str(user).encode()
    return None


class SourceReader(Protocol):
    """One pass over a source from a position; iterate once, then close."""

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes, Origin]]: ...

    def position(self) -> dict[str, Any]:
        """Where a reader opened later resumes: just after the last record yielded."""
        ...

    def done(self) -> int:
        """Progress units behind the reader (the source's ``unit``), from the very start."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class EventSource(Protocol):
    """Where replayed events come from (files, a Kafka topic range)."""

    name: str  # for messages: "events.jsonl", "kafka:lum.events"
    unit: str  # progress unit: "lines" or "records"

    def key(self) -> str:
        """A stable name of what was asked for (names the default checkpoint file)."""
        ...

    def identity(self) -> dict[str, Any]:
        """JSON that a resumed run must match; stored with checkpoints and stores."""
        ...

    def adopt(self, stored: Mapping[str, Any]) -> None:
        """Check that ``stored`` (an earlier :meth:`identity`) is this source and take over
        what it pinned (a Kafka range's offsets); ReplayError when it is another source."""
        ...

    def total(self) -> int:
        """Progress units in the whole source (may read the source once to count)."""
        ...

    def open(self, position: Mapping[str, Any] | None) -> SourceReader:
        """A reader from ``position`` (an earlier reader's :meth:`~SourceReader.position`),
        or from the start when None."""
        ...

    def origin(self, where: Origin) -> SourceRef:
        """The dead-letter source reference of a record."""
        ...
