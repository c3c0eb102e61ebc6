#!/usr/bin/env bash
# Read/write routing on a primary with a streaming replica: pgbench through
# wharf with `read_routing = on` against the same wharf build with it off
# (every transaction on the primary), interleaved run by run. Prints TPS
# medians, where the reads went, and the pooler's CPU time and context
# switches per transaction: the routing's cost (the SQL classifier and the
# second pool) and what spreading reads buys.
#
#   bench/read-routing.sh                       # 3 runs of 10 s per row
#   RUNS=5 SECONDS_PER_RUN=20 bench/read-routing.sh
#   WHARF_BIN=/tmp/wharf-new bench/read-routing.sh
#
# Needs the PostgreSQL server binaries. Everything runs on 127.0.0.1 in a
# temp dir that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}

. bench/lib.sh
wharf_bin=$(wharf_binary)
bench_workdir routing

primary_port=$(free_port); replica_port=$(free_port); on_port=$(free_port); off_port=$(free_port)
ulimit -n 8192 2>/dev/null || true

pg_opts="-c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off"
"${run_as[@]}" "$pg_bin/initdb" -D "$work/primary" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w \
  -o "-p $primary_port -k $work $pg_opts" start >/dev/null
"$pg_bin/pgbench" -h 127.0.0.1 -p "$primary_port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1
"${run_as[@]}" "$pg_bin/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$work/replica" -R -X stream >/dev/null
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/replica" -l "$work/replica.log" -w \
  -o "-p $replica_port -k $work $pg_opts" start >/dev/null

echo '"postgres" "postgres"' > "$work/userlist.txt"
write_ini() { # name port routing
  {
    bench_ini "$1" "$2" "host=127.0.0.1,127.0.0.1 port=$primary_port,$replica_port dbname=postgres user=postgres target_session_attrs=read-write read_routing=$3" "$POOL_SIZE"
    echo "max_client_conn = 2000"
  } > "$work/$1.ini"
}
write_ini on "$on_port" on
write_ini off "$off_port" off
chown postgres "$work"/* 2>/dev/null || true
for name in on off; do
  RUST_LOG=warn "$wharf_bin" serve "$work/$name.ini" >"$work/$name.out" 2>&1 &
  pids+=($!)
done
for port in "$on_port" "$off_port"; do wait_ready "$port"; done
pid_of() { cat "$work/$1.pid" 2>/dev/null || echo 0; }
on_pid=$(pid_of on); off_pid=$(pid_of off)

# Transactions PostgreSQL counted on the replica (reads that went there).
replica_xacts() {
  "$pg_bin/psql" -h 127.0.0.1 -p "$replica_port" -U postgres -d postgres -Atqc \
    "select xact_commit + xact_rollback from pg_stat_database where datname = 'postgres'"
}
measure() { # port pid args...: "TPS cpu_us_per_xact cs_per_xact replica_share"
  local port=$1 pid=$2; shift 2
  local c0 s0 r0 out c1 s1 r1
  c0=$(cpu_ticks "$pid"); s0=$(ctx_switches "$pid"); r0=$(replica_xacts)
  out=$(tps "$port" "$@")
  c1=$(cpu_ticks "$pid"); s1=$(ctx_switches "$pid"); r1=$(replica_xacts)
  awk -v out="$out" -v dc=$((c1 - c0)) -v ds=$((s1 - s0)) -v dr=$((r1 - r0)) -v hz="$clk_tck" 'BEGIN {
    split(out, f, " "); x = f[2] + 0
    printf "%s %.2f %.3f %.2f\n", f[1], (x > 0 ? dc * 1e6 / hz / x : 0), (x > 0 ? ds / x : 0), (x > 0 ? dr / x : 0) }'
}

describe_machine
echo "pgbench: $("$pg_bin/pgbench" --version); wharf ${WHARF_BIN:-$(git rev-parse --short HEAD)}"
echo "runs per cell: $RUNS x ${SECONDS_PER_RUN}s, median; pool size $POOL_SIZE, transaction mode; a primary and a streaming replica"
echo "on replica: the share of transactions the replica counted (pg_stat_database; the stats lag, so read it as approximate)"
echo
echo "| workload | TPS routing on | TPS routing off | on/off | CPU/xact on (µs) | CPU/xact off (µs) | cs/xact on | cs/xact off | on replica (on) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
row() { # label pgbench-args...
  local label=$1; shift
  local on=() off=()
  for _ in $(seq "$RUNS"); do
    on+=("$(measure "$on_port" "$on_pid" "$@")")
    off+=("$(measure "$off_port" "$off_pid" "$@")")
  done
  local a b
  a=$(printf '%s\n' "${on[@]}" | col 1); b=$(printf '%s\n' "${off[@]}" | col 1)
  printf '| %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s |\n' "$label" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')" \
    "$(printf '%s\n' "${on[@]}" | col 2)" "$(printf '%s\n' "${off[@]}" | col 2)" \
    "$(printf '%s\n' "${on[@]}" | col 3)" "$(printf '%s\n' "${off[@]}" | col 3)" \
    "$(printf '%s\n' "${on[@]}" | col 4)"
}
row "-S -c 50 -j 2" -S -c 50 -j 2
row "-S -c 50 -j 2 -M prepared" -S -c 50 -j 2 -M prepared
row "TPC-B -c 20 -j 2" -c 20 -j 2
