#!/usr/bin/env bash
# Compares pgbench throughput directly against PostgreSQL, through PgBouncer
# and through wharf, on this machine, with the same pooler settings
# (transaction mode, pool of 20). Prints TPS medians, wharf/PgBouncer, and
# each pooler's CPU time (and its kernel part) and context switches per
# transaction.
#
#   bench/pgbench-compare.sh            # 3 runs of 10 s per row
#   ROWS=select,extended bench/pgbench-compare.sh   # some rows only
#   RUNS=5 SECONDS_PER_RUN=20 bench/pgbench-compare.sh
#   WHARF_BASELINE=/tmp/wharf-old bench/pgbench-compare.sh
#   WHARF_BIN=/tmp/wharf-new WHARF_BASELINE=/tmp/wharf-old bench/pgbench-compare.sh
#                                       # A/B: also an older wharf build,
#                                       # interleaved with the others
#   TLS=1 ROWS=select bench/pgbench-compare.sh
#                                       # TLS everywhere: PostgreSQL with
#                                       # ssl = on, both poolers with
#                                       # client and server TLS required,
#                                       # pgbench with sslmode=require
#
# Needs the PostgreSQL server binaries and pgbouncer (installed with apt-get
# when missing). Everything runs on 127.0.0.1 in a temp dir that is removed
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}

. bench/lib.sh
need pgbouncer
# WHARF_BIN measures a given build instead of this tree's.
wharf_bin=$(wharf_binary)

bench_workdir bench

pg_port=$(free_port); bouncer_port=$(free_port); wharf_port=$(free_port); baseline_port=$(free_port)
baseline_bin=${WHARF_BASELINE:-}

ulimit -n 8192 2>/dev/null || true
"${run_as[@]}" "$pg_bin/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
pg_tls=""
if [ "${TLS:-0}" = 1 ]; then
  # One P-256 certificate for 127.0.0.1, used by PostgreSQL and both poolers.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$work/tls.key" -out "$work/tls.crt" -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1
  chmod 600 "$work/tls.key"; chown postgres "$work/tls.key" "$work/tls.crt" 2>/dev/null || true
  pg_tls="-c ssl=on -c ssl_cert_file=$work/tls.crt -c ssl_key_file=$work/tls.key"
  export PGSSLMODE=require
fi
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=700 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off $pg_tls" \
  start >/dev/null
"$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1

