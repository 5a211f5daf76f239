#!/usr/bin/env bash
# Start / stop a local Prefect server on 127.0.0.1 with its SQLite database in .prefect/.
#   scripts/prefect_server.sh start|stop|status     (NETADAPT_PREFECT_PORT, default 4200)
set -euo pipefail
source "$(dirname "$0")/prefect_env.sh"
pidfile=$PREFECT_HOME/server.pid
case "${1:-start}" in
  start)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "prefect server already running (pid $(cat "$pidfile")) at $PREFECT_UI_URL"; exit 0
    fi
    PREFECT_API_URL= setsid "$PREFECT_BIN" server start --host 127.0.0.1 --port "$NETADAPT_PREFECT_PORT" \
      > "$PREFECT_HOME/server.log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 120); do
      if "$NETADAPT_PYTHON" - <<PY 2>/dev/null
import urllib.request; urllib.request.urlopen("$PREFECT_API_URL/health", timeout=1)
PY
      then echo "prefect server up at $PREFECT_UI_URL (log: $PREFECT_HOME/server.log)"; exit 0; fi
      sleep 1
    done
    echo "prefect server did not answer in 120 s; see $PREFECT_HOME/server.log" >&2; exit 1 ;;
  stop)
    stop_pidfile "$pidfile"
    echo "prefect server stopped" ;;
  status)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "running at $PREFECT_UI_URL"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
