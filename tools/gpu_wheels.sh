#!/usr/bin/env bash
# Prepare what tools/gpu_check.py needs on a GPU machine that reaches no package registry:
#   .whl/           Python 3.12 manylinux x86-64 wheels of the runtime dependencies its image lacks
#                   (decord2 as the one decoder, pytorchvideo, fvcore, iopath, omegaconf and the
#                   pure-Python packages they need; wheels of sdist-only packages are built here
#                   with `pip wheel`). Kept under 50 MiB: the whole tree travels under 64 MiB.
#   .gpu_data/      videos/: a few short H.264 videos at the recipes' prepared size, for the loader step
#                   (PyAV writes them here; it is not carried there); shards/: their frames as JPEG
#                   shards (x3d_s's short side, every 6th frame; about 4 MB) for the shard_decode step,
#                   prepared here because the shard tool decodes with PyAV.
# Both folders are ignored by git. Run from anywhere:
#   bash tools/gpu_wheels.sh            # PYTHON=... picks the interpreter (default: .venv/bin/python)
# Then: python tools/gpu_check.py --dry-run --out /tmp/gpu_dry   (checks the set against Python 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHEELS=.whl
LIMIT_MIB=50

# The versions this project is tested with; the GPU image already has torch, numpy, PyYAML, tqdm,
# tensorboard, tabulate, portalocker, networkx, pillow and typing-extensions
# (tools/gpu_deploy/wheels.py: GPU_IMAGE_PACKAGES).
BINARY=(decord2==3.4.0)
PURE=(pytorchvideo==0.1.5 fvcore==0.1.5.post20221221 iopath==0.1.10 omegaconf==2.4.0 yacs==0.1.8 termcolor==3.3.0
      parameterized==0.9.0)

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${BINARY[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" "${PURE[@]}"

"$PYTHON" -m softpool3d.benchmarks.gpu_check --make-videos .gpu_data/videos
"$PYTHON" -m softpool3d.benchmarks.gpu_check --videos .gpu_data/videos --make-shards .gpu_data/shards

ls -l "$WHEELS"
total=$(du -cb "$WHEELS"/*.whl | tail -1 | cut -f1)
echo "wheels: $((total / 1048576)) MiB in $WHEELS (limit $LIMIT_MIB MiB); videos: $(du -sh .gpu_data/videos | cut -f1)," \
     "shards: $(du -sh .gpu_data/shards | cut -f1)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "ERROR: the wheels exceed $LIMIT_MIB MiB" >&2
    exit 1
fi
