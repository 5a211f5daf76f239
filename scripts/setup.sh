#!/usr/bin/env bash
# Set up netadapt on a fresh Debian/Ubuntu machine: the Fashion-MNIST package, a virtual
# environment in .venv, and this project (editable) with its pinned torch/torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' > .venv/pip.log 2>&1; then
  cat .venv/pip.log
  exit 1
fi
.venv/bin/python -c "import torch, torchvision, torch_pruning; print('netadapt setup ok: torch', torch.__version__)"
