# Sourced by scripts/demo, scripts/test and scripts/bench: make .venv and install Tidings
# into it, and install the Debian tools they drive.
# Usage: ensure_venv EXTRAS   (EXTRAS is "" or "dev");  need BIN PACKAGE
set -euo pipefail

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Tidings needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

ensure_venv() {
    local extras="$1" root stamp want py
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    cd "$root"
    if [ ! -x .venv/bin/python ]; then
        py="$(find_python)"
        echo "creating .venv with $py" >&2
        "$py" -m venv .venv || {
            echo "error: '$py -m venv' failed; on Debian install the venv module: apt-get install python3-venv" >&2
            return 1
        }
    fi
    stamp=".venv/.tidings-installed"
    want="$(cat pyproject.toml setup.py tidings/wire/_speedups.c | sha256sum | cut -c1-16)-${extras:-base}"
    if [ ! -f "$stamp" ] || ! grep -qx -- "$want" "$stamp"; then
        echo "installing Tidings${extras:+ with [$extras]} into .venv" >&2
        .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >&2
        if [ -n "$extras" ]; then
            .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]" >&2
        else
            .venv/bin/python -m pip install -q --disable-pip-version-check -e . >&2
        fi
        # A dev install also satisfies a plain one.
        echo "$want" >"$stamp"
        if [ "$extras" = dev ]; then echo "${want%-dev}-base" >>"$stamp"; fi
    fi
}

# need BIN PACKAGE: make sure BIN is on PATH. Installed from Debian's PACKAGE when it is
# missing and we are root; otherwise stop, saying what to install.
need() {
    local bin="$1" pkg="$2"
    command -v "$bin" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "$bin missing: installing Debian's $pkg" >&2
        { [ -n "${apt_updated:-}" ] || apt-get update -qq; } >&2 && apt_updated=1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >&2
    fi
    command -v "$bin" >/dev/null 2>&1 || {
        echo "error: $bin is needed (Debian: apt-get install $pkg)" >&2
        exit 1
    }
}
