#!/usr/bin/env bash
# Turn the single-node SLURM of ../shared/tools/slurm-local.sh into a two-node one on this
# machine, and back. Run as root, after `slurm-local.sh up`.
#
#   bash slurm/local_nodes.sh up      # nodes <host> and <host>-node2, each with its own slurmd
#   bash slurm/local_nodes.sh status
#   bash slurm/local_nodes.sh down    # back to slurm-local.sh's single node
#
# Debian's slurmd 22.05 is built without --enable-multiple-slurmd (`slurmd -N` is refused), so the
# second slurmd runs in its own UTS and mount namespaces (unshare): its hostname is the second
# node's name (slurmd finds its NodeName line by hostname, and its tasks see that hostname), and
# bind mounts give it its own pid file, spool and log folders under the same configured paths.
# Both daemons listen on 127.0.0.1 on their own port (NodeName ... Port=); the node names resolve
# to 127.0.0.1 through /etc/hosts. Processes are not isolated otherwise: both nodes share the
# machine's cores, memory, /tmp and network, which is what the tests need (placement, hostnames,
# one task per node, a node's slurmd or task killed alone).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
SAVED=/etc/slurm/slurm.conf.single-node
RUNDIR=/run/slurm-local
NODE="$(hostname -s)"
NODE2="${NODE}-node2"
STATE=/var/lib/structgen-slurm/"$NODE2"      # the second slurmd's run/, spool/ and log/
PORT2=6828

log() { printf '[local_nodes] %s\n' "$*" >&2; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {  # stop <pid file>: TERM, then KILL after 10 s
  local pf="$1"
  pid_alive "$pf" || return 0
  local pid; pid="$(cat "$pf")"
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

wait_idle() {  # wait_idle <node>...: until sinfo shows each idle (or mixed/allocated)
  for node in "$@"; do
    for _ in $(seq 1 150); do
      case "$(sinfo -h -n "$node" -o '%T' 2>/dev/null)" in idle|mixed|allocated) continue 2;; esac
      sleep 0.2
    done
    log "node $node did not come up; see /var/log/slurm/slurmctld.log"; sinfo -N >&2; exit 1
  done
}

restart_controller() {
  stop "$RUNDIR/slurmd.pid"
  stop "$RUNDIR/slurmctld.pid"
  slurmctld -c                              # -c: the node list changed; start from a clean state
  for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  slurmd
}

start_second_slurmd() {
  mkdir -p "$STATE"/run "$STATE"/spool "$STATE"/log
  # --fork: the namespaces belong to a child; setsid + nohup: it outlives this script.
  setsid nohup unshare --uts --mount --propagation private --fork bash -c "
    hostname '$NODE2'
    mount --bind '$STATE/run' '$RUNDIR'
    mount --bind '$STATE/spool' /var/spool/slurmd
    mount --bind '$STATE/log' /var/log/slurm
    exec slurmd -D" >"$STATE/slurmd.out" 2>&1 < /dev/null &
}

up() {
  [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
  scontrol ping 2>/dev/null | grep -q UP || { log "no SLURM running: run slurm-local.sh up first"; exit 1; }
  if grep -q "^NodeName=$NODE2 " "$CONF" && pid_alive "$STATE/run/slurmd.pid"; then
    log "already two nodes"; return
  fi
  [ -f "$SAVED" ] || cp "$CONF" "$SAVED"
  local line; line="$(grep "^NodeName=$NODE " "$SAVED")"
  local cpus mem
  cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")"
  mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$line")"
  # Each node offers the machine's cores (they are shared) and half its memory.
  { grep -v "^NodeName=" "$SAVED" | grep -v "^PartitionName="
    echo "NodeName=$NODE NodeAddr=127.0.0.1 Port=6818 CPUs=$cpus RealMemory=$((mem / 2)) State=UNKNOWN"
    echo "NodeName=$NODE2 NodeAddr=127.0.0.1 Port=$PORT2 CPUs=$cpus RealMemory=$((mem / 2)) State=UNKNOWN"
    grep "^PartitionName=" "$SAVED"; } > "$CONF.new"
  mv "$CONF.new" "$CONF"
  getent hosts "$NODE2" >/dev/null || echo "127.0.0.1 $NODE2" >> /etc/hosts
  restart_controller
  start_second_slurmd
  wait_idle "$NODE" "$NODE2"
  log "two nodes up: $NODE, $NODE2"
  sinfo -N
}

down() {
  stop "$STATE/run/slurmd.pid"
  if [ -f "$SAVED" ]; then
    mv "$SAVED" "$CONF"
    restart_controller
    wait_idle "$NODE"
    log "back to one node: $NODE"
  fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) sinfo -N; scontrol ping ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
