#!/usr/bin/env bash
# Create .venv and install the project with every extra. Idempotent: re-runs only when
# pyproject.toml or the torch choice changed.
#
# Python: PYTHON=/path/to/python3.x chooses the interpreter (3.11 or newer, else exit 2 with the
# reason). Without it the first of python3, python3.11 .. python3.14 that is 3.11+ is used. A
# .venv whose interpreter is older than 3.11, or no longer runs, is rebuilt; so is one of another
# minor version than an explicit PYTHON=.
#
# torch: installed first and on its own, as an exact build, so that the `train` extra's range
# (<2.14) is already satisfied and the project install never pulls PyPI's default Linux build
# (CUDA, with several GB of nvidia-* wheels). Which build comes from TORCH_INDEX_URL:
#   https://download.pytorch.org/whl/cpu     the default: torch==2.13.0+cpu
#   https://download.pytorch.org/whl/cu126   a CUDA build (torch==2.13.0+cu126; any index of that site)
#   (empty: TORCH_INDEX_URL=)                whatever pip's own configuration resolves for torch==2.13.0
# Before contacting that index, setup asks pip which versions its own configuration offers
# (`pip index versions`: index pages and find-links only, nothing is downloaded). When that
# already includes the wanted build (a wheelhouse in find-links, a mirror, an offline machine),
# torch is installed from there and the index is never contacted, so a machine that cannot reach
# it does not wait on pip's retries (measured where the host does not resolve: 9 s of retries; where
# packets are dropped each of pip's 6 tries waits PIP_DEFAULT_TIMEOUT). Otherwise torch
# comes from the index alone (`--index-url`, `--no-deps`, as deploy/trainer.Dockerfile does): an
# unreachable index then fails with a message instead of falling back to PyPI's CUDA build, and
# torch's own dependencies come with the project install. On macOS PyPI's torch is the CPU build.
#
# SETUP_DRY_RUN=1 prints the choices and the commands instead of running them; nothing is created.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0  # = deploy/constraints-train.txt and deploy/trainer.Dockerfile (tests/test_setup.py)
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
dry=${SETUP_DRY_RUN:-}

note() { echo "setup: $*" >&2; }
fail() { echo "setup: $*" >&2; exit 2; }
run() {
    if [ -n "$dry" ]; then echo "+ $*"; else "$@"; fi
}
# "3.11.7", or nothing when the interpreter does not run.
version_of() { "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null | tail -n 1 || true; }
new_enough() {  # version string >= 3.11
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] && { [ "$major" -gt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -ge 11 ]; }; }
}
minor_of() { cut -d. -f1,2 <<<"$1"; }

