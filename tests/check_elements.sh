#!/bin/bash
# check_elements.sh [--hide-plugin PLUGIN] - is everything tools/gst-deps.txt lists there?
#
# Fails naming each missing GStreamer element, Python module, typelib or program and the Debian
# package that provides it (tools/install-deps.sh installs them). Also fails on an element name
# in the files that use GStreamer (pipelines/, tools/demo.sh, cobra-cli, tests/) that the list
# lacks, so that the list and install-deps.sh keep up with new pipelines.
#
# --hide-plugin PLUGIN (e.g. pango): the test of this test. It runs the check against a copy of
# the system plugin directory without libgst<PLUGIN>.so and passes only if the check fails naming
# an element of that plugin and its package.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LIST=$ROOT/tools/gst-deps.txt

# Only the system's plugins, in a registry of our own: not the build tree's plugin (a sanitizer
# build's cannot be loaded into gst-inspect-1.0) and not the registry the other tests share.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export GST_PLUGIN_PATH_1_0= GST_PLUGIN_PATH= GST_REGISTRY_1_0="$tmp/registry.bin" \
    GST_REGISTRY="$tmp/registry.bin"

if [ "${1:-}" = --hide-plugin ]; then
    plugin=$2
    sysdir=$(pkg-config --variable=pluginsdir gstreamer-1.0)
    [ -f "$sysdir/libgst$plugin.so" ] || { echo "SKIP: no $sysdir/libgst$plugin.so"; exit 77; }
    mkdir "$tmp/plugins"
    for f in "$sysdir"/*.so; do
        [ "$f" = "$sysdir/libgst$plugin.so" ] || ln -s "$f" "$tmp/plugins/"
    done
    out=$(GST_PLUGIN_SYSTEM_PATH_1_0="$tmp/plugins" "$0" 2>&1)
    rc=$?
    echo "$out"
    # the elements of that plugin, as the list names them, and their package
    expected=$(gst-inspect-1.0 "$plugin" 2>/dev/null |
        awk '/^  [a-z0-9_]+: / { sub(":", "", $1); print $1 }' |
        while read -r e; do awk -v e="$e" '$1 == "element" && $2 == e { print $2, $3 }' "$LIST"; done)
    [ -n "$expected" ] || { echo "FAIL: $LIST lists no element of plugin $plugin"; exit 1; }
    status=0
    [ $rc -ne 0 ] || { echo "FAIL: the check passed without plugin $plugin"; status=1; }
    while read -r element package; do
        grep -q "missing GStreamer element $element: .*$package" <<< "$out" ||
            { echo "FAIL: no message naming $element and $package"; status=1; }
    done <<< "$expected"
    [ $status -ne 0 ] || echo "ok: with plugin $plugin hidden the check fails naming" $expected
    exit $status
fi

status=0
missing() {  # kind name package
    echo "FAIL: missing $1 $2: install the Debian package $3 (tools/install-deps.sh installs it)"
    status=1
}
command -v gst-inspect-1.0 >/dev/null ||
    { missing program gst-inspect-1.0 gstreamer1.0-tools; exit 1; }

listed=()
while read -r kind name package _; do
    case "$kind" in
    element)
        listed+=("$name")
        gst-inspect-1.0 --exists "$name" </dev/null || missing "GStreamer element" "$name" "$package" ;;
    python)
        /usr/bin/python3 -c "import $name" 2>/dev/null || missing "Python module" "$name" "$package" ;;
    typelib)
        /usr/bin/python3 -c "import gi; gi.require_version('${name%-*}', '${name##*-}')" 2>/dev/null ||
            missing typelib "$name" "$package" ;;
    program)
        command -v "$name" >/dev/null || missing program "$name" "$package" ;;
    not-element)
        ;;
    *)
        echo "FAIL: $LIST: unknown kind \"$kind\""; status=1 ;;
    esac
done < <(grep -v '^#' "$LIST" | grep .)
echo "checked ${#listed[@]} elements and the rest of $LIST"

# Every word of the GStreamer users that names an element on this machine must be listed (or
# listed as not one).
ignored=$(awk '$1 == "not-element" { $1 = ""; print }' "$LIST")
registered=$(gst-inspect-1.0 2>/dev/null | awk -F': ' 'NF >= 3 { gsub(/ /, "", $2); print $2 }' | sort -u)
users=("$ROOT"/pipelines/*.sh "$ROOT"/pipelines/*.py "$ROOT"/tools/demo.sh "$ROOT"/tools/cobra-cli.c
       "$ROOT"/tests/*.c "$ROOT"/tests/*.py "$ROOT"/tests/*.sh)
for word in $(comm -12 <(echo "$registered") <(cat "${users[@]}" | grep -oE '[A-Za-z0-9_-]+' | sort -u)); do
    case " ${listed[*]} $ignored cobravlm " in
    *" $word "*) ;;
    *)
        echo "FAIL: $word is a GStreamer element used in" \
            "$(grep -lw -- "$word" "${users[@]}" | sed "s|$ROOT/||" | tr '\n' ' ')but $LIST does not list it"
        status=1 ;;
    esac
done
exit $status
