#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is needed, build everything (the
# converter makes the models from tests/data at build time), then caption a test video stream
# with gst-launch and print one JSON line per caption.
#
#   bash tools/demo.sh [NUM_BUFFERS]
#
# COBRA_MODEL picks another model file (e.g. a converted cobra+3b, see docs/model-format.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
export COBRA_MODEL=${COBRA_MODEL:-build/tests/tiny-f32.gguf}
echo "captioning videotestsrc with $COBRA_MODEL" >&2
exec bash pipelines/captions-json.sh "${1:-50}"