# ----------------------------------------------------------------------------- the interpreter
python=""
python_version=""
if [ -n "${PYTHON:-}" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || fail "PYTHON=$PYTHON: no such interpreter"
    python_version=$(version_of "$PYTHON")
    [ -n "$python_version" ] || fail "PYTHON=$PYTHON does not run"
    new_enough "$python_version" || fail "PYTHON=$PYTHON is Python $python_version; this project needs 3.11 or newer"
    python=$PYTHON
else
    for candidate in python3 python3.11 python3.12 python3.13 python3.14; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        version=$(version_of "$candidate")
        if [ -n "$version" ] && new_enough "$version"; then
            python=$candidate
            python_version=$version
            break
        fi
    done
fi

# ----------------------------------------------------------------------------- the virtual environment
rebuild=""
if [ -e .venv ]; then
    venv_version=$(version_of .venv/bin/python)
    if [ -z "$venv_version" ]; then
        rebuild="its interpreter (.venv/bin/python) is missing or does not run"
    elif ! new_enough "$venv_version"; then
        rebuild="it was made by Python $venv_version, older than 3.11"
    elif [ -n "${PYTHON:-}" ] && [ "$(minor_of "$venv_version")" != "$(minor_of "$python_version")" ]; then
        rebuild="it was made by Python $venv_version and PYTHON=$PYTHON is $python_version"
    fi
fi
fresh=""
if [ -n "$rebuild" ] || [ ! -e .venv ]; then
    [ -n "$python" ] || fail "no Python 3.11 or newer found (tried python3, python3.11 .. python3.14); install one, or set PYTHON=/path/to/python3.11"
    fresh=1
fi

# ----------------------------------------------------------------------------- the torch build
variant=""  # the wheel's local version label: cpu, cu126, rocm6.4, xpu
if [ -n "$TORCH_INDEX_URL" ] && [ "$(uname -s)" != Darwin ]; then
    label=$(basename "${TORCH_INDEX_URL%/}")
    if [[ "$label" =~ ^(cpu|cu[0-9]+|rocm[0-9.]+|xpu)$ ]]; then variant=$label; fi
fi
torch_spec="torch==$TORCH_VERSION${variant:++$variant}"
stamp=.venv/.installed
want=$( { cat pyproject.toml; echo "$torch_spec $TORCH_INDEX_URL"; } | sha256sum | cut -d' ' -f1)
if [ -z "$fresh" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    [ -n "$dry" ] || exit 0
    note ".venv is up to date, so a real run stops here; below, what it runs when pyproject.toml or the torch choice changes"
fi

if [ -n "$fresh" ]; then
    note "Python: $python ($python_version)"
    if [ -n "$rebuild" ]; then
        note "rebuilding .venv: $rebuild"
        run rm -rf .venv
    fi
    run "$python" -m venv .venv
fi
[ -n "$dry" ] || note "installing into .venv (first run takes a few minutes)"
run .venv/bin/python -m pip install --quiet --upgrade pip

# Where torch comes from: already installed, pip's own configuration, or the index.
installed=""
if [ -z "$fresh" ]; then
    installed=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)
fi
offered() {  # does pip's own configuration offer torch $1? (index pages and find-links; no download)
    local pip_python=.venv/bin/python
    if [ -n "$fresh" ] && [ -n "$dry" ]; then pip_python=$python; fi  # no .venv yet: ask the base interpreter's pip
    "$pip_python" -m pip index versions torch 2>/dev/null \
        | grep '^Available versions:' | sed 's/^Available versions: *//' | tr ',' '\n' | tr -d ' ' | grep -qxF "$1"
}
if [ -z "$variant" ]; then
    if [ -z "$TORCH_INDEX_URL" ]; then
        note "torch: $torch_spec as pip's own configuration resolves it (TORCH_INDEX_URL is empty)"
        run .venv/bin/python -m pip install --quiet "$torch_spec"
    elif [ "$(uname -s)" = Darwin ]; then
        note "torch: $torch_spec from pip's own configuration (PyPI's macOS wheels are CPU builds)"
        run .venv/bin/python -m pip install --quiet "$torch_spec"
    else
        note "torch: $torch_spec from $TORCH_INDEX_URL (the URL names no build: cpu, cuNNN, rocmN, xpu)"
        run .venv/bin/python -m pip install --quiet --no-deps --index-url "$TORCH_INDEX_URL" "$torch_spec"
    fi
elif [ "$installed" = "$TORCH_VERSION+$variant" ]; then
    note "torch: $installed already installed"
elif offered "$TORCH_VERSION+$variant"; then
    note "torch: pip's configuration offers $TORCH_VERSION+$variant; $TORCH_INDEX_URL is not contacted"
    run .venv/bin/python -m pip install --quiet "$torch_spec"
else
    note "torch: $torch_spec from $TORCH_INDEX_URL"
    if ! run .venv/bin/python -m pip install --quiet --no-deps --index-url "$TORCH_INDEX_URL" "$torch_spec"; then
        fail "could not install $torch_spec from $TORCH_INDEX_URL (pip's message above); point TORCH_INDEX_URL at a reachable copy of that index, or set TORCH_INDEX_URL= to take torch from pip's own configuration"
    fi
fi
run .venv/bin/python -m pip install --quiet -e ".[train,serve,dev]"
if [ -n "$dry" ]; then
    echo "+ echo $want > $stamp"
else
    echo "$want" > "$stamp"
fi
