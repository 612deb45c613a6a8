# lib.sh - sourced by the scripts in pipelines/: the model, the plugin of an uninstalled build,
# and the captions filter. Not meant to be run.
#
# Environment: COBRA_MODEL  model file (default: build/tests/tiny-f32.gguf, the test model)
#              COBRA_THREADS  threads per cobravlm (default 0 = all cores)
#              PROMPT  the question asked about each sampled frame

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
MODEL=${COBRA_MODEL:-$ROOT/build/tests/tiny-f32.gguf}
THREADS=${COBRA_THREADS:-0}
# OpenMP threads that wait for work by spinning steal the cores other streams and other
# processes need; on a busy machine that made each caption 20x slower. Sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
PROMPT=${PROMPT:-Describe the image.}

if [ ! -f "$MODEL" ]; then
    echo "$0: no model file $MODEL: set COBRA_MODEL, or build the test model first" \
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
