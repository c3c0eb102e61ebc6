#!/usr/bin/env python3
"""Logins through the pooler with psycopg 3 and asyncpg (tests/auth.rs).

Each argument is one login, `user:password:database:expected`, where
`expected` is the user `SELECT current_user` must return, or `-` when the
login must be refused with PostgreSQL's "password authentication failed
for user" error. Both drivers try every login.

Connection: PGHOST and PGPORT. Exits 0 only if every check passed; prints
each failure otherwise.
"""

import asyncio
import os
import sys

import asyncpg
import psycopg

HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = int(os.environ["PGPORT"])
TIMEOUT = 10

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)


def judge(driver, login, user, error):
    """Checks one login's outcome: the user it became, or the error."""
    who, _, _, expected = login
    if expected == "-":
        want = f'password authentication failed for user "{who}"'
        if error is None:
            fail(f"{driver} {login}: logged in as {user}, expected a refusal")
        elif want not in error:
            fail(f"{driver} {login}: refused with {error!r}, expected {want!r}")
    elif error is not None:
        fail(f"{driver} {login}: refused with {error!r}")
    elif user != expected:
        fail(f"{driver} {login}: logged in as {user}, expected {expected}")


def with_psycopg(login):
    user, password, database, _ = login
    try:
        with psycopg.connect(host=HOST, port=PORT, user=user, password=password,
                             dbname=database, connect_timeout=TIMEOUT,
                             sslmode="disable") as conn:
            row = conn.execute("SELECT current_user").fetchone()
            return row[0], None
    except psycopg.Error as e:
        return None, str(e)


async def with_asyncpg(login):
    user, password, database, _ = login
    try:
        conn = await asyncpg.connect(host=HOST, port=PORT, user=user, password=password,
                                     database=database, timeout=TIMEOUT, ssl=False)
    except (asyncpg.PostgresError, OSError, asyncio.TimeoutError) as e:
        return None, f"{type(e).__name__}: {e}"
    try:
        return await conn.fetchval("SELECT current_user"), None
    finally:
        await conn.close()


def main():
    logins = [tuple(arg.split(":")) for arg in sys.argv[1:]]
    for login in logins:
        user, error = with_psycopg(login)
        judge("psycopg", login, user, error)
        user, error = asyncio.run(with_asyncpg(login))
        judge("asyncpg", login, user, error)
    if failures:
        print(f"{len(failures)} failure(s)", file=sys.stderr)
        sys.exit(1)
    print(f"{len(logins)} logins checked with psycopg and asyncpg")


if __name__ == "__main__":
    main()
