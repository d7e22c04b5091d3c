#!/usr/bin/env bash
# Set up a ComfyUI checkout + venv for the real-server and browser tests
# (tests/test_comfy_server.py, tests/test_comfy_frontend.py). Idempotent: re-running
# only fills in what is missing. ComfyUI's code stays OUTSIDE this repository.
#
#   tests/setup_comfyui.sh [SOURCE] [--dest DIR] [--with-browser]
#
# SOURCE   a ComfyUI source tarball (.tar.gz / .tgz / .tar, one top-level folder, e.g.
#          shared/comfyui/ComfyUI-a125cd84.tar.gz), a ComfyUI git directory (e.g. a snapshot
#          without a work tree) to export, or an existing ComfyUI checkout (a folder with
#          main.py) to use in place. Default: the checkout already at DIR.
# --dest   where to export a git directory (default: $COMFYUI_DIR, else ~/ComfyUI).
# --with-browser  also apt-get install Debian's chromium + chromium-driver (needs root).
# --torchaudio MODE  broken (default): install a torchaudio built for another torch, as
#          many users have, so the tests prove the pack works beside it; none: remove it.
#
# Environment: COMFYUI_CPU_TOOLS = folder with constraints-cpu.txt and the torchvision
# shim (default: shared/tools/comfyui-cpu beside this repository).
# Afterwards: export COMFYUI_DIR=<the checkout>; the tests use $COMFYUI_DIR/.venv/bin/python.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest="${COMFYUI_DIR:-$HOME/ComfyUI}"
source_dir=""
with_browser=0
torchaudio_mode=broken
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2 ;;
    --with-browser) with_browser=1; shift ;;
    --torchaudio) torchaudio_mode="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) source_dir="$1"; shift ;;
  esac
done
tools="${COMFYUI_CPU_TOOLS:-$repo/../shared/tools/comfyui-cpu}"
TORCH_VERSION=2.13.0   # the CPU wheel this workplace provides; constraints-cpu.txt pins it too

say() { echo "[setup_comfyui] $*"; }

case "$(cd "$(dirname "$dest")" 2>/dev/null && pwd)/$(basename "$dest")/" in
  "$repo"/*) echo "--dest $dest is inside this repository: ComfyUI's code must stay outside it" >&2; exit 2 ;;
esac

case "$torchaudio_mode" in broken|none) ;; *) echo "--torchaudio must be broken or none, not $torchaudio_mode" >&2; exit 2 ;; esac

# 1. The ComfyUI source.
if [ -n "$source_dir" ] && [ -f "$source_dir" ]; then
  case "$source_dir" in
    *.tar.gz|*.tgz|*.tar) ;;
    *) echo "SOURCE $source_dir is a file but not a .tar.gz/.tgz/.tar ComfyUI source tarball" >&2; exit 2 ;;
  esac
  comfy="$dest"
  stamp="$(basename "$source_dir") $(cksum < "$source_dir" | cut -d' ' -f1)"
  if [ -f "$comfy/main.py" ] && [ "$(cat "$comfy/.exported_from" 2>/dev/null)" = "$stamp" ]; then
    say "checkout already extracted from $(basename "$source_dir") at $comfy"
  elif [ -f "$comfy/main.py" ]; then
    echo "$comfy already holds a ComfyUI checkout that was not extracted from $source_dir: pass --dest" \
         "another folder (or remove it)" >&2; exit 2
  else
    mkdir -p "$comfy"
    # One top-level folder (ComfyUI/) in the tarball: strip it.
    tar -xf "$source_dir" -C "$comfy" --strip-components=1
    [ -f "$comfy/main.py" ] || { echo "SOURCE $source_dir has no ComfyUI main.py under its top folder" >&2; exit 2; }
    echo "$stamp" > "$comfy/.exported_from"
    say "extracted $(basename "$source_dir") to $comfy"
  fi
elif [ -n "$source_dir" ] && [ -f "$source_dir/main.py" ]; then
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
# Our package's runtime requirements (no torch), as ComfyUI Manager installs them; ComfyUI
# itself imports the package from its custom_nodes folder (the tests: extra_model_paths).
"${pip[@]}" -r "$repo/requirements.txt"

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
# A torchaudio that does not match torch is common in users' ComfyUI set-ups (ComfyUI lists
# it; an update of torch alone leaves it behind). transformers' model imports can pull it in,
# so the tests run beside such a broken copy (--torchaudio broken), proving our nodes never
# need it. Only ComfyUI's own audio nodes fail to import then (expected).
BROKEN_TORCHAUDIO=2.9.1   # built for torch 2.9.1: its _torchaudio.so cannot load beside 2.13
if [ "$torchaudio_mode" = broken ]; then
  if ! "$py" -m pip show -q torchaudio >/dev/null 2>&1; then
    "${pip[@]}" --no-deps "torchaudio==$BROKEN_TORCHAUDIO"
  fi
  if "$py" -c 'import torchaudio' >/dev/null 2>&1; then
    say "WARNING: torchaudio imports here; the broken-torchaudio case is not exercised"
  else
    say "torchaudio installed and broken (as in many users' set-ups)"
  fi
else
  "$py" -m pip uninstall -q -y torchaudio >/dev/null 2>&1 || true
fi

# 4. Optional: the browser for tests/test_comfy_frontend.py (no downloaded browser builds).
if [ "$with_browser" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi

say "done. export COMFYUI_DIR=$comfy"
