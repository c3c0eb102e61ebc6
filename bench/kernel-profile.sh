#!/usr/bin/env bash
# Where each pooler's own CPU goes, kernel included: perf samples of the
# pooler process (call stacks, kernel and user space) under pgbench, each
# sample put in one of four kinds by its stack, and the pooler's CPU per
# transaction (utime+stime from /proc, as bench/pgbench-compare.sh counts
# it) split by their shares:
#   - waking a peer: a send that wakes the process reading the other end
#     (PostgreSQL's backend, pgbench), inside the sender's system call;
#   - waking its own threads (futex, eventfd): a multi-threaded pooler's
#     cost that a single-threaded one does not pay;
#   - switched: the pooler's own context switches (going to sleep in
#     epoll_wait, and being preempted by the process its send woke);
#   - other kernel: TCP, epoll, copies, system call entry;
#   - user: the pooler's own code.
# Waking a peer and being switched are paid per message by any pooler on
# the same machine; with the rest of the kernel's work they set how low
# the CPU per transaction can go.
#
#   bench/kernel-profile.sh                      # -S, 50 clients, 8 s each
#   ARGS="-S tpcb -C" bench/kernel-profile.sh    # tpcb: pgbench's default script
#   WHARF_BIN=/tmp/wharf-new bench/kernel-profile.sh
#   FREQ=999 bench/kernel-profile.sh             # samples a second (249): perf's own cost
#                                                # on a VM grows with it
#
# Needs perf (Debian's linux-perf; Ubuntu's linux-tools-* packages), the
# PostgreSQL server binaries and pgbouncer (installed with apt-get when
# missing), and permission to profile other processes and read kernel
# symbols (root, or kernel.perf_event_paranoid <= 1 and kptr_restrict 0).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
CLIENTS=${CLIENTS:-50}
. bench/lib.sh
need pgbouncer
command -v perf >/dev/null || need linux-perf
wharf_bin=$(wharf_binary)
bench_workdir kprof

bench_pair
bouncer_pid=$(pgrep -n -f "pgbouncer $work/pgbouncer.ini")
wharf_pid=$(pgrep -n -f "serve $work/wharf.ini")

# Reads `perf script` output; prints the five kinds' shares of the
# samples, and their number.
classify() {
  python3 -c '
import sys
KINDS = ("wake", "own", "switch", "kernel", "user")
kinds = dict.fromkeys(KINDS, 0)
stack = []
def done():
    if not stack:
        return
    names = " ".join(name for name, _ in stack)
    if "futex_wake" in names or "eventfd_write" in names:
        kinds["own"] += 1
    elif "sock_def_readable" in names or "try_to_wake_up" in names or "__wake_up" in names:
        kinds["wake"] += 1
    elif "finish_task_switch" in names or "__schedule" in names:
        kinds["switch"] += 1
    elif stack[0][1]:
        kinds["kernel"] += 1
    else:
        kinds["user"] += 1
    stack.clear()
for line in sys.stdin:
    parts = line.split()
    if not parts:
        done()
        continue
    # A frame: "address symbol+offset (object)"; kernel addresses are in
    # the top half of the address space, whatever module they are in.
    try:
        address = int(parts[0], 16)
    except ValueError:
        continue
    name = parts[1].split("+")[0] if len(parts) > 1 else "?"
    stack.append((name, address >= 0xffff800000000000))
done()
total = sum(kinds.values())
if total == 0:
    sys.exit("no samples: did perf record run, and may it profile other processes?")
print(" ".join("%.3f" % (kinds[k] / total) for k in KINDS), total)
'
}

# Both pools filled and warm before anything is counted.
for port in "$bouncer_port" "$wharf_port"; do
  SECONDS_PER_RUN=2 tps "$port" -c "$CLIENTS" -j 2 -S >/dev/null
done

describe_machine ", kernel $(uname -r)"
echo "pgbench -c $CLIENTS -j 2, $SECONDS_PER_RUN s a run, pool 20, transaction mode; the pooler's CPU per transaction, split by perf samples"
echo "| workload | pooler | TPS | CPU µs/xact | waking a peer | waking its own threads | switched | other kernel | user | samples |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
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
    shares=$(perf script -i "$work/$name.perf" -F ip,sym,dso 2>"$work/$name.perf.err" | classify)
    awk -v row="$row" -v name="$name" -v out="$out" -v b="$before" -v a="$after" -v s="$shares" -v hz="$clk_tck" 'BEGIN {
      split(out, o, " "); x = o[2] + 0; split(s, k, " ")
      if (x == 0) { printf "| %s | %s | fails |\n", row, name; exit }
      cpu = (a - b) / hz * 1e6 / x
      printf "| %s | %s | %.0f | %.2f |", row, name, o[1], cpu
      for (i = 1; i <= 5; i++) printf " %.2f (%.0f %%) |", cpu * k[i], 100 * k[i]
      printf " %d |\n", k[6]
    }'
  done
done
