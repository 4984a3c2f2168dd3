"""Compare one table of one job by bucket checksums, then repair what differs.

A single integer key: the span between both sides' smallest and largest keys is cut by value
into chunks of about `value_rows` rows, and each chunk into equal buckets, the same cut on
both sides whatever rows each holds (one query per side and chunk: `GROUP BY` the bucket).
Other keys: chunk bounds are source key values found by a keyset walk (`key > last ORDER BY
key OFFSET step-1 LIMIT 1`), never positions in a string collation (text key columns compare
in code point order on every side: `COLLATE "C"` on PostgreSQL, SQLite's BINARY, UTF-8
bytes on MariaDB, UTF8 on Firebird), and buckets are runs of `leaf_rows` numbered rows. Both
sides compute `(count, sum of row hashes)` per bucket at the same time (two threads;
`resync_side`, `resync_hash`; inside the database, or streamed and hashed here for Firebird:
`resync_stream`). A differing bucket of many rows is cut again; with PostgreSQL on both sides,
differing buckets are cut into sub-buckets in one query; what still differs is compared by
`(key, row hash)` pairs, and only the rows whose hashes differ are fetched whole and compared
in Python, the judge. Memory stays bounded by BATCH_ROWS whatever the table size.

Repairs go through the one apply path (`Applier.upserts` / `Applier.deletes`) inside
`Backend.write(job)`, which holds the job's lock: the current source rows are read again
under that lock, so a resync never writes a row older than what incremental sync already
applied. Positions are not moved: upserts are idempotent, and a change made meanwhile is
read again by the next incremental sync, the newer version winning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from replicator.apply import TableRound
from replicator.backends.base import chunks
from replicator.errors import BusyError, PermanentError
from replicator.quarantine import Budget, TableStopped
from replicator.resync_drift import record
from replicator.resync_hash import HashKind, canonical_row, field_specs
from replicator.resync_side import Checksum, Key, Side
from replicator.sync import JobRunner
from replicator.transform import TablePlan

CHUNK_ROWS = 10_000  # rows per top-level chunk (keys walked in order)
VALUE_CHUNK_ROWS = 1_000_000  # rows per top-level chunk of a single integer key (cut by value)
LEAF_ROWS = 50  # rows per bucket: a differing bucket is compared by per-row hashes
SPLIT_ROWS = 4 * LEAF_ROWS  # a differing value bucket with more rows is cut again
BATCH_ROWS = 20_000  # rows of differing buckets compared at a time (memory)
NARROW_BATCH_ROWS = 50_000  # the same when sub-buckets leave about a tenth of them
SUB_PARTS = 10  # sub-buckets per differing bucket (both sides PostgreSQL, one integer key)
REPAIR_ROWS = 500  # keys per repair transaction (fewer on a register: see _paced)
SAMPLES = 20  # differences kept per table for the report
LOCK_WAIT = 60.0  # seconds to wait for the job's lock (a running sync) before giving up


@dataclass
class TableReport:
    job: str
    table: str
    rows: int = 0  # source rows compared
    target_rows: int = 0
    chunks: int = 0
    fetched: int = 0  # whole rows downloaded to compare (both sides)
    hashes: int = 0  # (key, row hash) pairs downloaded (both sides)
    missing: int = 0  # on the target
    extra: int = 0  # on the target only
    different: int = 0
    repaired: int = 0  # rows written
    deleted: int = 0  # extra rows deleted (or marked)
    held: int = 0  # rows the target refused (quarantined) or kept (conflicts)
    samples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.different

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "table": self.table,
            "rows_compared": self.rows,
            "target_rows": self.target_rows,
            "chunks": self.chunks,
            "rows_fetched": self.fetched,
            "hashes_fetched": self.hashes,
            "missing_on_target": self.missing,
            "extra_on_target": self.extra,
            "different": self.different,
            "repaired": self.repaired,
            "deleted": self.deleted,
            "held": self.held,
            "samples": self.samples,
            "error": self.error,
        }


Run = tuple[Key | None, Key | None, int]  # the keys (lo, hi] of differing buckets, their rows


@dataclass
class _Leaf:
    upsert: list[Key] = field(default_factory=list)  # source keys
    delete: list[tuple[Key, Key]] = field(default_factory=list)  # (target key, source key)


class TableResync:
    """Compare (and unless dry_run, repair) one table of one job."""

    def __init__(
        self,
        runner: JobRunner,
        plan: TablePlan,
        *,
        dry_run: bool,
        delete_extra: bool,
        progress: Callable[[TableReport, int], None] | None = None,
        chunk_rows: int | None = None,
        leaf_rows: int = LEAF_ROWS,
        hash_kind: HashKind | None = None,
    ) -> None:
        self.r = runner
        self.plan = plan
        self.dry_run = dry_run
        self.delete = delete_extra or plan.deletes
        self.progress = progress
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self.value_rows = chunk_rows or VALUE_CHUNK_ROWS
        self.leaf_rows = leaf_rows
        self.hash_kind = hash_kind
        self.report = TableReport(runner.job.name, plan.label)
        self.round = TableRound(plan, Budget(plan.label, runner.target.bisect_seconds))
        self._build()

    # --- setting up both sides ------------------------------------------------------------
    def _build(self) -> None:
        plan = self.plan
        zone = self.r.target.timezone or "UTC"
        specs = field_specs(plan.target, plan.columns, zone)
        # per source key column: the target key column it becomes
        self.range_target: list[str] = []
        for i, name in enumerate(plan.mapping.key):
            found = [
                k for k, src in zip(plan.target_key, plan.key_from_source, strict=True) if src == i
            ]
            if not found:
                raise PermanentError(
                    f"table {plan.label!r}: key column {name!r} does not reach the target key "
                    f"{plan.target_key}; resync compares rows by it: add it to target_key"
                )
            self.range_target.append(found[0])
        key_specs = [specs[plan.columns.index(k)] for k in self.range_target]
        restrict = [
            plan.target.c[k] == v
            for k, i, v in zip(
                plan.target_key, plan.key_from_source, plan.key_constants, strict=True
            )
            if i is None
        ]
        if plan.soft_delete:  # a row marked deleted is not there for the comparison
            restrict.append(plan.target.c[plan.soft_delete].is_distinct_from(sa.true()))
        self.source = Side(
            self.r.source,
            plan.source,
            plan.select,
            plan.filters,
            plan.source_key,
            specs,
            key_specs,
            extra=[c.label(f"repl_key_{i}") for i, c in enumerate(plan.source_key)],
            hash_kind=self._hash_kind(),
        )
        self.target = Side(
            self.r.target,
            plan.target,
            [plan.target.c[c] for c in plan.columns],
            restrict,
            [plan.target.c[k] for k in self.range_target],
            specs,
            key_specs,
            extra=[plan.target.c[k] for k in plan.target_key],
            hash_kind=self.source.hash_kind,
        )
        self._range_index = [plan.columns.index(k) for k in self.range_target]
        self._integer_key = all(
            len(side.range_cols) == 1
            and isinstance(side.range_cols[0].type, sa.Integer)
            and not isinstance(side.range_cols[0].type, sa.Boolean)
            for side in (self.source, self.target)
        )

    def _hash_kind(self) -> HashKind:
        """`pg` (hashtextextended of the row text) when both sides are PostgreSQL databases
        of one encoding (the same text is the same bytes on both), else the portable `md5`."""
        source, target = self.r.source, self.r.target
        if source.dialect != "postgresql" or target.dialect != "postgresql":
            return "md5"
        if self.hash_kind is not None:  # asked for (tests, benchmarks)
            return self.hash_kind
        found = set()
        for backend in (source, target):
            with backend.engine.connect() as conn:
                encoding, version = conn.execute(
                    sa.text(
                        "SELECT current_setting('server_encoding'), "
                        "current_setting('server_version_num')::int"
                    )
                ).one()
            if version < 110000:  # no hashtextextended
                return "md5"
            found.add(encoding)
        return "pg" if len(found) == 1 else "md5"

    # --- the walk ----------------------------------------------------------------------------
    def run(self) -> TableReport:
        rep = self.report
        pool = ThreadPoolExecutor(3, thread_name_prefix="resync")
        try:
            if not (self._integer_key and self._by_value(pool)):
                self._walk(pool)
            if not self.dry_run:  # every row now follows the current mapping
                self._locked(lambda conn: record(self.r.target, conn, self.r.job.name, self.plan))
        except TableStopped as exc:
            rep.error = str(exc)
        except sa_exc.SQLAlchemyError as exc:
            raise self.r.target.classify(exc) from exc
        finally:
            pool.shutdown()
        return rep

    def _by_value(self, pool: ThreadPoolExecutor) -> bool:
        """A single integer key: (min - 1, max] of both sides cut by value into chunks of
        about `value_rows` rows, one bucket query per side and chunk (False: the key span is
        too wide for bucket arithmetic in 64 bits; the keys are walked instead)."""
        (slo, shi, sn), (tlo, thi, tn) = self._both(pool, "extent")
        lows = [v for v in (slo, tlo) if v is not None]
        highs = [v for v in (shi, thi) if v is not None]
        if not lows:
            return True  # both sides empty
        lo, hi, rows = min(lows) - 1, max(highs), max(sn, tn)
        span, parts = hi - lo, max(1, (rows + self.value_rows // 2) // self.value_rows)
        buckets = max(1, self.value_rows // self.leaf_rows)
        if lo < -(2**62) or hi > 2**62 or span // parts * (buckets + 1) >= 2**62:
            return False
        for i in range(parts):
            self._value_chunk(pool, lo + i * span // parts, lo + (i + 1) * span // parts)
        return True

    def _walk(self, pool: ThreadPoolExecutor) -> None:
        """Chunks of `chunk_rows` source keys in key order, bounds walked ahead."""
        lo: Key | None = None
        ahead = pool.submit(self.source.next_bound, None, None, self.chunk_rows)
        while True:
            hi = ahead.result()
            if hi is not None:  # the next bound is walked while this chunk is compared
                ahead = pool.submit(self.source.next_bound, hi, None, self.chunk_rows)
            self._chunk(pool, lo, hi)
            if hi is None:
                break
            lo = hi

    def _both(self, pool: ThreadPoolExecutor, name: str, *args: Any) -> tuple[Any, Any]:
        """The same question to both databases at once."""
        there = pool.submit(getattr(self.target, name), *args)
        here = pool.submit(getattr(self.source, name), *args)
        return here.result(), there.result()

    def _chunk(self, pool: ThreadPoolExecutor, lo: Key | None, hi: Key | None) -> None:
        """Bucket checksums of (lo, hi] on both sides; the runs of differing buckets are
        compared by per-row hashes."""
        if self._integer_key and lo is not None and hi is not None:
            span = int(hi[0]) - int(lo[0])
            if 0 < span < 2**62 // (self.chunk_rows + 1):
                self._value_chunk(pool, int(lo[0]), int(hi[0]))
                return
        rep = self.report
        (ss, sraw, sk), (ts, _, tk) = self._both(pool, "buckets", lo, hi, self.leaf_rows)
        rep.chunks += 1
        n = max(len(ss), len(ts))

        def end_agrees(j: int) -> bool:  # the last key of bucket j, on both sides
            return (sk[j] if j < len(sk) else None) == (tk[j] if j < len(tk) else None)

        same = [
            j < len(ss)
            and j < len(ts)
            and ss[j] == ts[j]
            and (j == 0 or end_agrees(j - 1))
            and end_agrees(j)
            for j in range(n)
        ]
        j, runs = 0, list[Run]()
        while j < n:
            if same[j]:
                j += 1
                continue
            first = j
            while j < n and not same[j]:
                j += 1
            # the keys around a run agree on both sides (its neighbours are equal buckets)
            rows = sum(
                max(c[k].count if k < len(c) else 0 for c in (ss, ts)) for k in range(first, j)
            )
            runs.append(
                (lo if first == 0 else sraw[first - 1], hi if j == n else sraw[j - 1], rows)
            )
        if runs:
            self._leaf(pool, runs)
        rep.rows += sum(c.count for c in ss)
        rep.target_rows += sum(c.count for c in ts)
        self._tick(sum(c.count for c in ss))

    def _value_chunk(self, pool: ThreadPoolExecutor, lo: int, hi: int) -> None:
        """An integer key: buckets cut by key value, the same on both sides (no row numbers to
        compute, and a missing row changes its own bucket only)."""
        rep = self.report
        ss, ts = self._both(pool, "value_buckets", lo, hi, self._buckets(lo, hi))
        rep.chunks += 1
        runs = self._differing(pool, lo, hi, ss, ts)
        if runs:
            self._leaf(pool, runs)
        rep.rows += sum(c.count for c in ss.values())
        rep.target_rows += sum(c.count for c in ts.values())
        self._tick(sum(c.count for c in ss.values()))

    def _buckets(self, lo: int, hi: int) -> int:
        return max(1, min(hi - lo, self.value_rows // self.leaf_rows))

    def _differing(
        self,
        pool: ThreadPoolExecutor,
        lo: int,
        hi: int,
        ss: dict[int, Checksum],
        ts: dict[int, Checksum],
    ) -> list[Run]:
        """The key ranges (lo, hi] of the runs of differing buckets, with their row counts; a
        differing bucket of more than SPLIT_ROWS rows (keys bunched in a part of the span) is
        cut again."""
        count, span = self._buckets(lo, hi), hi - lo

        def edge(j: int) -> int:  # bucket j holds the keys (edge(j), edge(j + 1)]
            return lo + -(-j * span // count)

        runs: list[Run] = []
        for j in sorted(set(ss) | set(ts)):
            mine, theirs = ss.get(j), ts.get(j)
            if mine == theirs:
                continue
            a, b = edge(j), edge(j + 1)
            rows = max(mine.count if mine else 0, theirs.count if theirs else 0)
            if rows > SPLIT_ROWS and b - a > 1:
                inner = self._both(pool, "value_buckets", a, b, self._buckets(a, b))
                runs.extend(self._differing(pool, a, b, *inner))
            elif runs and runs[-1][1] == (a,) and runs[-1][2] + rows <= SPLIT_ROWS:
                runs[-1] = (runs[-1][0], (b,), runs[-1][2] + rows)  # neighbours, still small
            else:
                runs.append(((a,), (b,), rows))
        return runs

    def _tick(self, rows: int) -> None:
        if self.progress is not None:
            self.progress(self.report, rows)

    # --- the runs of differing buckets of a chunk: row hashes, then rows --------------------
    def _leaf(self, pool: ThreadPoolExecutor, runs: list[Run]) -> None:
        """Runs compared in batches of at most `max_ranges` ranges (one query per side) and
        about BATCH_ROWS rows (NARROW_BATCH_ROWS when cut into sub-buckets first): memory
        stays bounded whatever the chunk size."""
        most = min(self.source.max_ranges, self.target.max_ranges)
        narrow = self.source.sub_buckets and self.target.sub_buckets
        limit = NARROW_BATCH_ROWS if narrow else BATCH_ROWS
        batch: list[tuple[Key | None, Key | None]] = []
        rows = 0
        for lo, hi, n in runs:
            if batch and (len(batch) >= most or rows + n > limit):
                self._ranges(pool, batch)
                batch, rows = [], 0
            batch.append((lo, hi))
            rows += n
        if batch:
            self._ranges(pool, batch)

    def _narrow(
        self, pool: ThreadPoolExecutor, runs: list[tuple[Key | None, Key | None]]
    ) -> list[tuple[Key | None, Key | None]]:
        """Both sides PostgreSQL with one integer key: each run cut by value into SUB_PARTS
        sub-buckets, all of them in one query per side; only the sub-buckets that differ
        are compared by (key, row hash) pairs (a tenth of the pairs for a row changed here
        and there)."""
        spans = [(int(lo[0]), int(hi[0])) for lo, hi in runs if lo is not None and hi is not None]
        if len(spans) < len(runs):
            return runs
        ss, ts = self._both(pool, "span_buckets", spans, SUB_PARTS)
        out: list[tuple[Key | None, Key | None]] = []
        for i, (lo, hi) in enumerate(spans):
            span = hi - lo
            parts = min(SUB_PARTS, span)
            for j in range(parts):
                if ss.get((i, j)) == ts.get((i, j)):
                    continue
                a, b = lo + -(-j * span // parts), lo + -(-(j + 1) * span // parts)
                if out and out[-1][1] == (a,):
                    out[-1] = (out[-1][0], (b,))
                else:
                    out.append(((a,), (b,)))
        return out

    def _ranges(self, pool: ThreadPoolExecutor, runs: list[tuple[Key | None, Key | None]]) -> None:
        plan, rep = self.plan, self.report
        if self.source.sub_buckets and self.target.sub_buckets:
            runs = self._narrow(pool, runs)
            if not runs:
                return
        src, tgt = self._both(pool, "hashes", runs)
        rep.hashes += len(src) + len(tgt)
        wanted = {self.source.key_text(k): (h, skey) for k, skey, h in src}
        todo = _Leaf()
        suspects: list[tuple[Key, Key]] = []  # (source key, target range key)
        for rkey, tkey, h in tgt:
            mine = wanted.pop(self.target.key_text(rkey), None)
            if mine is None:
                rep.extra += 1
                self._sample("extra", plan.target_codec.text(tkey), None)
                todo.delete.append((tkey, rkey))
            elif mine[0] != h:
                suspects.append((mine[1], rkey))
        for _, skey in wanted.values():
            rep.missing += 1
            self._sample("missing", plan.source_codec.text(skey), None)
            todo.upsert.append(skey)
        for part in chunks(suspects, REPAIR_ROWS):
            self._rows(pool, list(part), todo)
        self._repair(todo)

    def _rows(self, pool: ThreadPoolExecutor, keys: list[tuple[Key, Key]], todo: _Leaf) -> None:
        """Rows whose hashes differ, fetched and compared in Python (the judge when the two
        databases' texts of some exotic value disagree)."""
        plan, rep, n = self.plan, self.report, self.plan.width
        theirs_f = pool.submit(self.target.rows_of, [r for _, r in keys])
        mine = self.source.rows_of([s for s, _ in keys])
        theirs = theirs_f.result()
        rep.fetched += len(mine) + len(theirs)
        there = {self.target.key_text([row[i] for i in self._range_index]): row for row in theirs}
        for row in mine:
            skey = tuple(row[n:])
            other = there.get(self.source.key_text(skey))
            a = canonical_row(self.source.specs, row[:n], self.source.zone)
            if other is None:  # deleted at the target meanwhile
                rep.missing += 1
                self._sample("missing", plan.source_codec.text(skey), None)
                todo.upsert.append(skey)
                continue
            b = canonical_row(self.target.specs, other[:n], self.target.zone)
            if a != b:
                rep.different += 1
                cols = [c for c, x, y in zip(plan.columns, a, b, strict=True) if x != y]
                self._sample("different", plan.target_key_text(tuple(other[:n])), cols)
                todo.upsert.append(skey)

    def _sample(self, what: str, key: str, columns: list[str] | None) -> None:
        if len(self.report.samples) < SAMPLES:
            item: dict[str, Any] = {"kind": what, "key": key}
            if columns is not None:
                item["columns"] = columns
            self.report.samples.append(item)

    # --- repairs ---------------------------------------------------------------------------------
    def _repair(self, todo: _Leaf) -> None:
        if self.dry_run:
            return
        for part in chunks(todo.upsert, REPAIR_ROWS):
            self._paced(list(part), self._upsert)
        if self.delete and todo.delete:
            for part in chunks(todo.delete, REPAIR_ROWS):
                self._paced(list(part), self._delete)

    def _paced(self, items: list[Any], fn: Callable[[Connection, list[Any]], None]) -> None:
        """Short target transactions: on a register, at most about write_hold_seconds each,
        then the pause a waiting sale needs (the same pacing as incremental sync)."""
        target = self.r.target
        hold = target.write_hold_seconds
        size = len(items) if hold is None else min(len(items), 100)
        start = 0
        while start < len(items):
            part = items[start : start + size]

            def step(conn: Connection, part: list[Any] = part) -> None:
                fn(conn, part)

            held = self._locked(step)
            start += len(part)
            if hold is not None:
                factor = min(1.5, max(0.25, hold * 0.8 / max(held, 1e-3)))
                size = max(20, min(REPAIR_ROWS, int(size * factor)))
                time.sleep(target.pause_after(held))

    def _locked(self, fn: Callable[[Connection], None]) -> float:
        """Run `fn` in one target write transaction holding the job's lock; seconds held."""
        target, deadline, wait = self.r.target, time.monotonic() + LOCK_WAIT, 0.1
        while True:
            try:
                with target.write(self.r.job.name) as conn:
                    opened = time.monotonic()
                    self.round.budget.new_transaction()
                    target.mark_origin(conn, self.r.source_node)
                    fn(conn)
                    target.mark_origin(conn, None)
                return time.monotonic() - opened
            except BusyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(wait)
                wait = min(2.0, wait * 2)
            except sa_exc.SQLAlchemyError as exc:
                raise target.classify(exc) from exc

    def _upsert(self, conn: Connection, keys: list[Key]) -> None:
        """The current source rows of `keys`, read under the job's lock, applied."""
        with self.r.source.engine.connect() as sconn:
            found = self.r.reader.current(sconn, self.plan, keys)
        found = [c for c in found if c.wanted and c.version is not None]
        if not found:
            return
        tally = self.round.tally
        before = (tally.upserts, tally.quarantined + tally.conflicts)
        with conn.begin_nested():
            self.r.applier.upserts(
                conn,
                self.round,
                [c.row for c in found],
                [c.source_key for c in found],
                [c.version for c in found],
            )
        self.report.repaired += tally.upserts - before[0]
        self.report.held += tally.quarantined + tally.conflicts - before[1]

    def _delete(self, conn: Connection, items: list[tuple[Key, Key]]) -> None:
        """Extra target rows whose key the source still lacks, under the job's lock."""
        with self.r.source.engine.connect() as sconn:
            alive = self.r.reader.alive(sconn, self.plan, [s for _, s in items])
        gone = [(t, s) for t, s in items if self.plan.source_codec.text(s) not in alive]
        if not gone:
            return
        tally = self.round.tally
        before = (tally.deletes, tally.quarantined + tally.conflicts)
        with conn.begin_nested():
            self.r.applier.deletes(conn, self.round, [t for t, _ in gone], [s for _, s in gone])
        self.report.deleted += tally.deletes - before[0]
        self.report.held += tally.quarantined + tally.conflicts - before[1]


def source_rows(runner: JobRunner, plan: TablePlan) -> int:
    """How many source rows a table's resync compares (for the progress bar)."""
    with runner.source.engine.connect() as conn:
        stmt = sa.select(sa.func.count()).select_from(plan.source).where(*plan.filters)
        return int(conn.execute(stmt).scalar() or 0)