echo '"postgres" "postgres"' > "$work/userlist.txt"
write_ini() { # port file
  {
    bench_ini "$(basename "$2" .ini)" "$1" \
      "host=127.0.0.1 port=$pg_port dbname=postgres user=postgres" "$POOL_SIZE"
    echo "max_client_conn = 2000"
  } > "$2"
  if [ "${TLS:-0}" = 1 ]; then
    cat >> "$2" <<EOF
client_tls_sslmode = require
client_tls_key_file = $work/tls.key
client_tls_cert_file = $work/tls.crt
server_tls_sslmode = require
EOF
  fi
}
write_ini "$bouncer_port" "$work/pgbouncer.ini"
write_ini "$wharf_port" "$work/wharf.ini"
write_ini "$baseline_port" "$work/baseline.ini"
# wharf's own key: worker threads (0 = one per core).
echo "workers = ${WHARF_WORKERS:-0}" >> "$work/wharf.ini"
echo "workers = ${WHARF_WORKERS:-0}" >> "$work/baseline.ini"
chown postgres "$work"/* 2>/dev/null || true
"${run_as[@]}" pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)
RUST_LOG=warn "$wharf_bin" serve "$work/wharf.ini" >"$work/wharf.out" 2>&1 &
pids+=($!)
ports=("$bouncer_port" "$wharf_port")
if [ -n "$baseline_bin" ]; then
  RUST_LOG=warn "$baseline_bin" serve "$work/baseline.ini" >"$work/baseline.out" 2>&1 &
  pids+=($!)
  ports+=("$baseline_port")
fi
for port in "${ports[@]}"; do wait_ready "$port"; done

pid_of() { cat "$work/$1.pid" 2>/dev/null || echo 0; }
bouncer_pid=$(pid_of pgbouncer); wharf_pid=$(pid_of wharf); baseline_pid=$(pid_of baseline)




measure() { # port pid args...: "TPS cpu_us_per_xact ctx_switches_per_xact sys_us_per_xact"
  local port=$1 pid=$2; shift 2
  local c0 s0 k0 out c1 s1 k1
  c0=$(cpu_ticks "$pid"); s0=$(ctx_switches "$pid"); k0=$(sys_ticks "$pid")
  out=$(tps "$port" "$@")
  c1=$(cpu_ticks "$pid"); s1=$(ctx_switches "$pid"); k1=$(sys_ticks "$pid")
  awk -v out="$out" -v dc=$((c1 - c0)) -v ds=$((s1 - s0)) -v dk=$((k1 - k0)) -v hz="$clk_tck" 'BEGIN {
    split(out, f, " "); x = f[2] + 0
    printf "%s %.2f %.3f %.2f\n", f[1], (x > 0 ? dc * 1e6 / hz / x : 0), (x > 0 ? ds / x : 0), (x > 0 ? dk * 1e6 / hz / x : 0) }'
}

describe_machine
echo "pgbench: $("$pg_bin/pgbench" --version); $(pgbouncer --version | head -n 1); wharf ${WHARF_BIN:-$(git rev-parse --short HEAD)}"
echo "runs per cell: $RUNS x ${SECONDS_PER_RUN}s, median TPS; pool size $POOL_SIZE, transaction mode"
[ "${TLS:-0}" = 1 ] && echo "TLS: every client and server connection (sslmode=require, P-256 certificate)"
echo
echo "CPU/xact: the pooler's utime+stime over the transactions pgbench counted (µs); cs/xact: its context switches per transaction; sys/xact: the stime part of CPU/xact (the kernel's: sends, receives, wake-ups)"
[ -n "$baseline_bin" ] && echo "baseline: $baseline_bin"
cols="| workload | direct | pgbouncer | wharf |"
sep="|---|---:|---:|---:|"
[ -n "$baseline_bin" ] && { cols+=" baseline |"; sep+="---:|"; }
cols+=" wharf/pgbouncer |"; sep+="---:|"
[ -n "$baseline_bin" ] && { cols+=" wharf/baseline |"; sep+="---:|"; }
cols+=" CPU/xact pgbouncer | CPU/xact wharf |"; sep+="---:|---:|"
[ -n "$baseline_bin" ] && { cols+=" CPU/xact baseline |"; sep+="---:|"; }
cols+=" cs/xact pgbouncer | cs/xact wharf |"; sep+="---:|---:|"
[ -n "$baseline_bin" ] && { cols+=" cs/xact baseline |"; sep+="---:|"; }
cols+=" sys/xact pgbouncer | sys/xact wharf |"; sep+="---:|---:|"
[ -n "$baseline_bin" ] && { cols+=" sys/xact baseline |"; sep+="---:|"; }
echo "$cols"; echo "$sep"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
row() { # label pgbench-args...
  local label=$1; shift
  local d=() b=() w=() o=()
  for _ in $(seq "$RUNS"); do
    # Interleave the targets so drift hits them alike.
    d+=("$(tps "$pg_port" "$@")")
    b+=("$(measure "$bouncer_port" "$bouncer_pid" "$@")")
    w+=("$(measure "$wharf_port" "$wharf_pid" "$@")")
    if [ -n "$baseline_bin" ]; then o+=("$(measure "$baseline_port" "$baseline_pid" "$@")"); fi
  done
  local dm bm wm om=0 line
  dm=$(printf '%s\n' "${d[@]}" | col 1)
  bm=$(printf '%s\n' "${b[@]}" | col 1)
  wm=$(printf '%s\n' "${w[@]}" | col 1)
  line=$(printf '| %s | %.0f | %.0f | %.0f |' "$label" "$dm" "$bm" "$wm")
  if [ -n "$baseline_bin" ]; then
    om=$(printf '%s\n' "${o[@]}" | col 1)
    line+=$(printf ' %.0f |' "$om")
  fi
  line+=" $(ratio "$wm" "$bm") |"
  [ -n "$baseline_bin" ] && line+=" $(ratio "$wm" "$om") |"
  for field in 2 3 4; do
    line+=" $(printf '%s\n' "${b[@]}" | col $field) | $(printf '%s\n' "${w[@]}" | col $field) |"
    [ -n "$baseline_bin" ] && line+=" $(printf '%s\n' "${o[@]}" | col $field) |"
  done
  echo "$line"
}
rows=${ROWS:-select,connect,tpcb,select500,extended,prepared}
for r in ${rows//,/ }; do
  case $r in
    select) row "-S -c 50 -j 2" -S -c 50 -j 2 ;;
    connect) row "-S -c 50 -j 2 -C" -S -c 50 -j 2 -C ;;
    tpcb) row "TPC-B -c 20 -j 2" -c 20 -j 2 ;;
    select500) row "-S -c 500 -j 2" -S -c 500 -j 2 ;;
    extended) row "-S -c 50 -j 2 -M extended" -S -c 50 -j 2 -M extended ;;
    prepared) row "-S -c 50 -j 2 -M prepared" -S -c 50 -j 2 -M prepared ;;
  esac
done
