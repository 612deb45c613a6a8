#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what is needed, build everything (the
# converter makes the models from tests/data at build time), then caption GStreamer test
# patterns with gst-launch and print one JSON line per caption.
#
#   bash tools/demo.sh [PATTERN ...]     (default: smpte ball snow checkers-8 circular pinwheel)
#
# The default model is the small trained demo model (docs/demo-model.md), which knows
# videotestsrc's patterns and simple coloured shapes. COBRA_MODEL picks another model file, e.g.
# a converted cobra+3b (docs/model-format.md); PROMPT another question.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
. pipelines/lib.sh  # COBRA_MODEL, default the demo model
[ $# -gt 0 ] || set -- smpte ball snow checkers-8 circular pinwheel
echo "captioning videotestsrc patterns with $MODEL" >&2
for pattern in "$@"; do
    # 2 s of 10 fps video; the element samples one frame a second
    launch -m videotestsrc pattern="$pattern" num-buffers=20 \
        ! video/x-raw,width=320,height=240,framerate=10/1 \
        ! cobravlm async=false model-file="$MODEL" n-threads="$THREADS" prompt="$PROMPT" \
        ! fakesink \
        | captions
done
