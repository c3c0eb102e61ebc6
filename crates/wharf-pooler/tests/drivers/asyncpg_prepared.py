#!/usr/bin/env python3
"""asyncpg through the pooler, with server-side named prepared statements.

asyncpg prepares every query as a named statement (`__asyncpg_stmt_N__`),
Describes the statement to learn its parameter and result types, caches it
per connection (`statement_cache_size`, default 100) and closes what it
evicts. Explicit `conn.prepare()` statements are named too.

Connection: the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE). CLIENTS concurrent clients (default 8). Exits 0 only if every
check passed; prints each failure otherwise.
"""

import asyncio
import os
import sys
import time

import asyncpg

CLIENTS = int(os.environ.get("CLIENTS", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "30"))
TIMEOUT = int(os.environ.get("DRIVER_TIMEOUT", "120"))
COPY_ROWS = 200
TABLE = f"wharf_drv_asyncpg_{os.getpid()}"

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)


async def connect(**kw):
    # asyncpg reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE itself.
    return await asyncpg.connect(timeout=10, **kw)


async def client(n):
    # Odd clients get a tiny statement cache, so asyncpg evicts and closes
    # statements and prepares them again.
    conn = await connect(**({"statement_cache_size": 3} if n % 2 else {}))
    try:
        # Concurrent parameterised queries, the same statements many times.
        for i in range(ROUNDS):
            row = await conn.fetchrow("SELECT $1::int + $2::int AS s, $3::text || '!' AS t",
                                      n, i, f"c{n}")
            check(tuple(row) == (n + i, f"c{n}!"), f"client {n} round {i}: sum/concat {row}")
            val = await conn.fetchval("SELECT $1::bigint * 2", i)
            check(val == 2 * i, f"client {n} round {i}: twice {val}")
        # More distinct statements than the small cache holds.
        for r in range(3):
            for k in range(8):
                val = await conn.fetchval(f"SELECT $1::int + {k}", r)
                check(val == r + k, f"client {n} churn {r}/{k}: {val}")
        # An explicit prepared statement, executed many times.
        stmt = await conn.prepare("SELECT $1::int * $2::int")
        for i in range(ROUNDS):
            val = await stmt.fetchval(n, i)
            check(val == n * i, f"client {n} prepared {i}: {val}")
        # executemany: one Parse, many Bind/Execute in one pipeline.
        await conn.executemany(
            f"INSERT INTO {TABLE} (id, client, val) VALUES ($1, $2, $3)",
            [(50000 + n * 100 + k, 2000 + n, f"m{k}") for k in range(20)],
        )
        val = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE client = $1", 2000 + n)
        check(val == 20, f"client {n}: executemany rows {val}")
        # Transactions: even ones commit, odd ones roll back.
        for t in range(10):
            rid = n * 1000 + t
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"INSERT INTO {TABLE} (id, client, val) VALUES ($1, $2, $3)",
                               rid, n, f"t{t}")
            val = await conn.fetchval(f"SELECT val FROM {TABLE} WHERE id = $1", rid)
            check(val == f"t{t}", f"client {n} tx {t}: own insert reads {val}")
            if t % 2:
                await tr.rollback()
            else:
                await tr.commit()
        got = await conn.fetchval(
            f"SELECT array_agg(id ORDER BY id) FROM {TABLE} WHERE client = $1", n)
        want = [n * 1000 + t for t in range(0, 10, 2)]
        check(list(got or []) == want, f"client {n}: committed rows {got}, want {want}")
        # An error inside a transaction: rolled back, connection still usable.
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {TABLE} (id, client, val) VALUES ($1, $2, $3)",
                                   n * 1000, n, "dup")
            fail(f"client {n}: duplicate key accepted")
        except asyncpg.UniqueViolationError:
            pass
        val = await conn.fetchval("SELECT $1::bigint * 2", 21)
        check(val == 42, f"client {n}: after error {val}")
        # COPY FROM STDIN with binary records.
        base = 100000 + n * COPY_ROWS
        status = await conn.copy_records_to_table(
            TABLE, records=[(base + i, 1000 + n, f"copy{i}") for i in range(COPY_ROWS)],
            columns=["id", "client", "val"])
        check(status == f"COPY {COPY_ROWS}", f"client {n}: COPY status {status!r}")
        val = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE client = $1", 1000 + n)
        check(val == COPY_ROWS, f"client {n}: copied rows counted {val}")
    except Exception as e:  # noqa: BLE001 - every error is a failed check
        fail(f"client {n}: {type(e).__name__}: {e}")
    finally:
        await conn.close()


async def run():
    conn = await connect()
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, client int NOT NULL, val text)")
    finally:
        await conn.close()
    try:
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
        conn = await connect()
        try:
            row = await conn.fetchrow(
                f"SELECT count(*) FILTER (WHERE client < 1000), "
                f"count(*) FILTER (WHERE client >= 1000 AND client < 2000), "
                f"count(*) FILTER (WHERE (id % 1000) % 2 = 1 AND client < 1000) FROM {TABLE}")
            check(tuple(row) == (CLIENTS * 5, CLIENTS * COPY_ROWS, 0),
                  f"table totals (committed, copied, rolled back) {tuple(row)}")
        finally:
            await conn.close()
    finally:
        conn = await connect()
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        finally:
            await conn.close()


def main():
    started = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(), TIMEOUT))
    except asyncio.TimeoutError:
        fail(f"no result within {TIMEOUT}s")
    except Exception as e:  # noqa: BLE001
        fail(f"{type(e).__name__}: {e}")
    took = time.monotonic() - started
    if failures:
        print(f"asyncpg {asyncpg.__version__}: {len(failures)} check(s) failed "
              f"({CLIENTS} clients, {took:.1f}s)", file=sys.stderr)
        sys.exit(1)
    print(f"asyncpg {asyncpg.__version__}: all checks passed ({CLIENTS} clients, {took:.1f}s)")


if __name__ == "__main__":
    main()
