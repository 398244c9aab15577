#!/usr/bin/env bash
# Stop the test cluster started by up.sh: cancel all jobs, stop slurmd x2, slurmctld and munged,
# then end job-step daemons left behind. Safe to run repeatedly.  --keep-munge: leave munged.
set -uo pipefail
log() { echo "down.sh: $*"; }
stop() { # stop PIDFILE:NAME...  (TERM, wait up to 15 s, then KILL)
    local spec f name pid pids=()
    for spec in "$@"; do
        f=${spec%%:*}; name=${spec#*:}
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
            log "stopping $name ($pid)"; kill -TERM "$pid" 2>/dev/null; pids+=("$pid")
        fi
        rm -f "$f"
    done
    for _ in $(seq 150); do
        local left=0
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && left=1; done
        [ "$left" = 0 ] && return 0
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null
}
if scontrol ping 2>/dev/null | grep -q 'is UP'; then
    jobs=$(squeue -h -o '%A' 2>/dev/null | sort -u)
    if [ -n "$jobs" ]; then
        log "cancelling jobs"
        scancel $jobs 2>/dev/null
        for _ in $(seq 40); do
            squeue -h -t all -o '%T' 2>/dev/null | grep -qE '^(PENDING|RUNNING|COMPLETING|CONFIGURING|REQUEUED)$' || break
            sleep 0.5
        done
    fi
fi
stop /run/slurmd-n1.pid:slurmd /run/slurmd-n2.pid:slurmd /run/slurmctld.pid:slurmctld
[ "${1:-}" = --keep-munge ] || stop /run/munge/munged.pid:munged
for p in $(ps -e -o pid=,comm= | awk '$2 == "slurmstepd" {print $1}'); do
    kill -KILL $(ps -o pid= --ppid "$p") "$p" 2>/dev/null
done
log "done"
