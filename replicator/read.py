"""Reading from the source, inside one read snapshot: ordered change streams that page by
`(version, key)` positions, tombstones, keys still alive, and the rows of held keys.

Each row read carries its mapped target columns followed by its source key, so the reader can
tell where it stands after any page without a second query."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.compiler import SQLCompiler

from replicator.backends import Backend
from replicator.backends.base import ORIGIN_COLUMN, Row, chunks, key_chunk
from replicator.errors import PermanentError
from replicator.position import Position
from replicator.transform import TablePlan


@dataclass(frozen=True)
class Tomb:
    id: int
    version: int
    source_key: Row  # Python values of the source key


@dataclass(frozen=True)
class Current:
    """The current source row of a held key."""

    row: Row  # mapped target columns
    source_key: Row
    version: int | None
    wanted: bool  # passes the row filter and is not an echo of the target's own write


class Reader:
    def __init__(self, source: Backend, target_node: str, page_rows: int, same_kind: bool):
        self.source = source
        self.target_node = target_node
        self.page_rows = page_rows
        self.same_kind = same_kind
        self._probes: dict[tuple[str, ...], SQLCompiler] = {}  # see `active`

    def as_text(self, plan: TablePlan, compares: bool) -> bool:
        """Values may stay text when the target parses the same text (same kind of database)
        and the apply never compares them in Python (keep_target and fenced tables do)."""
        return self.same_kind and not compares and plan.conflict.rule != "keep_target"

    def _not_echo(self, plan: TablePlan) -> sa.ColumnElement[bool]:
        origin = plan.source.c[ORIGIN_COLUMN]
        return sa.or_(origin.is_(None), origin != self.target_node)

    def _after(self, plan: TablePlan, pos: Position) -> sa.ColumnElement[bool]:
        if pos.key is None:
            return plan.version > pos.version
        key = plan.source_codec.from_text(pos.key)
        cols = plan.source_key
        values = [sa.literal(v, type_=c.type) for v, c in zip(key, cols, strict=True)]
        return sa.tuple_(plan.version, *cols) > sa.tuple_(
            sa.literal(pos.version, type_=plan.version.type), *values
        )

    def _tombs_after(self, plan: TablePlan, pos: Position) -> sa.Select[Any]:
        tomb = self.source.ct.tombstone.c
        after = sa.or_(
            tomb.version > pos.version, sa.and_(tomb.version == pos.version, tomb.id > pos.tie)
        )
        return sa.select(tomb.id, tomb.version, tomb.key).where(
            tomb.table_name == plan.mapping.source,
            after,
            sa.or_(tomb.origin.is_(None), tomb.origin != self.target_node),
        )

    # --- streams ---------------------------------------------------------------------------
    def rows(
        self, conn: Connection, plan: TablePlan, after: Position, upto: int, compares: bool
    ) -> Iterator[Sequence[Row]]:
        """Pages of changed rows after `after` with versions <= `upto`, in (version, key)
        order; each row is the mapped columns, then the source key, then the version."""
        stmt = (
            sa.select(*plan.keyed_select, plan.version.label("repl_pos_version"))
            .where(self._after(plan, after), plan.version <= upto, self._not_echo(plan))
            .where(*plan.filters)
            .order_by(plan.version, *plan.source_key)
        )
        try:
            yield from self.source.stream(conn, stmt, self.page_rows, self.as_text(plan, compares))
        except (ValueError, TypeError) as exc:  # a stored value the driver cannot convert
            raise PermanentError(
                f"{self.source.display_url}: table {plan.mapping.source!r}: a value could not "
                f"be read ({exc}); correct that row at the source"
            ) from exc

    def copy_select(
        self, plan: TablePlan, after: Position, upto: int, end: Position | None = None
    ) -> sa.Select[Any]:
        """The mapped columns of the changed rows after `after` with versions <= `upto` (and
        at or before the position `end`), in no order: what one COPY stream carries."""
        stmt = (
            sa.select(*plan.select)
            .where(self._after(plan, after), plan.version <= upto, self._not_echo(plan))
            .where(*plan.filters)
        )
        if end is not None:
            stmt = stmt.where(sa.not_(self._after(plan, end)))
        return stmt

    def page_end(
        self, conn: Connection, plan: TablePlan, after: Position, upto: int, rows: int
    ) -> Position | None:
        """The position of the `rows`-th changed row after `after` (an index probe), or None
        when fewer are left: where one short commit of COPY streams ends."""
        stmt = (
            sa.select(plan.version, *plan.source_key)
            .where(self._after(plan, after), plan.version <= upto, self._not_echo(plan))
            .where(*plan.filters)
            .order_by(plan.version, *plan.source_key)
            .offset(rows - 1)
            .limit(1)
        )
        row = conn.execute(stmt).first()
        if row is None:
            return None
        return Position(int(row[0]), plan.source_codec.text(tuple(row[1:])))

    def tombstones(
        self, conn: Connection, plan: TablePlan, after: Position, upto: int
    ) -> Iterator[list[Tomb]]:
        """Pages of the table's tombstones after `after` with versions <= `upto`."""
        tomb = self.source.ct.tombstone.c
        stmt = (
            self._tombs_after(plan, after)
            .where(tomb.version <= upto)
            .order_by(tomb.version, tomb.id)
        )
        for page in self.source.stream(conn, stmt, self.page_rows):
            yield [Tomb(int(i), int(v), plan.source_codec.from_text(k)) for i, v, k in page]

    def alive(self, conn: Connection, plan: TablePlan, keys: Sequence[Row]) -> set[str]:
        """Canonical texts of the source keys that exist at the source (deleted and inserted
        again: the row stream carries them, they must not be deleted)."""
        out: set[str] = set()
        width = len(plan.source_key)
        size = key_chunk(self.source.capabilities.max_bind_params, width)
        for part in chunks(list(keys), size):
            found = conn.execute(
                sa.select(*plan.source_key).where(
                    sa.tuple_(*plan.source_key).in_([tuple(k) for k in part])
                )
            )
            out.update(plan.source_codec.text(r) for r in found)
        return out

    def current(self, conn: Connection, plan: TablePlan, keys: Sequence[Row]) -> list[Current]:
        """The current source rows of held keys, looked up by the source key (an index)."""
        wanted = sa.case((sa.and_(self._not_echo(plan), *plan.filters), 1), else_=0)
        n = plan.width
        width = len(plan.source_key)
        out = []
        size = key_chunk(self.source.capabilities.max_bind_params // 2, width)
        for part in chunks(list(keys), size):
            stmt = sa.select(*plan.keyed_select, plan.version, wanted).where(
                sa.tuple_(*plan.source_key).in_([tuple(k) for k in part])
            )
            for r in conn.execute(stmt):
                version = r[-2]
                out.append(
                    Current(
                        tuple(r[:n]),
                        tuple(r[n : n + width]),
                        int(version) if version is not None else None,
                        bool(r[-1]),
                    )
                )
        return out

    # --- planning --------------------------------------------------------------------------
    def version_cut(
        self,
        conn: Connection,
        plans: Sequence[TablePlan],
        rows_after: dict[str, Position],
        tombs_after: dict[str, Position],
        bound: int,
        batch_rows: int,
    ) -> int:
        """The end of an atomic batch at a version boundary: `bound`, or lower so that no
        table brings much more than batch_rows changes; at least one whole version."""
        cut = bound
        for plan in plans:
            probes = [
                sa.select(plan.version.label("v"))
                .where(self._after(plan, rows_after[plan.label]), plan.version <= bound)
                .order_by(plan.version, *plan.source_key)
                .limit(batch_rows)
            ]
            if plan.deletes:
                tomb = self.source.ct.tombstone.c
                probes.append(
                    self._tombs_after(plan, tombs_after[plan.label])
                    .with_only_columns(tomb.version.label("v"))
                    .where(tomb.version <= bound)
                    .order_by(tomb.version, tomb.id)
                    .limit(batch_rows)
                )
            for probe in probes:
                sub = probe.subquery()
                count, last = conn.execute(sa.select(sa.func.count(), sa.func.max(sub.c.v))).one()
                if count >= batch_rows:
                    cut = min(cut, int(last))
        return cut

    def active(
        self,
        conn: Connection,
        plans: Sequence[TablePlan],
        rows_after: dict[str, Position],
        tombs_after: dict[str, Position],
        bound: int,
    ) -> list[TablePlan]:
        """The tables with changes at or below `bound`: one round trip for all of them where
        the dialect takes a SELECT of EXISTS columns (an idle cycle costs one query, not one
        or two per table), else one probe per table. The statement is built once per set
        of tables, with parameters (built afresh each cycle it cost more than the query).

        A position inside a version (a key) probes the whole version: at worst a table is
        taken as active when it is not, and its batch finds nothing and ends the version."""
        if self.source.dialect not in {"postgresql", "sqlite"} or len(plans) < 2:
            return [
                p
                for p in plans
                if self.has_changes(conn, p, rows_after[p.label], tombs_after[p.label], bound)
            ]
        labels = tuple(p.label for p in plans)
        compiled = self._probes.get(labels)
        if compiled is None:
            compiled = self._probe(plans).compile(dialect=conn.dialect)
            assert isinstance(compiled, SQLCompiler)
            self._probes[labels] = compiled
        params: dict[str, Any] = {**compiled.params, "bound": bound, "node": self.target_node}
        for i, plan in enumerate(plans):
            rows, tombs = rows_after[plan.label], tombs_after[plan.label]
            params[f"v{i}"] = rows.version - (1 if rows.key is not None else 0)
            params[f"tv{i}"], params[f"tid{i}"] = tombs.version, tombs.tie
            params[f"n{i}"] = plan.mapping.source
        # compiled once: the driver gets the SQL text and plain values (ints and strings)
        args: Any = (
            tuple(params[name] for name in compiled.positiontup or ())
            if compiled.positional
            else params
        )
        row = conn.exec_driver_sql(compiled.string, args).one()
        return [plan for plan, hit in zip(plans, row, strict=True) if hit]

    def _probe(self, plans: Sequence[TablePlan]) -> sa.Select[Any]:
        tomb = self.source.ct.tombstone.c
        bound = sa.bindparam("bound", type_=sa.BigInteger)
        node = sa.bindparam("node", type_=sa.String)
        columns = []
        for i, plan in enumerate(plans):
            found: sa.ColumnElement[bool] = (
                sa.select(sa.literal(1))
                .where(plan.version > sa.bindparam(f"v{i}", type_=sa.BigInteger))
                .where(plan.version <= bound)
                .exists()
            )
            if plan.deletes:
                tv = sa.bindparam(f"tv{i}", type_=sa.BigInteger)
                tombs = (
                    sa.select(sa.literal(1))
                    .where(
                        tomb.table_name == sa.bindparam(f"n{i}", type_=sa.String),
                        sa.or_(
                            tomb.version > tv,
                            sa.and_(
                                tomb.version == tv,
                                tomb.id > sa.bindparam(f"tid{i}", type_=sa.BigInteger),
                            ),
                        ),
                        tomb.version <= bound,
                        sa.or_(tomb.origin.is_(None), tomb.origin != node),
                    )
                    .exists()
                )
                found = sa.or_(found, tombs)
            columns.append(sa.case((found, 1), else_=0).label(f"t{i}"))
        return sa.select(*columns)

    def has_changes(
        self,
        conn: Connection,
        plan: TablePlan,
        rows_after: Position,
        tombs_after: Position,
        bound: int,
    ) -> bool:
        probe = sa.select(sa.literal(1)).where(self._after(plan, rows_after), plan.version <= bound)
        if conn.execute(probe.limit(1)).first() is not None:
            return True
        if plan.deletes:
            tomb = self.source.ct.tombstone.c
            stmt = self._tombs_after(plan, tombs_after).where(tomb.version <= bound).limit(1)
            return conn.execute(stmt).first() is not None
        return False

    def pending(
        self,
        conn: Connection,
        plan: TablePlan,
        rows_after: Position,
        tombs_after: Position,
        cap: int,
    ) -> int:
        """Changes this job would still send for one table (counted up to cap each)."""
        probes: list[sa.Select[Any]] = [
            sa.select(plan.version).where(
                self._after(plan, rows_after), self._not_echo(plan), *plan.filters
            )
        ]
        if plan.deletes:
            probes.append(self._tombs_after(plan, tombs_after))
        return sum(
            int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(p.limit(cap).subquery())
                ).scalar()
                or 0
            )
            for p in probes
        )
