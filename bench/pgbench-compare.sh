#!/usr/bin/env bash
# Compares pgbench throughput directly against PostgreSQL, through PgBouncer
# and through wharf, on this machine, with the same pooler settings
# (transaction mode, pool of 20). Prints TPS medians and wharf/PgBouncer.
#
#   bench/pgbench-compare.sh            # 3 runs of 10 s per row
#   RUNS=5 SECONDS_PER_RUN=20 bench/pgbench-compare.sh
#   WHARF_BASELINE=/tmp/wharf-old bench/pgbench-compare.sh
#                                       # A/B: also an older wharf build,
#                                       # interleaved with the others
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

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if ! command -v pgbouncer >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
fi
# The Debian package starts its own service on 6432; it is not ours.
systemctl stop pgbouncer 2>/dev/null || service pgbouncer stop 2>/dev/null || true

cargo build --release -q -p wharf-cli
wharf_bin=$PWD/target/release/wharf

run_as=()
if [ "$(id -u)" = 0 ]; then run_as=(runuser -u postgres --); fi

work=$(mktemp -d /tmp/wharf-bench-XXXXXX)
chmod 755 "$work"
chown postgres "$work" 2>/dev/null || true
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port); bouncer_port=$(free_port); wharf_port=$(free_port); baseline_port=$(free_port)
baseline_bin=${WHARF_BASELINE:-}

ulimit -n 8192 2>/dev/null || true
"${run_as[@]}" "$pg_bin/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=700 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off" \
  start >/dev/null
"$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s "$SCALE" postgres >/dev/null 2>&1

echo '"postgres" "postgres"' > "$work/userlist.txt"
write_ini() { # port file
  cat > "$2" <<EOF
[databases]
postgres = host=127.0.0.1 port=$pg_port dbname=postgres user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 2000
logfile = $work/$(basename "$2" .ini).log
pidfile = $work/$(basename "$2" .ini).pid
log_connections = 0
log_disconnections = 0
EOF
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
for port in "${ports[@]}"; do
  for _ in $(seq 100); do
    "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

tps() { # port args...
  local port=$1; shift
  "$pg_bin/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -T "$SECONDS_PER_RUN" "$@" postgres 2>/dev/null \
    | awk '/^tps = / {print $3; found=1} END {if (!found) print 0}' | head -n 1
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "pgbench: $("$pg_bin/pgbench" --version); $(pgbouncer --version | head -n 1); wharf $(git rev-parse --short HEAD)"
echo "runs per cell: $RUNS x ${SECONDS_PER_RUN}s, median TPS; pool size $POOL_SIZE, transaction mode"
echo
if [ -n "$baseline_bin" ]; then
  echo "baseline: $baseline_bin"
  printf '| %-28s | %10s | %10s | %10s | %10s | %14s | %14s |\n' "workload" "direct" "pgbouncer" "wharf" "baseline" "wharf/pgbouncer" "wharf/baseline"
  printf '|%s|%s|%s|%s|%s|%s|%s|\n' "------------------------------" "------------" "------------" "------------" "------------" "----------------" "----------------"
else
  printf '| %-28s | %10s | %10s | %10s | %14s |\n' "workload" "direct" "pgbouncer" "wharf" "wharf/pgbouncer"
  printf '|%s|%s|%s|%s|%s|\n' "------------------------------" "------------" "------------" "------------" "----------------"
fi
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {print (b > 0 ? a / b : 0)}'; }
row() { # label pgbench-args...
  local label=$1; shift
  local d=() b=() w=() o=()
  for _ in $(seq "$RUNS"); do
    # Interleave the targets so drift hits them alike.
    d+=("$(tps "$pg_port" "$@")")
    b+=("$(tps "$bouncer_port" "$@")")
    w+=("$(tps "$wharf_port" "$@")")
    if [ -n "$baseline_bin" ]; then o+=("$(tps "$baseline_port" "$@")"); fi
  done
  local dm bm wm
  dm=$(printf '%s\n' "${d[@]}" | median)
  bm=$(printf '%s\n' "${b[@]}" | median)
  wm=$(printf '%s\n' "${w[@]}" | median)
  if [ -n "$baseline_bin" ]; then
    local om
    om=$(printf '%s\n' "${o[@]}" | median)
    printf '| %-28s | %10.0f | %10.0f | %10.0f | %10.0f | %14.2f | %14.2f |\n' "$label" "$dm" "$bm" "$wm" "$om" \
      "$(ratio "$wm" "$bm")" "$(ratio "$wm" "$om")"
  else
    printf '| %-28s | %10.0f | %10.0f | %10.0f | %14.2f |\n' "$label" "$dm" "$bm" "$wm" "$(ratio "$wm" "$bm")"
  fi
}
rows=${ROWS:-select,connect,tpcb,select500}
for r in ${rows//,/ }; do
  case $r in
    select) row "-S -c 50 -j 2" -S -c 50 -j 2 ;;
    connect) row "-S -c 50 -j 2 -C" -S -c 50 -j 2 -C ;;
    tpcb) row "TPC-B -c 20 -j 2" -c 20 -j 2 ;;
    select500) row "-S -c 500 -j 2" -S -c 500 -j 2 ;;
  esac
done
