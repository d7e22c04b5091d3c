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
# --dest   where to export a git directory (default: $COMFYUI_DIR, else
#          ~/.cache/interact_custom/ComfyUI-<version>, where the tests look).
# --with-browser  also apt-get install Debian's chromium + chromium-driver (needs root).
# --torchaudio MODE  auto (default): install a torchaudio built for another torch, as many
#          users have, so the tests prove the pack works beside it, and set its compiled
#          extension aside where this ComfyUI cannot start beside it (0.33.0); broken: never
#          set it aside; none: remove it.
#
# Environment: COMFYUI_CPU_TOOLS = folder with constraints-cpu.txt and the torchvision
# shim (default: shared/tools/comfyui-cpu beside this repository).
# Afterwards: export COMFYUI_DIR=<the checkout>; the tests use $COMFYUI_DIR/.venv/bin/python.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest="${COMFYUI_DIR:-}"
source_dir=""
with_browser=0
torchaudio_mode=auto
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
if [ -z "$dest" ]; then
  # Default: the user cache, one folder per ComfyUI version (the tests pick the newest).
  version=""
  if [ -n "$source_dir" ] && [ -f "$source_dir/main.py" ]; then
    version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$source_dir/comfyui_version.py" 2>/dev/null)
  elif [ -n "$source_dir" ] && [ -d "$source_dir" ]; then
    version=$(git --git-dir="$source_dir" show HEAD:comfyui_version.py 2>/dev/null | sed -n 's/^__version__ = "\(.*\)"/\1/p')
  fi
  dest="$HOME/.cache/interact_custom/ComfyUI-${version:-unknown}"
fi
TORCH_VERSION=2.13.0   # the CPU wheel this workplace provides; constraints-cpu.txt pins it too

say() { echo "[setup_comfyui] $*"; }

case "$(cd "$(dirname "$dest")" 2>/dev/null && pwd)/$(basename "$dest")/" in
  "$repo"/*) echo "--dest $dest is inside this repository: ComfyUI's code must stay outside it" >&2; exit 2 ;;
esac

case "$torchaudio_mode" in auto|broken|none) ;; *) echo "--torchaudio must be auto, broken or none, not $torchaudio_mode" >&2; exit 2 ;; esac

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
    # The snapshots lack a blob or two (LLM tokenizer files we never use): leave out whatever
    # blob the git directory does not hold, else the export stops at the first missing object.
    missing=$(git --git-dir="$source_dir" ls-tree -r HEAD \
      | awk '$2 == "blob" {print $3}' \
      | git --git-dir="$source_dir" cat-file --batch-check 2>/dev/null | awk '$2 == "missing" {print $1}')
    index=$(mktemp); rm -f "$index"
    GIT_INDEX_FILE="$index" git --git-dir="$source_dir" read-tree HEAD
    for sha in $missing; do
      for path in $(git --git-dir="$source_dir" ls-tree -r HEAD | awk -v s="$sha" '$3 == s {print $4}'); do
        say "left out $path (its blob is not in the snapshot)"
        GIT_INDEX_FILE="$index" git --git-dir="$source_dir" update-index --force-remove "$path"
      done
    done
    GIT_INDEX_FILE="$index" git --git-dir="$source_dir" --work-tree="$comfy" checkout-index -a --prefix="$comfy/"
    rm -f "$index"
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
# so the tests run beside such a broken copy, proving our nodes never need it. ComfyUI up to
# 0.3.x starts beside it (only its audio node files fail to import); newer ComfyUI (0.33.0)
# imports torchaudio unguarded at start-up and starts neither beside a broken copy nor
# without one. --torchaudio auto (the default) installs the broken copy and, where ComfyUI
# then cannot start, moves its compiled extension aside: the Python part imports, the
# audio ops are absent (enough for every test; a GPU user has a matching torchaudio).
BROKEN_TORCHAUDIO=2.9.1   # built for torch 2.9.1: its _torchaudio.so cannot load beside 2.13
startup_probe() {  # exit 0 when ComfyUI's start-up imports (nodes.py and what it pulls) succeed
  (cd "$comfy" && "$py" -c 'import sys; sys.argv = ["main.py", "--cpu"]; import comfy.options; comfy.options.enable_args_parsing(); import nodes' >/dev/null 2>&1)
}
if [ "$torchaudio_mode" = none ]; then
  "$py" -m pip uninstall -q -y torchaudio >/dev/null 2>&1 || true
else
  if ! "$py" -m pip show -q torchaudio >/dev/null 2>&1; then
    "${pip[@]}" --no-deps "torchaudio==$BROKEN_TORCHAUDIO"
  fi
  ta_lib=$("$py" -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("torchaudio").origin), "lib"))')
  if [ "$torchaudio_mode" = auto ] && ! startup_probe; then
    for so in "$ta_lib"/_torchaudio*.so; do [ -f "$so" ] && mv "$so" "$so.set-aside"; done
    startup_probe || { echo "ComfyUI at $comfy cannot import its start-up modules even with torchaudio's extension set aside" >&2; exit 1; }
    say "this ComfyUI imports torchaudio at start-up: its compiled extension is set aside ($ta_lib/*.set-aside)"
  elif "$py" -c 'import torchaudio' >/dev/null 2>&1; then
    say "WARNING: torchaudio imports here; the broken-torchaudio case is not exercised"
  else
    say "torchaudio installed and broken (as in many users' set-ups)"
  fi
fi

# 4. Optional: the browser for tests/test_comfy_frontend.py (no downloaded browser builds).
if [ "$with_browser" = 1 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi

say "done. export COMFYUI_DIR=$comfy"
