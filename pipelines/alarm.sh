#!/bin/bash
# alarm.sh - label mode as alarm events: instead of generating text, cobravlm scores a fixed set
# of answers (labels) to the prompt and publishes the most likely with its confidence; with
# label-changes-only and label-threshold it publishes only when the answer changes with enough
# confidence, one JSON object per event on text_src (text-format=json), here printed by fdsink.
# An application alarms on those lines without parsing free text.
#
# The video here is two test patterns one after the other (a still scene that changes once), and
# the question is one the demo model was trained on; for a camera, put its source in place of
# the concat and ask what the alarm is about, e.g. PROMPT="Is there a person?" LABELS="yes,no".
# Labels should not be prefixes of each other (a label is scored without the stop token).
#
#   pipelines/alarm.sh [FIRST_PATTERN [SECOND_PATTERN]]   (default ball, then snow)
#
# Needs: videotestsrc, videoconvert (gstreamer1.0-plugins-base), concat, fdsink (GStreamer core).
# Environment: see lib.sh; PROMPT (default "Which test pattern is this?"); LABELS (default
# "ball,snow,pinwheel,spokes,gradient"); THRESHOLD (default 0.5).
set -euo pipefail
PROMPT=${PROMPT:-Which test pattern is this?}
. "$(dirname "$0")/lib.sh"

LABELS=${LABELS:-ball,snow,pinwheel,spokes,gradient}
THRESHOLD=${THRESHOLD:-0.5}
CAPS="video/x-raw,width=320,height=240,framerate=10/1"

launch -q concat name=scene ! videoconvert \
    ! cobravlm name=vlm async=false interval=500000000 model-file="$MODEL" n-threads="$THREADS" \
        prompt="$PROMPT" labels="$LABELS" label-threshold="$THRESHOLD" label-changes-only=true \
        text-format=json \
    ! fakesink \
    videotestsrc pattern="${1:-ball}" num-buffers=30 ! $CAPS ! scene. \
    videotestsrc pattern="${2:-snow}" num-buffers=30 ! $CAPS ! scene. \
    vlm.text_src ! fdsink
