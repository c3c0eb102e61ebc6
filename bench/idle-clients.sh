#!/usr/bin/env bash
# What an idle client costs each pooler: logs CLIENTS clients in to PgBouncer
# and to wharf (same ini: transaction mode, trust), holds them open without
# a query, and prints each pooler's resident memory growth per client
# (VmRSS from /proc, after minus before, over CLIENTS).
#
#   bench/idle-clients.sh                  # 10,000 clients
#   CLIENTS=2000 bench/idle-clients.sh
#   WHARF_BIN=/tmp/wharf-new WHARF_BASELINE=/tmp/wharf-old bench/idle-clients.sh
#
# Needs the PostgreSQL server binaries and pgbouncer (installed with apt-get
# when missing), and an open-files limit it can raise above CLIENTS.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-10000}
. bench/lib.sh
need pgbouncer
wharf_bin=$(wharf_binary)
baseline_bin=${WHARF_BASELINE:-}

ulimit -n $((CLIENTS + 1000))
bench_workdir idle

pg_port=$(free_port)
"${run_as[@]}" "$pg_bin/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
echo '"postgres" "postgres"' > "$work/userlist.txt"

write_ini() { # name port
  {
    bench_ini "$1" "$2" "host=127.0.0.1 port=$pg_port dbname=postgres user=postgres" 20
    echo "max_client_conn = $((CLIENTS + 100))"
  } > "$work/$1.ini"
}

# The clients: asyncio sockets that send a StartupMessage, read up to
# ReadyForQuery, and then hold the connection until stdin closes.
cat > "$work/idle.py" <<'PY'
import asyncio, struct, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
async def login():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    writer.write(struct.pack("!i", len(body) + 4) + body)
    while True:
        head = await reader.readexactly(5)
        await reader.readexactly(struct.unpack("!i", head[1:])[0] - 4)
        if head[:1] == b"E":
            raise SystemExit("login refused")
        if head[:1] == b"Z":
            return writer
async def main():
    held = []
    for start in range(0, count, 500):
        held += await asyncio.gather(*(login() for _ in range(start, min(count, start + 500))))
    print(len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
PY

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

measure() { # name binary-or-empty-for-pgbouncer
  local name=$1 bin=$2 port pid before after
  port=$(free_port)
  write_ini "$name" "$port"
  chown postgres "$work/$name.ini" 2>/dev/null || true
  if [ -z "$bin" ]; then
    # As root it drops to postgres itself (-u), keeping the open-files
    # limit that runuser's PAM session would reset.
    if [ "$(id -u)" = 0 ]; then
      pgbouncer -u postgres "$work/$name.ini" >/dev/null 2>&1 &
    else
      pgbouncer "$work/$name.ini" >/dev/null 2>&1 &
    fi
  else
    RUST_LOG=warn "$bin" serve "$work/$name.ini" >"$work/$name.out" 2>&1 &
  fi
  pids+=($!)
  wait_ready "$port"
  pid=$(cat "$work/$name.pid")
  sleep 1
  before=$(rss_kib "$pid")
  coproc CLIENTS_PROC { python3 "$work/idle.py" "$port" "$CLIENTS"; }
  local held
  read -r held <&"${CLIENTS_PROC[0]}"
  sleep 2
  after=$(rss_kib "$pid")
  exec {CLIENTS_PROC[1]}>&-
  wait "$CLIENTS_PROC_PID" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  awk -v n="$name" -v h="$held" -v b="$before" -v a="$after" 'BEGIN {
    printf "| %s | %d | %.0f | %.0f | %.2f |\n", n, h, b / 1024, a / 1024, (a - b) / h }'
}

describe_machine
echo "$(pgbouncer --version | head -n 1); wharf ${WHARF_BIN:-$(git rev-parse --short HEAD)}"
echo
echo "| pooler | idle clients | RSS before (MiB) | RSS with them (MiB) | KiB per idle client |"
echo "|---|---:|---:|---:|---:|"
measure pgbouncer ""
measure wharf "$wharf_bin"
[ -n "$baseline_bin" ] && measure baseline "$baseline_bin"
true
