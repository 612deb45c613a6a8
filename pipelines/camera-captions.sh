#!/bin/bash
# camera-captions.sh - live captions drawn over a camera picture.
#
# The camera (/dev/video0, or a live test pattern when there is none) goes through cobravlm,
# whose text_src pad feeds textoverlay. cobravlm covers every frame's time on text_src before
# the frame itself, so textoverlay's default wait-text=true never stalls and the caption stays on
# every frame until the next one (wait-text=false would let frames pass before their text, and
# the caption would blink). async=true (the default) keeps inference off the streaming thread:
# frames that arrive while the model is busy pass untouched (counted in frames-skipped). The
# captions are printed as JSON too.
# Without a display the picture goes to a clock-synced fakesink.
#
#   pipelines/camera-captions.sh [NUM_BUFFERS]   (default 90, 3 s at 30 fps; -1 = until Ctrl-C)
#
# Needs: v4l2src and autovideosink (gstreamer1.0-plugins-good), textoverlay (gstreamer1.0-x),
# videoconvert and videotestsrc (gstreamer1.0-plugins-base): tools/install-deps.sh installs them.
# Environment: see lib.sh; DEVICE (default /dev/video0).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

N=${1:-90}
DEVICE=${DEVICE:-/dev/video0}
if [ -e "$DEVICE" ]; then
    SRC="v4l2src device=$DEVICE num-buffers=$N"
else
    SRC="videotestsrc is-live=true pattern=ball num-buffers=$N ! video/x-raw,width=640,height=480,framerate=30/1"
fi
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    SINK=autovideosink
else
    SINK="fakesink sync=true"
fi

# $SRC and $SINK are pipeline fragments: split on purpose
launch -e -m $SRC ! videoconvert \
    ! cobravlm name=vlm model-file="$MODEL" n-threads="$THREADS" prompt="$PROMPT" \
    ! textoverlay name=overlay valignment=bottom ! videoconvert ! $SINK \
    vlm.text_src ! overlay.text_sink \
    | captions
