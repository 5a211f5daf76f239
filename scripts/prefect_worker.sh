#!/usr/bin/env bash
# Start / stop a process worker for the netadapt-pool work pool (created if missing).
#   scripts/prefect_worker.sh start|stop
set -euo pipefail
source "$(dirname "$0")/prefect_env.sh"
pidfile=$PREFECT_HOME/worker.pid
case "${1:-start}" in
  start)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "worker already running"; exit 0; fi
    "$PREFECT_BIN" work-pool inspect netadapt-pool > /dev/null 2>&1 \
      || "$PREFECT_BIN" work-pool create netadapt-pool --type process > /dev/null
    cd "$NETADAPT_ROOT"
    setsid "$PREFECT_BIN" worker start --pool netadapt-pool --type process > "$PREFECT_HOME/worker.log" 2>&1 &
    echo $! > "$pidfile"
    echo "worker started (log: $PREFECT_HOME/worker.log)" ;;
  stop)
    stop_pidfile "$pidfile"
    echo "worker stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
