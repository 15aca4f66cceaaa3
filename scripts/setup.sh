#!/usr/bin/env bash
# Set up fedmtl in ./.venv: CPU torch first (a plain `torch` would pull a multi-GB CUDA build),
# then fedmtl itself in editable mode with the dashboard (plotly). `--tracking` adds TensorBoard
# and MLflow; `--test` adds those and the test tools and, as root, iproute2 for the
# network-namespace deployment tests and Debian's chromium + chromedriver for the dashboard's
# browser test. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WITH_TESTS=0
EXTRAS="dashboard"
for arg in "$@"; do
    case "$arg" in
        --test) WITH_TESTS=1 ;;
        --tracking) EXTRAS="dashboard,tracking" ;;
        *) echo "fedmtl setup: unknown option $arg (use --test or --tracking)" >&2; exit 2 ;;
    esac
done

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "fedmtl setup: installing torch 2.13.0 (CPU build)"
    .venv/bin/python -m pip install -q "torch==2.13.0"
fi
if [ "$WITH_TESTS" = 1 ]; then
    echo "fedmtl setup: installing fedmtl with test tools"
    .venv/bin/python -m pip install -q -e ".[test]"
    if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "fedmtl setup: installing iproute2 (network namespaces for deployment tests)"
        (apt-get update -qq && apt-get install -y -qq iproute2) >/dev/null 2>&1 || echo "fedmtl setup: iproute2 unavailable; namespace tests will skip"
    fi
    if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "fedmtl setup: installing chromium and chromium-driver (the dashboard's browser test)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver </dev/null) >/dev/null 2>&1 \
            || echo "fedmtl setup: chromium unavailable; the dashboard's browser test will skip"
    fi
else
    echo "fedmtl setup: installing fedmtl (extras: $EXTRAS)"
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
fi
echo "fedmtl setup: ready ($(.venv/bin/python -c 'import flwr, torch; print(f"flwr {flwr.__version__}, torch {torch.__version__}")'))"
