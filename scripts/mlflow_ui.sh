#!/usr/bin/env bash
# The MLflow UI on 127.0.0.1 over the project's SQLite store (tracking.uri: sqlite:///mlflow.db),
# lean: one worker, no extra services.   scripts/mlflow_ui.sh [start|stop]   (MLFLOW_PORT, default 5000)
set -euo pipefail
source "$(dirname "$0")/python_env.sh"
root=$NETADAPT_ROOT
port=${MLFLOW_PORT:-5000}
pidfile=$root/.mlflow-ui.pid
case "${1:-start}" in
  start)
    cd "$root"
    setsid "$NETADAPT_BIN/mlflow" ui --backend-store-uri "sqlite:///$root/mlflow.db" \
      --host 127.0.0.1 --port "$port" --workers 1 > "$root/.mlflow-ui.log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 60); do
      if "$NETADAPT_PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then
        echo "MLflow UI at http://127.0.0.1:$port (log: .mlflow-ui.log)"; exit 0
      fi
      sleep 1
    done
    echo "MLflow UI did not start; see .mlflow-ui.log" >&2; exit 1 ;;
  stop)
    if [ -f "$pidfile" ]; then kill -- -"$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
    echo "MLflow UI stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
