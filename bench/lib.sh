# Helpers shared by the bench scripts (sourced, not run, from the
# repository's root): the PostgreSQL binaries, the wharf build, ports, the
# pgbench runner and the per-process CPU and context-switch counters.
# tps() expects SECONDS_PER_RUN to be set.

# The newest PostgreSQL server binaries on this machine.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

# initdb and postgres refuse root: run them as postgres then.
run_as=()
if [ "$(id -u)" = 0 ]; then run_as=(runuser -u postgres --); fi

# Installs the Debian packages of the commands among "$@" that are
# missing. PgBouncer's package starts its own service on 6432: stopped.
need() {
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    fi
  done
  systemctl stop pgbouncer 2>/dev/null || service pgbouncer stop 2>/dev/null || true
}

# The wharf binary to measure: $WHARF_BIN, else a release build of this
# tree.
wharf_binary() {
  if [ -n "${WHARF_BIN:-}" ]; then
    echo "$WHARF_BIN"
  else
    cargo build --release -q -p wharf-cli >&2
    echo "$PWD/target/release/wharf"
  fi
}

# "machine: N cores, <CPU model>", then $1 (a version, say) if given.
describe_machine() {
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)${1:-}"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# The median of field n of the lines on stdin.
col() { awk -v n="$1" '{print $n}' | median; }

tps() { # port args...: "TPS transactions"
  local port=$1; shift
  "$pg_bin/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -T "$SECONDS_PER_RUN" "$@" postgres 2>/dev/null \
    | awk '/^number of transactions actually processed: / {split($6, n, "/"); x=n[1]} /^tps = / {t=$3} END {print (t ? t : 0), (x ? x : 0)}'
}

clk_tck=$(getconf CLK_TCK)
# CPU time (utime + stime of every thread, in clock ticks) and context
# switches (voluntary + involuntary, summed over its threads) of a process.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The system (kernel) part of it. Most kernels split the two by sampling at
# each tick and scale them so that their sum is the exact run time: the
# split is an estimate, good over a 10 s run.
sys_ticks() { awk '{print $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
ctx_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null \
    | awk '/^(non)?voluntary_ctxt_switches:/ {n += $2} END {print n + 0}'
}

# A pooler's ini as the benches write it, on stdout (callers add lines
# after it): one database "postgres" with the settings $3, listening on
# 127.0.0.1:$2, trust logins from $work/userlist.txt, transaction mode, a
# pool of $4, $work/$1.log and $work/$1.pid, quiet logs.
# BENCH_INI adds lines to [pgbouncer] for both poolers, WHARF_INI for
# wharf's alone (a setting to weigh, e.g. WHARF_INI='query_wait_notify = 0').
bench_ini() { # name port database-settings pool-size
  cat <<INI
[databases]
postgres = $3
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $4
logfile = $work/$1.log
pidfile = $work/$1.pid
log_connections = 0
log_disconnections = 0
${BENCH_INI:-}
$([[ $1 == wharf* ]] && echo "${WHARF_INI:-}")
INI
}

# A temp dir for the run in $work (/tmp/wharf-$1-…), open to the postgres
# user, and a trap that, at exit, kills the processes in $pids, stops every
# PostgreSQL cluster made under $work and removes it (not with KEEP_WORK=1).
bench_workdir() {
  work=$(mktemp -d "/tmp/wharf-$1-XXXXXX")
  chmod 755 "$work"
  chown postgres "$work" 2>/dev/null || true
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local pid version
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for version in "$work"/*/PG_VERSION; do
    [ -e "$version" ] || continue
    "${run_as[@]}" "$pg_bin/pg_ctl" -D "$(dirname "$version")" -m immediate stop >/dev/null 2>&1 || true
  done
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}

# Waits until a pooler answers on port.
wait_ready() {
  for _ in $(seq 100); do
    "$pg_bin/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1 && return
    sleep 0.1
  done
}

# A throwaway PostgreSQL (pgbench scale 10) in $work, with PgBouncer and
# the wharf of $wharf_bin in front of it on the same ini (pool 20,
# transaction mode), both answering: sets pg_port, bouncer_port and
# wharf_port. Needs bench_workdir first.
bench_pair() {
  pg_port=$(free_port); bouncer_port=$(free_port); wharf_port=$(free_port)
  "${run_as[@]}" "$pg_bin/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
  "${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
    -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
  "$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s 10 postgres >/dev/null 2>&1
  echo '"postgres" "postgres"' > "$work/userlist.txt"
  local db="host=127.0.0.1 port=$pg_port dbname=postgres user=postgres"
  bench_ini pgbouncer "$bouncer_port" "$db" 20 > "$work/pgbouncer.ini"
  bench_ini wharf "$wharf_port" "$db" 20 > "$work/wharf.ini"
  chown postgres "$work"/* 2>/dev/null || true
  "${run_as[@]}" pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 & pids+=($!)
  RUST_LOG=warn "$wharf_bin" serve "$work/wharf.ini" >"$work/wharf.out" 2>&1 & pids+=($!)
  wait_ready "$bouncer_port"; wait_ready "$wharf_port"
}
