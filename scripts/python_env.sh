# Sourced by the scripts: the Python environment netadapt is installed in, so that `pip install .`
# into any venv or conda env works. NETADAPT_PYTHON wins; else the active venv or conda env; else
# the checkout's .venv (scripts/setup.sh); else python3 on PATH. Tools (prefect, mlflow, dvc) are
# taken from beside that interpreter.
NETADAPT_ROOT=${NETADAPT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export NETADAPT_ROOT
if [ -z "${NETADAPT_PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then NETADAPT_PYTHON=$VIRTUAL_ENV/bin/python
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then NETADAPT_PYTHON=$CONDA_PREFIX/bin/python
  elif [ -x "$NETADAPT_ROOT/.venv/bin/python" ]; then NETADAPT_PYTHON=$NETADAPT_ROOT/.venv/bin/python
  else NETADAPT_PYTHON=$(command -v python3)
  fi
fi
export NETADAPT_PYTHON
NETADAPT_BIN=$(dirname "$NETADAPT_PYTHON")
if ! "$NETADAPT_PYTHON" -c "import netadapt_core" 2>/dev/null; then
  echo "netadapt is not installed for $NETADAPT_PYTHON; run scripts/setup.sh, or pip install . in your environment, or set NETADAPT_PYTHON" >&2
  exit 2
fi
