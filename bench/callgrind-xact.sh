#!/usr/bin/env bash
# Instructions per transaction of each pooler's own process, counted by
# valgrind's callgrind: unlike CPU time, the count does not depend on what
# else the machine is doing, so it compares builds (and wharf with
# PgBouncer) on a busy or shared machine. It counts user-space
# instructions only; the kernel's share (send, recv, epoll) is not in it.
#
#   bench/callgrind-xact.sh                       # -S, 10 clients x 1000 transactions
#   ROWS=select,extended,tpcb bench/callgrind-xact.sh
#   WHARF_BIN=/tmp/wharf-old bench/callgrind-xact.sh
#   KEEP=/tmp/profiles bench/callgrind-xact.sh    # keeps the profiles
#   ROWS=connect PER_CLIENT=200 bench/callgrind-xact.sh  # a new login per transaction (-C)
#
# Needs valgrind, the PostgreSQL server binaries and pgbouncer (installed
# with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=0 # bench/lib.sh wants it; transactions are counted here
ROWS=${ROWS:-select}
CLIENTS=${CLIENTS:-10}
PER_CLIENT=${PER_CLIENT:-1000}
. bench/lib.sh
need valgrind pgbouncer
wharf_bin=$(wharf_binary)

work=$(mktemp -d /tmp/wharf-callgrind-XXXXXX)
chmod 777 "$work"
cleanup() {
  pkill -f "callgrind-out-file=$work" 2>/dev/null || true
  "${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
pg_port=$(free_port)
"${run_as[@]}" "$pg_bin/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off" start >/dev/null
"$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s 1 postgres >/dev/null 2>&1
echo '"postgres" "postgres"' > "$work/userlist.txt"

# pooler name, command... : prints "Ir/xact" for each row
measure() {
  local name=$1; shift
  local port out pid
  port=$(free_port); out=$work/cg.$name
  bench_ini "$name" "$port" "host=127.0.0.1 port=$pg_port dbname=postgres user=postgres" 20 \
    > "$work/$name.ini"
  chmod 644 "$work/$name.ini"
  "${run_as[@]}" valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$out" "$@" "$work/$name.ini" >"$out.stderr" 2>&1 &
  wait_ready "$port"
  pid=$(pgrep -f "valgrind.bin.*callgrind-out-file=$out" | head -n 1)
  local line="| $name |"
  for r in ${ROWS//,/ }; do
    local args=()
    case $r in
      select) args=(-S) ;;
      extended) args=(-S -M extended) ;;
      prepared) args=(-S -M prepared) ;;
      tpcb) args=() ;;
      connect) args=(-S -C) ;;
    esac
    # Warm up (connections, caches), then count only the measured run.
    "$pg_bin/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$CLIENTS" -j 2 -t 100 "${args[@]}" postgres >/dev/null 2>&1 || true
    "${run_as[@]}" callgrind_control -z "$pid" >/dev/null 2>&1
    local xacts
    xacts=$("$pg_bin/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c "$CLIENTS" -j 2 -t "$PER_CLIENT" "${args[@]}" postgres 2>/dev/null \
      | awk '/actually processed/ {split($6, n, "/"); print n[1]}' || true)
    "${run_as[@]}" callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    local total
    total=$(grep -h '^summary:' "$out".[0-9]* | awk '{print $2}' | tail -n 1)
    # KEEP=dir keeps each row's profile there, for callgrind_annotate.
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out".[0-9]* "$KEEP/$name.$r.callgrind"; fi
    rm -f "$out".[0-9]*
    if [ -z "$xacts" ] || [ "$xacts" = 0 ]; then
      # PgBouncer before 1.21 cannot run -M prepared in transaction mode.
      line+=" fails |"
      continue
    fi
    line+=" $((total / xacts)) |"
  done
  kill "$pid" 2>/dev/null || true
  sleep 1
  echo "$line"
}

describe_machine "; $(valgrind --version)"
echo "$CLIENTS clients x $PER_CLIENT transactions per row, transaction mode, pool 20; user-space instructions of the pooler per transaction"
header="| pooler |"; sep="|---|"
for r in ${ROWS//,/ }; do header+=" $r |"; sep+="---:|"; done
echo "$header"; echo "$sep"
measure pgbouncer pgbouncer
measure wharf "$wharf_bin" serve
