#!/usr/bin/env python3
"""psycopg 3 through the pooler, with server-side named prepared statements.

`prepare_threshold=0` makes psycopg prepare every parameterised query on its
first execution as a named statement (`_pg3_0`, `_pg3_1`, ... per
connection), and `prepared_max` is lowered on some connections so that
psycopg also closes (deallocates) statements it evicts from its cache.

Connection: the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD,
PGDATABASE). CLIENTS concurrent clients (default 8). Exits 0 only if every
check passed; prints each failure otherwise.
"""

import os
import signal
import sys
import threading
import time

import psycopg

CLIENTS = int(os.environ.get("CLIENTS", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "30"))  # past any prepare threshold
TIMEOUT = int(os.environ.get("DRIVER_TIMEOUT", "120"))
COPY_ROWS = 200
TABLE = f"wharf_drv_psycopg_{os.getpid()}"

failures = []
lock = threading.Lock()


def fail(msg):
    with lock:
        failures.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)


def check(cond, msg):
    if not cond:
        fail(msg)


def connect(**kw):
    # Everything but the prepare settings comes from the libpq variables.
    return psycopg.connect("", autocommit=True, prepare_threshold=0, **kw)


def client(n):
    try:
        with connect() as conn:
            conn.prepared_max = 4 if n % 2 else 100
            cur = conn.cursor()
            # Concurrent parameterised queries, the same statements many
            # times (each one is a named prepared statement).
            for i in range(ROUNDS):
                cur.execute("SELECT %s::int + %s::int, %s::text || '!'", (n, i, f"c{n}"))
                row = cur.fetchone()
                check(row == (n + i, f"c{n}!"), f"client {n} round {i}: sum/concat got {row}")
                cur.execute("SELECT %s::bigint * 2 AS twice, %s::text AS who", (i, f"n{n}"))
                row = cur.fetchone()
                check(row == (2 * i, f"n{n}"), f"client {n} round {i}: twice got {row}")
            # More distinct statements than a small psycopg cache holds, so
            # that psycopg evicts (closes) some and prepares them again.
            for r in range(3):
                for k in range(8):
                    cur.execute(f"SELECT %s::int + {k} AS k{k}", (r,))
                    row = cur.fetchone()
                    check(row == (r + k,), f"client {n} churn {r}/{k}: got {row}")
            # Pipeline mode: Parse, Bind, Execute of several statements, one
            # Sync at the end.
            with conn.pipeline():
                curs = []
                for k in range(6):
                    c = conn.cursor()
                    c.execute("SELECT %s::int * %s::int AS p", (n, k))
                    curs.append(c)
                    c = conn.cursor()
                    c.execute("SELECT %s::text || %s::text AS s", (f"p{n}", str(k)))
                    curs.append(c)
            for k in range(6):
                row = curs[2 * k].fetchone()
                check(row == (n * k,), f"client {n} pipeline {k}: product got {row}")
                row = curs[2 * k + 1].fetchone()
                check(row == (f"p{n}{k}",), f"client {n} pipeline {k}: concat got {row}")
            # Transactions: even ones commit, odd ones roll back.
            for t in range(10):
                rid = n * 1000 + t
                try:
                    with conn.transaction():
                        cur.execute(
                            f"INSERT INTO {TABLE} (id, client, val) VALUES (%s, %s, %s)",
                            (rid, n, f"t{t}"),
                        )
                        cur.execute(f"SELECT val FROM {TABLE} WHERE id = %s", (rid,))
                        row = cur.fetchone()
                        check(row == (f"t{t}",), f"client {n} tx {t}: own insert reads {row}")
                        if t % 2:
                            raise psycopg.Rollback()
                except psycopg.Rollback:
                    pass
            cur.execute(
                f"SELECT array_agg(id ORDER BY id) FROM {TABLE} WHERE client = %s", (n,)
            )
            got = cur.fetchone()[0] or []
            want = [n * 1000 + t for t in range(0, 10, 2)]
            check(got == want, f"client {n}: committed rows {got}, want {want}")
            # A failed statement inside a transaction, then a rollback: the
            # connection must stay usable and the prepared statements too.
            try:
                with conn.transaction():
                    cur.execute(f"INSERT INTO {TABLE} (id, client, val) VALUES (%s, %s, %s)",
                                (n * 1000, n, "dup"))
                fail(f"client {n}: duplicate key accepted")
            except psycopg.errors.UniqueViolation:
                pass
            cur.execute("SELECT %s::int + %s::int, %s::text || '!'", (n, 1, "again"))
            row = cur.fetchone()
            check(row == (n + 1, "again!"), f"client {n}: after error got {row}")
            # COPY FROM STDIN.
            base = 100000 + n * COPY_ROWS
            with cur.copy(f"COPY {TABLE} (id, client, val) FROM STDIN") as copy:
                for i in range(COPY_ROWS):
                    copy.write_row((base + i, 1000 + n, f"copy{i}"))
            check(cur.rowcount == COPY_ROWS, f"client {n}: COPY rowcount {cur.rowcount}")
            cur.execute(f"SELECT count(*) FROM {TABLE} WHERE client = %s", (1000 + n,))
            row = cur.fetchone()
            check(row == (COPY_ROWS,), f"client {n}: copied rows counted {row}")
    except Exception as e:  # noqa: BLE001 - every error is a failed check
        fail(f"client {n}: {type(e).__name__}: {e}")


def main():
    def timeout(*_):
        print(f"FAIL: psycopg: no result within {TIMEOUT}s", file=sys.stderr, flush=True)
        os._exit(3)

    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(TIMEOUT)
    started = time.monotonic()
    try:
        with connect() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, client int NOT NULL, val text)")
        try:
            threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            with connect() as conn:
                rows = conn.execute(
                    f"SELECT count(*) FILTER (WHERE client < 1000), "
                    f"count(*) FILTER (WHERE client >= 1000), "
                    f"count(*) FILTER (WHERE (id % 1000) % 2 = 1 AND client < 1000) FROM {TABLE}"
                ).fetchone()
                check(rows == (CLIENTS * 5, CLIENTS * COPY_ROWS, 0),
                      f"table totals (committed, copied, rolled back) {rows}")
        finally:
            with connect() as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    except Exception as e:  # noqa: BLE001 - setup, totals or cleanup failed
        fail(f"{type(e).__name__}: {e}")
    took = time.monotonic() - started
    if failures:
        print(f"psycopg {psycopg.__version__}: {len(failures)} check(s) failed "
              f"({CLIENTS} clients, {took:.1f}s)", file=sys.stderr)
        sys.exit(1)
    print(f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}): all checks passed "
          f"({CLIENTS} clients, {took:.1f}s)")


if __name__ == "__main__":
    main()
