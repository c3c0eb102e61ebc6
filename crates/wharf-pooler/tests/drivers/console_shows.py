#!/usr/bin/env python3
"""Reads every SHOW of the admin console with psycopg 3, as monitoring
scripts do: the simple query protocol (ClientCursor), autocommit, and
psycopg's own loaders for every column type the console reports. Prints
each SHOW's columns as psycopg sees them (name and type OID) as one JSON
line, `COLUMNS {...}`, for the test to hold against PgBouncer's. Exits 0
only if every SHOW was read and parsed."""

import json
import sys

import psycopg

SHOWS = [
    "POOLS", "STATS", "STATS_TOTALS", "STATS_AVERAGES", "TOTALS", "CLIENTS",
    "SERVERS", "DATABASES", "USERS", "CONFIG", "LISTS", "VERSION", "STATE",
    "PEERS", "PEER_POOLS", "DNS_HOSTS", "DNS_ZONES",
]


def main() -> int:
    failures = []
    described = {}
    with psycopg.connect(autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        for what in SHOWS:
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SHOW {what}")
                    rows = cur.fetchall()
                    columns = [d.name for d in cur.description]
                    described[what] = [[d.name, d.type_code] for d in cur.description]
                print(f"SHOW {what}: {len(rows)} rows, columns {columns}")
                if what in ("CLIENTS", "SERVERS") and not rows:
                    failures.append(f"SHOW {what}: no rows (a client is connected)")
            except Exception as exc:  # every failure is reported, then the rest run
                failures.append(f"SHOW {what}: {type(exc).__name__}: {exc}")
    print("COLUMNS " + json.dumps(described))
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
