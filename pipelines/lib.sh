# lib.sh - sourced by the scripts in pipelines/: the model, the plugin of an uninstalled build,
# and the captions filter. Not meant to be run.
#
# Needs: a built tree (meson setup build && ninja -C build: the plugin and the demo model) or an
# installed plugin with COBRA_MODEL set; gst-launch-1.0 and python3. tools/install-deps.sh
# installs every package the scripts use (tools/gst-deps.txt lists them).
#
# Environment: COBRA_MODEL  model file (default: build/tests/demo-q8_0.gguf, the small trained
#                           demo model the build converts, docs/demo-model.md; it knows test
#                           patterns and coloured shapes, a converted cobra+3b knows the world)
#              COBRA_THREADS  threads per cobravlm (default 0 = all cores)
#              PROMPT  the question asked about each sampled frame

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
MODEL=${COBRA_MODEL:-$ROOT/build/tests/demo-q8_0.gguf}
THREADS=${COBRA_THREADS:-0}
# libgomp's threads spin while they wait for work; on a busy machine, or with several streams,
# the spinning steals the cores the other threads need and a demo caption took 200-300 ms instead
# of 11 ms (docs/element.md, docs/performance.md). Sleep instead. libgomp reads this when it is
# loaded, so it must be in gst-launch-1.0's environment.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
PROMPT=${PROMPT:-Describe the image.}

if [ ! -f "$MODEL" ]; then
    echo "$0: no model file $MODEL: set COBRA_MODEL, or build the demo model first" \
        "(meson setup build && ninja -C build)" >&2
    exit 1
fi
# an uninstalled build tree: use its plugin unless GST_PLUGIN_PATH is set already
if [ -z "${GST_PLUGIN_PATH:-}" ] && [ -d "$ROOT/build/plugin" ]; then
    export GST_PLUGIN_PATH="$ROOT/build/plugin"
fi

# gst-launch-1.0, line-buffered so captions show up as they come
launch() {
    if command -v stdbuf >/dev/null; then
        stdbuf -oL gst-launch-1.0 "$@"
    else
        gst-launch-1.0 "$@"
    fi
}

# `gst-launch-1.0 -m` output on stdin -> captions (JSON lines, or --srt)
captions() {
    python3 "$HERE/captions.py" "$@"
}
