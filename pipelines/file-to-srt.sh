#!/bin/bash
# file-to-srt.sh - SubRip subtitles for a video file: a caption every INTERVAL seconds.
#
# Offline use: async=false makes cobravlm answer every sampled frame before the frame moves on,
# so nothing is skipped and each caption starts at the time of the frame it describes. The
# pipeline runs as fast as the model allows (fakesink does not sync to the clock). Each caption
# lasts until the next one.
#
#   pipelines/file-to-srt.sh [INPUT [OUTPUT.srt]]
#
# Without INPUT a 6 s test clip is made first. OUTPUT defaults to INPUT with .srt.
# Needs: decodebin (gstreamer1.0-plugins-base) and a demuxer and decoder for INPUT (the test clip:
# avimux/avidemux, jpegenc/jpegdec from gstreamer1.0-plugins-good; H.264 in MP4 or Matroska:
# qtdemux/matroskademux, h264parse, avdec_h264 from good, bad and gstreamer1.0-libav):
# tools/install-deps.sh installs them.
# Environment: see lib.sh; INTERVAL (seconds, default 2); OUT_DIR (where a test clip goes).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

INTERVAL=${INTERVAL:-2}
if [ $# -ge 1 ]; then
    INPUT=$1
else
    INPUT=${OUT_DIR:-$(mktemp -d)}/test-clip.avi
    gst-launch-1.0 -q videotestsrc num-buffers=60 pattern=ball \
        ! video/x-raw,width=320,height=240,framerate=10/1 ! jpegenc ! avimux \
        ! filesink location="$INPUT"
fi
OUTPUT=${2:-${INPUT%.*}.srt}
INTERVAL_NS=$(awk -v s="$INTERVAL" 'BEGIN { printf "%.0f", s * 1e9 }')

launch -m filesrc location="$INPUT" ! decodebin ! videoconvert \
    ! cobravlm async=false interval="$INTERVAL_NS" model-file="$MODEL" n-threads="$THREADS" \
        prompt="$PROMPT" \
    ! fakesink \
    | captions --srt --hold "$INTERVAL" > "$OUTPUT"
echo "wrote $OUTPUT:"
cat "$OUTPUT"
