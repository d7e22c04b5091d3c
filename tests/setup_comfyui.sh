#!/usr/bin/env bash
# Set up a ComfyUI checkout + venv for the real-server and browser tests
# (tests/test_comfy_server.py, tests/test_comfy_frontend.py). Idempotent: re-running
# only fills in what is missing. ComfyUI's code stays OUTSIDE this repository.
#
#   tests/setup_comfyui.sh [SOURCE] [--dest DIR] [--with-browser]
#
# SOURCE   a ComfyUI git directory (e.g. a snapshot without a work tree) to export, or an
#          existing ComfyUI checkout (a folder with main.py) to use in place.
#          Default: the checkout already at DIR.
# --dest   where to export a git directory (default: $COMFYUI_DIR, else ~/ComfyUI).
# --with-browser  also apt-get install Debian's chromium + chromium-driver (needs root).
#
# Environment: COMFYUI_CPU_TOOLS = folder with constraints-cpu.txt and the torchvision
# shim (default: shared/tools/comfyui-cpu beside this repository).
# Afterwards: export COMFYUI_DIR=<the checkout>; the tests use $COMFYUI_DIR/.venv/bin/python.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest="${COMFYUI_DIR:-$HOME/ComfyUI}"
source_dir=""
with_browser=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2 ;;
    --with-browser) with_browser=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) source_dir="$1"; shift ;;
  esac
done
tools="${COMFYUI_CPU_TOOLS:-$repo/../shared/tools/comfyui-cpu}"
TORCH_VERSION=2.13.0   # the CPU wheel this workplace provides; constraints-cpu.txt pins it too

say() { echo "[setup_comfyui] $*"; }

case "$(cd "$(dirname "$dest")" 2>/dev/null && pwd)/$(basename "$dest")/" in
  "$repo"/*) echo "--dest $dest is inside this repository: ComfyUI's code must stay outside it" >&2; exit 2 ;;
esac

# 1. The ComfyUI source.
if [ -n "$source_dir" ] && [ -f "$source_dir/main.py" ]; then
  comfy=$(cd "$source_dir" && pwd)
  say "using existing checkout $comfy"
elif [ -n "$source_dir" ]; then
  git --git-dir="$source_dir" rev-parse --verify -q HEAD >/dev/null \
    || { echo "SOURCE $source_dir is neither a ComfyUI checkout (main.py) nor a git directory" >&2; exit 2; }
  comfy="$dest"
  if [ -f "$comfy/main.py" ]; then
    say "checkout already exported at $comfy"
  else
    mkdir -p "$comfy"
    # The snapshot lacks one tokenizer blob (an LLM text encoder we never use): exclude it,
    # otherwise git archive stops at the missing object.
    git --git-dir="$source_dir" archive HEAD -- . ':!comfy/text_encoders/llama_tokenizer/tokenizer.json' \
      | tar -x -C "$comfy"
    git --git-dir="$source_dir" rev-parse HEAD > "$comfy/.exported_from_commit"
    say "exported $(cat "$comfy/.exported_from_commit") to $comfy"
  fi
else
  comfy="$dest"
  [ -f "$comfy/main.py" ] || { echo "no ComfyUI checkout at $comfy: pass a ComfyUI git dir or checkout as SOURCE" >&2; exit 2; }
  say "using existing checkout $comfy"
fi

# 2. Its venv (a separate one: ComfyUI's pins must not leak into the project's test venv).
py="$comfy/.venv/bin/python"
[ -x "$py" ] || { python3 -m venv "$comfy/.venv"; say "created $comfy/.venv"; }
pip=("$py" -m pip install -q)

# torch first, alone: the CPU wheel, so that requirements.txt does not pull a CUDA build.
"${pip[@]}" "torch==$TORCH_VERSION"
if [ -f "$tools/constraints-cpu.txt" ]; then
  "${pip[@]}" -r "$comfy/requirements.txt" -c "$tools/constraints-cpu.txt"
else
  say "WARNING: $tools/constraints-cpu.txt not found; installing ComfyUI's requirements unconstrained"
  "${pip[@]}" -r "$comfy/requirements.txt"
fi
"${pip[@]}" requests
# Our package's runtime requirements (it declares no torch), editable so the venv follows the repo.
"${pip[@]}" -e "$repo"

# 3. PyPI's torchvision is a CUDA build that cannot import on CPU torch; the shim declares
# the two op schemas it needs so its pure-Python part imports (ComfyUI needs that to start).
if "$py" -c 'import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)'; then
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if [ -f "$tools/_torchvision_cpu_shim.py" ]; then
    cp -f "$tools/_torchvision_cpu_shim.py" "$tools/_torchvision_cpu_shim.pth" "$site/"
  else
    say "WARNING: torchvision shim not found in $tools; ComfyUI may fail to import torchvision"
  fi
fi
"$py" -c 'import torch, torchvision; print("[setup_comfyui] torch", torch.__version__, "torchvision", torchvision.__version__)'
# PyPI's torchaudio is likewise a CUDA build that fails to import on CPU torch; transformers
# and diffusers probe for it on import, so a broken copy breaks every model loader. Only
# ComfyUI's audio nodes need it (they fail to import either way on a CPU-only torch).
if ! "$py" -c 'import torchaudio' >/dev/null 2>&1; then
  "$py" -m pip uninstall -q -y torchaudio >/dev/null 2>&1 || true
fi

# 4. Optional: the browser for tests/test_comfy_frontend.py (no downloaded browser builds).
if [ "$with_browser" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi

say "done. export COMFYUI_DIR=$comfy"
