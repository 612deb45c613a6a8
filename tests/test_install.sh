#!/bin/bash
# test_install.sh MESON BUILD_DIR MODEL - `meson install --destdir` of this build into a temporary
# directory, then the installed tree is used as a user would: gst-inspect-1.0 finds the plugin
# through GST_PLUGIN_PATH (what a custom prefix needs; /usr needs nothing), cobra-cli and
# cobra-convert run, and a C program built against the installed cobra.pc loads MODEL through
# libcobra.so and prints cobra_model_name, which must equal the file's general.name as the
# installed gguf_io.py reads it.
set -euo pipefail
meson=$1 build=$2 model=$(readlink -f "$3")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

option() {  # a meson option of the build
    "$meson" introspect "$build" --buildoptions | /usr/bin/python3 -c \
        "import json, sys; print(next(o['value'] for o in json.load(sys.stdin) if o['name'] == '$1'))"
}
if [ "$(option b_sanitize)" != none ]; then
    # gst-inspect-1.0 and the test program would need the sanitizer runtimes; what is installed
    # does not depend on them, and the plain build runs this test.
    echo "SKIP: a sanitizer build"
    exit 77
fi
prefix=$(option prefix) libdir=$(option libdir) bindir=$(option bindir)
case "$libdir" in /*) ;; *) libdir=$prefix/$libdir ;; esac
case "$bindir" in /*) ;; *) bindir=$prefix/$bindir ;; esac

"$meson" install -C "$build" --no-rebuild --quiet --destdir "$tmp/root" >/dev/null
root=$tmp/root
echo "installed into $root$prefix"

# the plugin, found through GST_PLUGIN_PATH in a fresh registry, not the build tree's
plugin_dir=$root$libdir/gstreamer-1.0
[ -f "$plugin_dir/libgstcobra.so" ] || fail "no $plugin_dir/libgstcobra.so"
inspect=$(GST_PLUGIN_PATH="$plugin_dir" GST_PLUGIN_PATH_1_0="$plugin_dir" \
    GST_REGISTRY="$tmp/registry.bin" GST_REGISTRY_1_0="$tmp/registry.bin" gst-inspect-1.0 cobravlm) ||
    fail "gst-inspect-1.0 cobravlm does not find the installed plugin"
grep -q "Filename *$plugin_dir/libgstcobra.so" <<< "$inspect" ||
    fail "gst-inspect-1.0 loaded another plugin: $(echo "$inspect" | grep Filename)"
echo "$inspect" | grep -E "^  (Filename|Version|Binary package|Origin URL)"
grep -q "example.invalid" <<< "$inspect" && fail "the plugin still claims a made-up origin URL"

"$root$bindir/cobra-cli" --help >/dev/null 2>&1 || fail "installed cobra-cli --help fails"
"$root$bindir/cobra-convert" --help > "$tmp/convert-help" 2>&1 ||
    fail "installed cobra-convert --help fails: $(cat "$tmp/convert-help")"
grep -q -- "--outtype" "$tmp/convert-help" || fail "cobra-convert --help does not describe --outtype"
echo "cobra-cli --help and cobra-convert --help run"

# a program built against the installed library through pkg-config
cat > "$tmp/name.c" <<'C'
#include <cobra.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    GError *err = NULL;
    CobraModel *model = cobra_model_load(argv[1], &err);
    if (!model) {
        fprintf(stderr, "%s\n", err->message);
        g_error_free(err);
        return 1;
    }
    printf("%s\n", cobra_model_name(model));
    cobra_model_free(model);
    return 0;
}
C
# cobra.pc with its prefix moved into the destdir (PKG_CONFIG_SYSROOT_DIR would move glib's too)
mkdir "$tmp/pkgconfig"
sed "s|^prefix=.*|prefix=$root$prefix|" "$root$libdir/pkgconfig/cobra.pc" > "$tmp/pkgconfig/cobra.pc"
grep -q "^prefix=$prefix\$" "$root$libdir/pkgconfig/cobra.pc" || fail "cobra.pc does not set prefix=$prefix"
export PKG_CONFIG_PATH=$tmp/pkgconfig
# shellcheck disable=SC2046
cc -std=c11 "$tmp/name.c" -o "$tmp/name" $(pkg-config --cflags --libs cobra) ||
    fail "a program does not build against the installed cobra.pc"
got=$(LD_LIBRARY_PATH=$root$libdir "$tmp/name" "$model") || fail "the program could not load $model"
libs=$(LD_LIBRARY_PATH=$root$libdir ldd "$tmp/name")
grep -q "libcobra.so.* => $root$libdir/" <<< "$libs" || fail "the program did not use the installed libcobra"
expected=$(cd "$root$prefix/share/gst-cobra" && /usr/bin/python3 -c \
    "import sys, gguf_io; print(gguf_io.GGUFReader(sys.argv[1]).kv.get('general.name', 'cobra'))" "$model")
[ "$got" = "$expected" ] || fail "cobra_model_name printed \"$got\", the file says \"$expected\""
echo "a program linked with the installed libcobra reads the model name \"$got\""
