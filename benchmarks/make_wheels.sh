#!/usr/bin/env bash
# Wheels for a GPU machine without internet that has PyTorch and Lightning but not the rest of the
# framework (hydra-core, omegaconf, kornia, lpips, open_clip_torch, wandb, ...): see
# benchmarks/GPU_CHECK.md. `make gpu-check` itself needs none of them.
#
#   benchmarks/make_wheels.sh [--dry-run | --resolve-only] [--python-version 3.12]
#                             [--torch VERSION] [--torchvision VERSION] [--platform TAG]... DIR
#
# Run it in this repository on a machine that reaches PyPI (any OS; the wheels are chosen for the
# target, CPython 3.12 on manylinux x86_64 by default). It resolves the dependencies in
# pyproject.toml for the target without installing anything, leaves out torch and torchvision
# (the GPU machine has torch, built for its CUDA: the resolution sees metadata-only stand-ins for
# them, so none of their nvidia-*/triton packages is looked for) and downloads every other package
# as a wheel into DIR. antlr4-python3-runtime 4.9.3 (pinned by
# hydra-core and omegaconf) exists as source only: it is built here into a pure-Python wheel.
# DIR/requirements.txt lists what to install; on the GPU machine:
#
#   python -m pip install --no-index --find-links DIR -r DIR/requirements.txt
#
# pip installs only what is missing there and keeps the machine's torch.
#   --torch VERSION        the GPU machine's torch (python -c "import torch; print(torch.__version__)"
#                          without the +cu... part): packages are resolved against it, so none
#                          asks for a newer torch. Default: pyproject.toml's pin.
#   --torchvision VERSION  also bring torchvision (lpips, open_clip and torch-fidelity need it;
#                          take the release made for the GPU machine's torch).
#   --platform TAG         a wheel platform tag (repeatable); default manylinux 2014 (glibc 2.17)
#                          to 2.28, x86_64.
#   --dry-run              print the commands only; --resolve-only: resolve and list, no download.
set -euo pipefail

PY=${PYTHON:-python3}
PYVER=3.12
TORCH=""
TORCHVISION=""
MODE=run
PLATFORMS=()
DIR=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --resolve-only) MODE=resolve ;;
    --python-version) PYVER=$2; shift ;;
    --torch) TORCH=$2; shift ;;
    --torchvision) TORCHVISION=$2; shift ;;
    --platform) PLATFORMS+=("$2"); shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "make_wheels.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) [ -z "$DIR" ] || { echo "make_wheels.sh: one folder only" >&2; exit 2; }; DIR=$1 ;;
  esac
  shift
done
[ -n "$DIR" ] || { usage >&2; exit 2; }
if [ ${#PLATFORMS[@]} -eq 0 ]; then
  PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_26_x86_64
             manylinux_2_27_x86_64 manylinux_2_28_x86_64)
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ABI=cp${PYVER/./}
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$ABI")
for p in "${PLATFORMS[@]}"; do TARGET+=(--platform "$p"); done
# not brought: the GPU machine's own torch stack
SKIP='^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$'

run() {  # print a command; run it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$MODE" = dry ] || "$@"
}

[ "$MODE" = dry ] || mkdir -p "$DIR"
# requirements: pyproject.toml's dependencies without torch and torchvision (+ torchvision if asked)
REQS=$("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
for dep in re.findall(r'"([^"]+)"', block):
    if re.split(r"[<>=!~ \[;]", dep)[0].lower() not in ("torch", "torchvision"):
        print(dep)
EOF
)
[ -z "$TORCHVISION" ] || REQS=$(printf '%s\ntorchvision==%s\n' "$REQS" "$TORCHVISION")
if [ "$MODE" = dry ]; then
  echo "# $DIR/requirements.txt:"; echo "$REQS" | sed 's/^/#   /'
else
  echo "$REQS" > "$DIR/requirements.txt"
fi
pin() { sed -n "s/^ *\"$1==\([^\"]*\)\".*/\1/p" "$ROOT/pyproject.toml"; }
TORCH=${TORCH:-$(pin torch)}
STUBS=(torch "$TORCH")
[ -n "$TORCHVISION" ] || STUBS+=(torchvision "$(pin torchvision)")
if [ "$MODE" = dry ]; then
  echo "# $DIR/constraints.txt: torch==$TORCH"
else
  echo "torch==$TORCH" > "$DIR/constraints.txt"
fi

# 1. antlr4-python3-runtime 4.9.3: source only on PyPI; a py3-none-any wheel built here
run "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" "antlr4-python3-runtime==4.9.3"
# 2. stand-ins for the GPU machine's torch (and torchvision): metadata-only wheels VERSION+stub,
#    without dependencies, which the resolution prefers to PyPI's VERSION (never downloaded)
if [ "$MODE" = dry ]; then
  echo "# $DIR/.stubs: metadata-only wheels ${STUBS[*]} (+stub)"
else
  "$PY" - "$DIR/.stubs" "${STUBS[@]}" <<'EOF'
import os, sys, zipfile
out, pairs = sys.argv[1], sys.argv[2:]
os.makedirs(out, exist_ok=True)
for name, version in zip(pairs[::2], pairs[1::2]):
    version = f"{version.split('+')[0]}+stub"
    info = f"{name}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: make_wheels.sh\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(f"{out}/{name}-{version}-py3-none-any.whl", "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
EOF
fi
# 3. what the target would install (metadata only, nothing installed)
run "$PY" -m pip install --quiet --dry-run --ignore-installed --report "$DIR/resolution.json" \
  "${TARGET[@]}" --find-links "$DIR" --find-links "$DIR/.stubs" --target "$DIR/.unused" \
  -r "$DIR/requirements.txt" -c "$DIR/constraints.txt"
# 4. the list to download: all of it but the torch stack (torchvision when asked for)
if [ "$MODE" = dry ]; then
  echo "# $DIR/download.txt: name==version of every package in $DIR/resolution.json but those matching $SKIP"
else
  "$PY" - "$DIR/resolution.json" "$SKIP" "$TORCHVISION" > "$DIR/download.txt" <<'EOF'
import json, re, sys
report, skip, torchvision = json.load(open(sys.argv[1])), re.compile(sys.argv[2]), sys.argv[3]
for item in report["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    key = re.sub(r"[-_.]+", "-", name).lower()
    if skip.match(key) and not (key == "torchvision" and torchvision):
        continue
    if "antlr4" in key:  # built in step 1, already in the folder
        continue
    print(f"{name}=={version}")
EOF
  echo "$(wc -l < "$DIR/download.txt") packages to download (+ antlr4-python3-runtime):"
  tr '\n' ' ' < "$DIR/download.txt"; echo
fi
if [ "$MODE" = resolve ]; then rm -rf "$DIR/.stubs"; exit 0; fi
# 5. the wheels
run "$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$DIR" -r "$DIR/download.txt"
if [ "$MODE" = run ]; then
  rm -rf "$DIR/.unused" "$DIR/.stubs"
  echo "$(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR. On the GPU machine:"
fi
echo "  python -m pip install --no-index --find-links $DIR -r $DIR/requirements.txt"
