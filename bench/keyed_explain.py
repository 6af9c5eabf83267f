"""The keyed claim's plans at the benchmark's scale: `bench/keyed_concurrency.py --explain`.

A fresh store gets the keyed drain's workload (`--runs` runs over `--keys` keys, limit
`--limit`), then simulated workers (`--workers`, `--concurrency` slots each) claim and
finish batches for WARM_ROUNDS rounds, as the real ones do, so that runs are leased, full
keys' runs are parked, and some keys with parked runs have a free slot (see `_warm_up`).
Then one more keyed claim is recorded statement by statement (on a connection whose
transaction is rolled back) and each statement is shown with its plan:

- PostgreSQL: the claim is one call of the schema's claim_keyed function (migration 0011);
  auto_explain (loaded in the session: needs a superuser) reports the plan of every
  statement inside it, with ANALYZE and BUFFERS: the generic plans the function makes
  (parameters show as $n), then the collection of finished runs' keys that a process runs
  apart every 2 s; in a transaction rolled back; twice: as the drain meets the tables (no
  statistics yet) and after ANALYZE;
- SQLite: EXPLAIN QUERY PLAN of each distinct statement.

After each plan: the indexes it uses and whether it scans a table in full (`SCAN runs`
on SQLite, `Seq Scan on runs` on PostgreSQL), so a regression shows in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sqlite3
import time
from typing import Any

from bench._db import Target, drop_target, make_target
from bench.keyed_concurrency import EVENT, JOB, build
from stride._flow_decide import COLLECT_SECONDS, ClaimState
from stride.stores.base import ClaimedRun

APP_ID = "bench-keyed"
LEASE_MS = 600_000
WARM_ROUNDS = 40
OVERFULL = 4


def main(args: argparse.Namespace) -> int:
    target = make_target(args.store, args.postgres_url)
    try:
        asyncio.run(_explain(target, args))
    finally:
        drop_target(target)
    return 0


async def _explain(target: Target, args: argparse.Namespace) -> None:
    app = build(target.url, keyed=True, limit=args.limit)
    store: Any = await app.store()
    rng = random.Random(args.seed)
    await app.dispatch_many([(EVENT, {"key": f"k{rng.randrange(args.keys)}"})
                             for _ in range(args.runs)])
    free = await _warm_up(store, args)
    print(_state(target))
    print(f"the recorded claim: worker w0, limit {free} (its free slots)\n")
    if target.store == "sqlite":
        for collecting in (False, True):
            _explain_sqlite(target, free, collecting=collecting)
    else:
        for analyze in (False, True):
            await _explain_postgres(target, store, free, analyze=analyze)
    await app.aclose()


async def _claim(store: Any, worker: str, limit: int) -> list[ClaimedRun]:
    claimed: list[ClaimedRun] = await store.claim(
        worker_id=worker, app_id=APP_ID, job_ids=[JOB], limit=limit, lease_ms=LEASE_MS,
        concurrency={}, keyed={JOB})
    return claimed


async def _finish(store: Any, runs: list[ClaimedRun]) -> None:
    for run in runs:
        await store.finish(run.lease, status="completed", output_json="null", error_json=None)


async def _warm_up(store: Any, args: argparse.Namespace) -> int:
    """Workers claim full batches and finish them, WARM_ROUNDS times (the drain's middle);
    then the last one claims OVERFULL times its batch, which meets full keys and parks their
    runs, and finishes half of it (those keys have free slots and parked runs); the first
    finishes its batch, as no-op runs do between two claims: returns its free slots (the
    recorded claim's limit)."""
    workers = [f"w{index}" for index in range(args.workers)]
    held = {worker: await _claim(store, worker, args.concurrency) for worker in workers}
    for _ in range(WARM_ROUNDS):
        for worker, runs in held.items():
            await _finish(store, runs)
            held[worker] = await _claim(store, worker, args.concurrency)
    last = workers[-1]
    await _finish(store, held[last])
    held[last] = await _claim(store, last, args.concurrency * OVERFULL)
    await _finish(store, held[last][:len(held[last]) // 2])
    await _finish(store, held[workers[0]])
    return args.concurrency


def _state(target: Target) -> str:
    from bench._db import Probe

    probe = Probe(target)
    try:
        counts = probe.status_counts()
        parked = probe.scalar("SELECT count(*) FROM run_keys WHERE parked_on IS NOT NULL")
        keys = probe.scalar("SELECT count(DISTINCT parked_on) FROM run_keys")
    finally:
        probe.close()
    return (f"state: runs by status {dict(sorted(counts.items()))}; {parked} runs parked on "
            f"{keys} keys")


# -- SQLite -------------------------------------------------------------------------------


class _SqliteRecorder:
    """A connection that records every statement it runs (and its first parameters)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: dict[str, Any] = {}

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.statements.setdefault(sql, params)
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, seq: Any) -> sqlite3.Cursor:
        seq = list(seq)
        self.statements.setdefault(sql, seq[0] if seq else None)
        return self.conn.executemany(sql, seq)


def _claim_state(state: ClaimState, collecting: bool) -> ClaimState:
    """A claim's memory as in the drain: it collected finished runs' keys just now (most
    claims), or COLLECT_SECONDS ago (one claim in every 2 s per process collects them)."""
    state._collected = time.monotonic() - (COLLECT_SECONDS if collecting else 0.0)
    return state


def _collects(collecting: bool) -> str:
    return (" that also collects finished runs' keys (every 2 s per process)" if collecting
            else ", as most are (no collection of finished runs' keys)")


def _explain_sqlite(target: Target, limit: int, *, collecting: bool) -> None:
    from stride.stores import _sqlite_flow

    conn = sqlite3.connect(target.path, isolation_level=None)
    recorder = _SqliteRecorder(conn)
    conn.execute("BEGIN IMMEDIATE")
    started = time.perf_counter()
    taken = _sqlite_flow.claim_keyed(recorder, "w0", APP_ID, [JOB],  # type: ignore[arg-type]
                                     limit, LEASE_MS, {},
                                     _claim_state(ClaimState(), collecting))
    took = time.perf_counter() - started
    backlog = _backlog_key(conn)
    if backlog is not None and not any("k.ckey IN" in sql for sql in recorder.statements):
        # no key had a backlog in this claim: show the bulk park's statements too
        _sqlite_flow._park_backlogs(recorder, {backlog: 1},  # type: ignore[arg-type]
                                    time.time_ns() // 1_000_000)
    conn.execute("ROLLBACK")
    print(f"SQLite keyed claim{_collects(collecting)}: {len(taken)} runs leased in "
          f"{took * 1000:.1f} ms ({len(recorder.statements)} distinct statements; "
          "rolled back)\n")
    for number, (sql, params) in enumerate(recorder.statements.items(), 1):
        if params is None:  # executemany with nothing to do: bind NULLs to show the plan
            params = (None,) * sql.count("?")
        plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        lines = [f"{'  ' * _depth(plan, row[1])}{row[3]}" for row in plan]
        print(f"-- statement {number}\n{_wrap(sql)}")
        print("\n".join(lines) or "(no table access)")
        print(_sqlite_summary(lines) + "\n")
    conn.close()


def _backlog_key(conn: Any) -> str | None:
    """A key with queued runs, to show the bulk park of a key's backlog."""
    row = conn.execute(
        "SELECT k.ckey FROM run_keys k JOIN runs r ON r.id = k.run_id "
        "WHERE r.status = 'queued' AND k.parked_on IS NULL LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def _depth(plan: list[tuple[Any, ...]], parent: int) -> int:
    parents = {row[0]: row[1] for row in plan}
    depth = 0
    while parent:
        depth, parent = depth + 1, parents.get(parent, 0)
    return depth


def _sqlite_summary(lines: list[str]) -> str:
    indexes = sorted({m.group(0) for line in lines
                      for m in re.finditer(r"(?:COVERING )?INDEX \w+|PRIMARY KEY", line)})
    scans = [line.strip() for line in lines if re.match(r"\s*SCAN (runs|run_keys)\b", line)]
    return (f"=> uses: {', '.join(indexes) or 'no index'}; full scans of runs/run_keys: "
            f"{'; '.join(scans) or 'none'}")


# -- PostgreSQL ---------------------------------------------------------------------------

AUTO_EXPLAIN = ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on",
                "SET auto_explain.log_nested_statements = on",
                "SET auto_explain.log_level = notice", "SET client_min_messages = notice")
"""The claim is one call of the schema's claim_keyed function (migration 0011): the plans
of the statements inside it are reported by auto_explain (a contrib module of PostgreSQL,
loaded in this session only, which needs a superuser) as notices."""


async def _explain_postgres(target: Target, store: Any, limit: int, *,
                            analyze: bool) -> None:
    import psycopg

    from stride._ids import new_id
    from stride.stores import _postgres_flow as flow

    async with await psycopg.AsyncConnection.connect(target.server_url or "") as conn:
        if analyze:
            await conn.execute(f'ANALYZE "{target.schema}".runs, "{target.schema}".run_keys')
            await conn.commit()
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        for setting in AUTO_EXPLAIN:
            await conn.execute(setting)
        await conn.commit()
        params = flow.ClaimParams(
            app_id=APP_ID, worker_id="w0", token=new_id(), now=time.time_ns() // 1_000_000,
            lease_ms=LEASE_MS, limit=limit, job_ids=[JOB], limits={}, state=ClaimState())
        async with conn.transaction(force_rollback=True):  # record the claim, then undo it
            started = time.perf_counter()
            taken = await flow.claim_keyed(conn, store.flow_sql, params)
            took = time.perf_counter() - started
            await conn.execute(store.flow_sql.collect,
                               (time.time_ns() // 1_000_000 - 60_000, APP_ID))
        print(f"PostgreSQL keyed claim, "
              f"{'after ANALYZE' if analyze else 'no statistics (as in the drain)'}: "
              f"{len(taken)} runs leased in {took * 1000:.1f} ms, auto_explain on "
              "(rolled back)\n")
        for notice in notices:
            query, plan = _split_plan(notice)
            if plan:
                print(f"-- {query}\n" + "\n".join(plan))
                print(_postgres_summary(plan) + "\n")


_PLAN_ROOT = re.compile(r"^\S.*  \(cost=")


def _split_plan(notice: str) -> tuple[str, list[str]]:
    """An auto_explain notice: its statement's first words, and its plan's lines (from
    the root node, the first unindented line with a cost)."""
    lines = notice.split("Query Text:", 1)[-1].splitlines()
    root = next((n for n, line in enumerate(lines) if _PLAN_ROOT.match(line)), len(lines))
    words = " ".join(lines[:root]).split()
    return " ".join(words[:16])[:130], [line for line in lines[root:] if line.strip()]


def _postgres_summary(lines: list[str]) -> str:
    indexes = sorted({f"{m.group(1)} on {m.group(2)}" for line in lines for m in re.finditer(
        r"Index (?:Only )?Scan (?:Backward )?using (\w+) on (\w+)", line)})
    seq = sorted({m.group(1) for line in lines for m in re.finditer(r"Seq Scan on (\w+)", line)})
    bitmap = sorted({m.group(1) for line in lines
                     for m in re.finditer(r"Bitmap Heap Scan on (\w+)", line)})
    return (f"=> index scans: {', '.join(indexes) or 'none'}; seq scans: "
            f"{', '.join(seq) or 'none'}; bitmap scans: {', '.join(bitmap) or 'none'}")


def _wrap(sql: str, width: int = 100) -> str:
    words, lines, line = sql.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])
