#!/usr/bin/env bash
# Start a real two-node Slurm cluster on this host for the tests (Debian 12: slurm-wlm 22.05 and
# munge): munged, slurmctld, and `slurmd -N n1` / `slurmd -N n2`. Idempotent: running daemons
# are kept; exits 0 when both nodes are up, 1 with the log tails otherwise. Needs root.
#   AIN_SLURM_CPUS (2)  AIN_SLURM_MEM_MB (4000)  AIN_SLURM_TIMEOUT (60 s)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=/etc/slurm/slurm.conf
CPUS=${AIN_SLURM_CPUS:-2}
MEM_MB=${AIN_SLURM_MEM_MB:-4000}
TIMEOUT=${AIN_SLURM_TIMEOUT:-60}
NODES=(n1 n2)
log() { echo "up.sh: $*"; }
die() { echo "up.sh: ERROR: $*" >&2; exit 1; }
alive() { # alive PIDFILE NAME
    local pid; [ -s "$1" ] && pid=$(cat "$1") && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}
[ "$(id -u)" = 0 ] || die "run as root (the daemons run as root, munged as user munge)"

pkgs=(munge slurmctld slurmd slurm-client)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null || die "apt-get install failed"
fi

# Node names must resolve: torch rendezvous uses MASTER_ADDR=n1.
getent hosts n1 >/dev/null && getent hosts n2 >/dev/null || echo "127.0.0.1 n1 n2  # ain-test-cluster" >>/etc/hosts

if [ ! -s /etc/munge/munge.key ]; then
    install -d -o munge -g munge -m 0700 /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key --force
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged failed; see /var/log/munge/munged.log"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munge round trip failed"
fi

new_conf=$(sed -e "s/@CTLD_HOST@/$(hostname -s 2>/dev/null || hostname)/" -e "s/@CPUS@/$CPUS/g" \
    -e "s/@MEM_MB@/$MEM_MB/g" "$HERE/slurm.conf.in")
if [ ! -f "$CONF" ] || [ "$new_conf" != "$(cat "$CONF")" ]; then
    if alive /run/slurmctld.pid slurmctld || alive /run/slurmd-n1.pid slurmd || alive /run/slurmd-n2.pid slurmd; then
        log "$CONF changed: restarting the Slurm daemons"
        "$HERE/down.sh" --keep-munge
    fi
    install -d -m 0755 /etc/slurm
    printf '%s\n' "$new_conf" >"$CONF"
    chmod 0644 "$CONF"
fi
install -d -m 0755 /var/spool/slurmctld /var/log/slurm /var/spool/slurmd/n1 /var/spool/slurmd/n2

if ! alive /run/slurmctld.pid slurmctld; then
    log "starting slurmctld (fresh state)"
    slurmctld -c || die "slurmctld failed; see /var/log/slurm/slurmctld.log"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer: $(tail -n 20 /var/log/slurm/slurmctld.log)"

# With a UTS namespace each node has its own hostname inside jobs.
uts=0; unshare --uts true 2>/dev/null && uts=1
for n in "${NODES[@]}"; do
    alive "/run/slurmd-$n.pid" slurmd && continue
    log "starting slurmd $n"
    if [ "$uts" = 1 ]; then unshare --uts sh -c "hostname $n && exec slurmd -N $n"; else slurmd -N "$n"; fi ||
        die "slurmd $n failed; see /var/log/slurm/slurmd-$n.log"
done

deadline=$((SECONDS + TIMEOUT))
while :; do
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
    ok=$(grep -cE '^n[12] (idle|mixed|allocated|completing)$' <<<"$states" || true)
    [ "$ok" = 2 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        sinfo -N -l >&2 || true
        for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-n1.log /var/log/slurm/slurmd-n2.log; do
            echo "--- $f" >&2; grep -v pmix "$f" 2>/dev/null | tail -n 8 >&2 || true
        done
        die "nodes not up after ${TIMEOUT}s"
    fi
    sleep 0.5
done
log "cluster up: $(tr '\n' ' ' <<<"$states")"
