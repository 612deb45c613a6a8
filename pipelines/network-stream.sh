#!/bin/bash
# network-stream.sh - captions for a network stream (RTSP, HTTP, UDP: whatever uridecodebin
# plays), printed as JSON lines.
#
# The leaky queue in front of cobravlm drops old frames if anything after it stalls, so the
# network source is never back-pressured into losing its connection or buffering without bound.
# cobravlm itself never holds frames (async=true), so the queue stays near empty in practice.
#
#   pipelines/network-stream.sh [URI [SECONDS]]   e.g. rtsp://camera.local/stream 30
#
# Without URI a live test pattern stands in for the stream (3 s). With one, the pipeline is
# stopped cleanly (EOS) after SECONDS (default 10).
# Environment: see lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ $# -ge 1 ]; then
    SRC="uridecodebin uri=$1"
    STOP="timeout -s INT ${2:-10}"
else
    SRC="videotestsrc is-live=true pattern=smpte num-buffers=90 ! video/x-raw,framerate=30/1"
    STOP=
fi

# $STOP and $SRC are command and pipeline fragments: split on purpose
$STOP gst-launch-1.0 -e -m $SRC \
    ! queue leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0 \
    ! videoconvert ! cobravlm model-file="$MODEL" n-threads="$THREADS" prompt="$PROMPT" \
    ! fakesink sync=true \
    | captions
