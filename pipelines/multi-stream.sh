#!/bin/bash
# multi-stream.sh - several live streams captioned in one process on one model file.
#
# The elements that name one model file share one loaded copy of it, so the weights are in
# memory once however many streams there are; each stream adds only its own small state and
# worker thread. Each element gets a share of the cores (cores / STREAMS unless
# COBRA_THREADS says otherwise) so the streams do not fight over them. Captions print as JSON
# lines whose "element" field tells the streams apart.
#
#   pipelines/multi-stream.sh [STREAMS [NUM_BUFFERS]]   (default 3 streams, 30 frames at 10 fps)
#
# Needs: videotestsrc, videoconvert (gstreamer1.0-plugins-base): tools/install-deps.sh installs them.
# Environment: see lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

STREAMS=${1:-3}
N=${2:-30}
if [ -z "${COBRA_THREADS:-}" ]; then
    THREADS=$(( $(nproc) / STREAMS > 0 ? $(nproc) / STREAMS : 1 ))
fi

PIPELINE=()
for i in $(seq 1 "$STREAMS"); do
    PIPELINE+=(videotestsrc is-live=true pattern=$((i - 1)) num-buffers="$N"
        ! video/x-raw,width=320,height=240,framerate=10/1 ! videoconvert
        ! cobravlm name=stream$i model-file="$MODEL" n-threads="$THREADS" prompt="$PROMPT"
        ! fakesink sync=true)
done

launch -m "${PIPELINE[@]}" | captions
