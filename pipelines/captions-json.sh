#!/bin/bash
# captions-json.sh - captions as JSON lines with no code: cobravlm text-format=json writes one
# JSON object per answer, with all its fields (element, stream-id, text, prompt, stop-reason,
# source-pts, running-time, timestamp, latency, n-tokens, seq), on its text_src pad; here fdsink
# prints them. Any sink takes them as they are: filesink location=events.jsonl, tcpserversink,
# udpsink, or a muxer's data track.
#
#   pipelines/captions-json.sh [NUM_BUFFERS]   (default 50: 5 s of video at 10 fps)
#
# async=false and a fakesink that does not sync make it run as fast as the model answers.
# Environment: see lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

launch -q videotestsrc num-buffers="${1:-50}" pattern=ball \
    ! video/x-raw,width=320,height=240,framerate=10/1 ! videoconvert \
    ! cobravlm name=vlm async=false text-format=json model-file="$MODEL" n-threads="$THREADS" \
        prompt="$PROMPT" \
    ! fakesink  vlm.text_src ! fdsink
