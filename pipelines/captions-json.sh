#!/bin/bash
# captions-json.sh - captions as JSON lines, from the bus with no code: gst-launch-1.0 -m prints
# every element message, and captions.py keeps the "cobravlm" ones, one JSON object per answer
# with all its fields (text, prompt, source-pts, running-time, latency, n-tokens, seq, element).
#
#   pipelines/captions-json.sh [NUM_BUFFERS]   (default 50: 5 s of video at 10 fps)
#
# async=false and a fakesink that does not sync make it run as fast as the model answers.
# Environment: see lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

launch -m videotestsrc num-buffers="${1:-50}" pattern=ball \
    ! video/x-raw,width=320,height=240,framerate=10/1 ! videoconvert \
    ! cobravlm async=false model-file="$MODEL" n-threads="$THREADS" prompt="$PROMPT" \
    ! fakesink \
    | captions
