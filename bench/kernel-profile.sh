#!/usr/bin/env bash
# Where each pooler's own CPU goes, kernel included: perf samples of the
# pooler process (call stacks, kernel and user space) under pgbench, each
# sample put in one of four kinds by its stack, and the pooler's CPU per
# transaction (utime+stime from /proc, as bench/pgbench-compare.sh counts
# it) split by their shares:
#   - waking a peer: a send that wakes the process reading the other end
#     (PostgreSQL's backend, pgbench), inside the sender's system call;
#   - switched: the pooler's own context switches (going to sleep in
#     epoll_wait, and being preempted by the process its send woke);
#   - other kernel: TCP, epoll, copies, system call entry;
#   - user: the pooler's own code.
# The first two are paid per message by any pooler on the same machine;
# they set how low the CPU per transaction can go.
#
#   bench/kernel-profile.sh                      # -S, 50 clients, 8 s each
#   ARGS="-S tpcb -C" bench/kernel-profile.sh    # tpcb: pgbench's default script
#   WHARF_BIN=/tmp/wharf-new bench/kernel-profile.sh
#   FREQ=999 bench/kernel-profile.sh             # samples a second (249): perf's own cost
#                                                # on a VM grows with it
#
# Needs perf (linux-perf), the PostgreSQL server binaries and pgbouncer
# (installed with apt-get when missing), and permission to profile other
# processes (root, or kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
CLIENTS=${CLIENTS:-50}
. bench/lib.sh
need pgbouncer
command -v perf >/dev/null || need linux-perf
wharf_bin=$(wharf_binary)
bench_workdir kprof

pg_port=$(free_port); bouncer_port=$(free_port); wharf_port=$(free_port)
"${run_as[@]}" "$pg_bin/initdb" -D "$work/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
"${run_as[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
"$pg_bin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s 10 postgres >/dev/null 2>&1
echo '"postgres" "postgres"' > "$work/userlist.txt"
db="host=127.0.0.1 port=$pg_port dbname=postgres user=postgres"
bench_ini pgbouncer "$bouncer_port" "$db" 20 > "$work/pgbouncer.ini"
bench_ini wharf "$wharf_port" "$db" 20 > "$work/wharf.ini"
chown postgres "$work"/* 2>/dev/null || true
"${run_as[@]}" pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 & pids+=($!)
RUST_LOG=warn "$wharf_bin" serve "$work/wharf.ini" >"$work/wharf.out" 2>&1 & pids+=($!)
wait_ready "$bouncer_port"; wait_ready "$wharf_port"
bouncer_pid=$(pgrep -n -f "pgbouncer $work/pgbouncer.ini")
wharf_pid=$(pgrep -n -f "serve $work/wharf.ini")

# Reads `perf script` output; prints the four kinds' shares of the samples.
classify() {
  python3 -c '
import sys
kinds = {"wake": 0, "switch": 0, "kernel": 0, "user": 0}
stack = []
def done():
    if not stack:
        return
    names = " ".join(f[0] for f in stack)
    if "sock_def_readable" in names or "try_to_wake_up" in names or "__wake_up" in names:
        kinds["wake"] += 1
    elif "finish_task_switch" in names or "__schedule" in names:
        kinds["switch"] += 1
    elif stack[0][1]:
        kinds["kernel"] += 1
    else:
        kinds["user"] += 1
    stack.clear()
for line in sys.stdin:
    line = line.strip()
    if not line:
        done()
        continue
    parts = line.split()
    # A frame: "address symbol+offset (object)"; a sample header has no
    # address in hex first.
    if len(parts) >= 2 and all(c in "0123456789abcdef" for c in parts[0]):
        stack.append((parts[1].split("+")[0], "[kernel.kallsyms]" in line))
done()
total = sum(kinds.values()) or 1
print(" ".join("%.3f" % (kinds[k] / total) for k in ("wake", "switch", "kernel", "user")), total)
'
}

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r)"
echo "pgbench -c $CLIENTS -j 2, $SECONDS_PER_RUN s a run, pool 20, transaction mode; the pooler's CPU per transaction, split by perf samples"
echo "| workload | pooler | TPS | CPU µs/xact | waking a peer | switched | other kernel | user | samples |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for row in ${ARGS:-"-S"}; do
  args=(); [ "$row" = tpcb ] || args=("$row")
  for name in pgbouncer wharf; do
    port=$bouncer_port; pid=$bouncer_pid
    [ "$name" = wharf ] && { port=$wharf_port; pid=$wharf_pid; }
    before=$(cpu_ticks "$pid")
    perf record -q -F "${FREQ:-249}" -g -p "$pid" -o "$work/$name.perf" -- sleep "$SECONDS_PER_RUN" >/dev/null 2>&1 &
    recorder=$!
    out=$(tps "$port" -c "$CLIENTS" -j 2 "${args[@]}")
    wait "$recorder" || true
    after=$(cpu_ticks "$pid")
    shares=$(perf script -i "$work/$name.perf" -F ip,sym,dso 2>/dev/null | classify)
    awk -v row="$row" -v name="$name" -v out="$out" -v b="$before" -v a="$after" -v s="$shares" -v hz="$clk_tck" 'BEGIN {
      split(out, o, " "); x = o[2] + 0; split(s, k, " ")
      if (x == 0) { printf "| %s | %s | fails |\n", row, name; exit }
      cpu = (a - b) / hz * 1e6 / x
      printf "| %s | %s | %.0f | %.2f | %.2f (%.0f %%) | %.2f (%.0f %%) | %.2f (%.0f %%) | %.2f (%.0f %%) | %d |\n",
        row, name, o[1], cpu, cpu * k[1], 100 * k[1], cpu * k[2], 100 * k[2], cpu * k[3], 100 * k[3], cpu * k[4], 100 * k[4], k[5]
    }'
  done
done
