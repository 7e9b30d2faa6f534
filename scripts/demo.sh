#!/usr/bin/env bash
# The main job: train a small model on the embedded synthetic H&E data, evaluate it, write a table and an overlay.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/pathseg demo "$@"
