#!/usr/bin/env bash
# The README's first command. On a fresh machine: create .venv (Python >= 3.11), install Motif and what it
# needs (only when pyproject.toml changed), then serve the API on HOST:PORT (default 0.0.0.0:8000).
# Settings come from the environment and ./.env (see .env.example); arguments go to `motif serve`,
# e.g. `bash start.sh --port 9000`. Offline, no GPU: GENERATION_MODEL=tiny EMBEDDING_MODEL=tiny bash start.sh
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec python -m motif.cli serve "$@"
