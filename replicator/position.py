"""Positions: where a job stands in a source's ordered change stream, and what a source says
about itself (its safe read bound and its identity).

A table's row position is `(version, key)`: every change ordered before it, by version then by
source key, is applied. One version may hold a whole table (setup stamps every existing row
with one version; a store-wide price update is one transaction), so a batch can end inside a
version. A tombstone position is `(version, id)`, the tombstone's own id breaking ties.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Position:
    version: int = 0
    key: str | None = None  # canonical JSON source key; None: the whole version is done
    tie: int = 0  # tombstones: the tombstone id within the version

    def done_through(self, version: int) -> bool:
        """Whether every change with a version <= `version` is behind this position."""
        return self.version > version or (self.version == version and self.key is None)


@dataclass(frozen=True)
class Blocker:
    """The oldest open writing transaction that holds a source's bound back."""

    pid: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SourcePosition:
    """What a source says about itself, read inside one read snapshot.

    bound: every change with a version <= bound is final (committed or rolled back).
    incarnation: the identity of this database's history (created by setup, renewed when the
      replicator finds it restored from a backup or rebuilt).
    ack_seq: the last batch sequence this database was told a job is applying (see sync.py).
    gaps: versions below the bound that are still open (for sources whose versions come from
      sequences, where commit order is not version order); none for PostgreSQL and SQLite.
    """

    bound: int
    incarnation: str | None
    ack_seq: int | None
    gaps: tuple[int, ...] = field(default=())
    blocker: Blocker | None = None  # the oldest open transaction holding the bound back
