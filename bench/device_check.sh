#!/usr/bin/env bash
# The GPU options' figures: images/s and peak GPU memory of the paper profile's first U-Net and
# first classifier at 512 px under each precision, jit_compile off and on (bench/device_check.py).
#   bench/device_check.sh                 # needs a GPU; ~8 minutes on one H200
#   bench/device_check.sh --cpu-smoke     # the script's logic on a CPU, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" bench/device_check.py "$@"
