#!/bin/bash
# test_symbols.sh PLUGIN LIBCOBRA HEADER - what the built libraries export.
#
# The plugin must export only GStreamer's entry points for "cobra": the engine it links statically
# has names (matmul, softmax, gguf_find_tensor, ggml_row_size, ...) that would clash with libggml
# or anything else loaded into the same process by another plugin. libcobra must export exactly
# the functions include/cobra.h declares.
set -euo pipefail
plugin=$1 lib=$2 header=$3
status=0

exports() {
    nm -D --defined-only "$1" | awk '{ print $NF }' | sort -u
}

# Compares the exports of $1 with the names on stdin; any difference fails, named.
expect_exports() {
    local what=$1 file=$2 expected got extra missing
    expected=$(sort -u)
    got=$(exports "$file")
    extra=$(comm -13 <(echo "$expected") <(echo "$got"))
    missing=$(comm -23 <(echo "$expected") <(echo "$got"))
    if [ -n "$extra" ]; then
        echo "FAIL: $what $file exports $(echo "$extra" | wc -l) symbol(s) it must not:" $extra
        status=1
    fi
    if [ -n "$missing" ]; then
        echo "FAIL: $what $file does not export:" $missing
        status=1
    fi
    [ -n "$extra$missing" ] || echo "ok: $what exports exactly:" $got
}

printf '%s\n' gst_plugin_cobra_get_desc gst_plugin_cobra_register | expect_exports plugin "$plugin"

# The header's function names, comments stripped by the preprocessor (no includes expanded).
declared=$(cc -fpreprocessed -dD -E -P "$header" | grep -oE '\bcobra_[a-z0-9_]+ *\(' | tr -d ' (' |
    sort -u)
[ -n "$declared" ] || { echo "FAIL: no cobra_* functions found in $header"; exit 1; }
echo "$declared" | expect_exports libcobra "$lib"
exit $status
