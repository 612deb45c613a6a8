#!/bin/bash
# network-stream.sh - captions for a network camera or stream, printed as JSON lines.
#
#   pipelines/network-stream.sh [URI [SECONDS]]   e.g. rtsp://camera.local/stream 30
#
# rtsp:// URIs go through rtspsrc (its video stream only) with LATENCY_MS of jitter buffer, then
# decodebin (H.264 cameras decode with avdec_h264); anything else uridecodebin plays (http://,
# udp://, file://) goes through uridecodebin. The pipeline is stopped cleanly (EOS) after SECONDS
# (default 10; 0 = until the stream ends or Ctrl-C). Without URI a live test pattern stands in for
# the stream (3 s).
#
# The video is never held up and never dropped: cobravlm runs with async=true (its default), so
# frames pass while the model works on a copy of the sampled one, and nothing leaks frames in
# front of the sink. A sink that syncs to the clock waits each frame out for the stream's latency
# (rtspsrc's), so the frames of that latency are in flight at once; a short leaky queue before it
# used to drop nearly all of them (0.5 fps out of a 15 fps camera).
#
# Needs: gst-launch-1.0 (gstreamer1.0-tools), rtspsrc and the RTP depayloaders
# (gstreamer1.0-plugins-good), h264parse (gstreamer1.0-plugins-bad), avdec_h264
# (gstreamer1.0-libav): tools/install-deps.sh installs them.
# Environment: see lib.sh; LATENCY_MS (rtspsrc's jitter buffer, default 200: rtspsrc's own 2000
# delays the picture 2 s); SINK, where the video goes (a pipeline fragment, default
# "fakesink sync=true"; e.g. "videoconvert ! autovideosink" to watch it).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

URI=${1:-}
SECONDS_TO_RUN=${2:-10}
LATENCY_MS=${LATENCY_MS:-200}
case "$URI" in
"")
    SRC="videotestsrc is-live=true pattern=smpte num-buffers=90 ! video/x-raw,framerate=30/1"
    SECONDS_TO_RUN=0 ;;
rtsp://* | rtsps://* | rtspt://*)
    # add-reference-timestamp-meta: each frame carries the camera's NTP time (from RTCP sender
    # reports), which cobravlm puts in its results as timestamp (timestamp-source "ntp")
    SRC="rtspsrc location=$URI latency=$LATENCY_MS add-reference-timestamp-meta=true"
    SRC="$SRC ! application/x-rtp,media=video ! decodebin" ;;
*)
    SRC="uridecodebin uri=$URI" ;;
esac
SINK=${SINK:-fakesink sync=true}
STOP=()
if [ "$SECONDS_TO_RUN" != 0 ]; then
    # SIGINT makes gst-launch-1.0 -e send EOS and exit 0 once the captions in progress are out;
    # its own status is the script's (not timeout's 124), and a stuck one is killed 10 s later.
    # --foreground: one SIGINT, to gst-launch-1.0 only. Without it timeout signals its process
    # group as well, and a second SIGINT that lands after gst-launch-1.0's handler has run kills
    # it (status 130, 1 run in 8 here).
    STOP=(timeout --foreground --preserve-status -s INT -k 10 "$SECONDS_TO_RUN")
fi

# $SRC and $SINK are pipeline fragments: split on purpose
# shellcheck disable=SC2086
"${STOP[@]}" stdbuf -oL gst-launch-1.0 -e -m $SRC ! videoconvert \
    ! cobravlm model-file="$MODEL" n-threads="$THREADS" prompt="$PROMPT" \
    ! $SINK \
    | captions
