#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install Motif with its dev tools, only when something changed.
# Sourced by start.sh and scripts/test.sh so both work on a fresh machine with nothing but Python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOTIF_VENV:-$root/.venv}"

pick_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Motif needs Python >= 3.11 (python3.11 or newer on PATH)" >&2
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  py="$(pick_python)"
  echo "creating $venv with $py" >&2
  "$py" -m venv "$venv" 2>/dev/null || {
    # Debian/Ubuntu ship venv separately; install it when we may.
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$py" -m venv "$venv"
    else
      echo "could not create a virtual environment: install python3-venv" >&2; exit 1
    fi
  }
fi

# Reinstall only when the dependency list changed (a stamp holds pyproject's hash).
stamp="$venv/.motif-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing Motif and its dependencies into $venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch first and pinned, so the resolver never swaps in another multi-GB build.
  "$venv/bin/python" -m pip install -q "torch==${MOTIF_TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$venv/bin/python" -m pip install -q -e "$root[dev]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$venv/bin/python" -c "import motif, torch, transformers, av, soxr" # fail loudly if the install did not take
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
