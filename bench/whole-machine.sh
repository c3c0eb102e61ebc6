#!/usr/bin/env bash
# What the whole machine spends per transaction behind each pooler, where
# the poolers' own counters (bench/pgbench-compare.sh) see only their own
# process: system-wide user, kernel and idle time and context switches
# (/proc/stat), and TCP segments sent (nstat), over interleaved pgbench
# runs through PgBouncer and wharf. On a small machine pgbench, PostgreSQL
# and the pooler share the cores, and the TPS follows how busy they are
# all kept.
#
#   bench/whole-machine.sh                      # -S, 50 clients, 3 pairs of 8 s
#   ARGS="-S tpcb" PAIRS=2 bench/whole-machine.sh
#   WHARF_BIN=/tmp/wharf-new bench/whole-machine.sh
#
# Needs the PostgreSQL server binaries, pgbouncer and nstat (iproute2),
# installed with apt-get when missing. Other load on the machine shows in
# every column.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
PAIRS=${PAIRS:-3}
CLIENTS=${CLIENTS:-50}
. bench/lib.sh
need pgbouncer
command -v nstat >/dev/null || need iproute2
wharf_bin=$(wharf_binary)
bench_workdir whole

bench_pair

# user+nice, system, idle, iowait, irq+softirq (ticks), then context switches.
machine() { awk '/^cpu / {print $2 + $3, $4, $5, $6, $7 + $8} /^ctxt/ {print $2}' /proc/stat | paste -sd' '; }

describe_machine
echo "pgbench -c $CLIENTS -j 2, $SECONDS_PER_RUN s a run, pool 20, transaction mode; per transaction, whole machine"
echo "| workload | pooler | TPS | user µs | sys µs | idle µs | irq µs | cs | TCP segments |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for row in ${ARGS:-"-S"}; do
  args=(); [ "$row" = tpcb ] || args=("$row")
  for _ in $(seq "$PAIRS"); do
    for name in pgbouncer wharf; do
      port=$bouncer_port; [ "$name" = wharf ] && port=$wharf_port
      before=$(machine); nstat -n >/dev/null
      out=$(tps "$port" -c "$CLIENTS" -j 2 "${args[@]}")
      after=$(machine); segs=$(nstat -z 2>/dev/null | awk '$1 == "TcpOutSegs" {print $2}')
      awk -v row="$row" -v name="$name" -v out="$out" -v b="$before" -v a="$after" -v segs="${segs:-0}" -v hz="$clk_tck" 'BEGIN {
        split(out, o, " "); x = o[2] + 0; split(b, p, " "); split(a, q, " ")
        if (x == 0) { printf "| %s | %s | fails |\n", row, name; exit }
        us = 1e6 / hz / x
        printf "| %s | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %.2f | %.3f |\n", row, name, o[1],
          (q[1] - p[1]) * us, (q[2] - p[2]) * us, (q[3] - p[3]) * us, (q[5] - p[5]) * us, (q[6] - p[6]) / x, segs / x }'
    done
  done
done
