#!/usr/bin/env bash
# Runs the libFuzzer targets one after another for a given time each and prints, per target, the
# executions, the coverage reached (edges of the instrumented engine, and libFuzzer's features),
# the corpus size and any crash.
#
#   tools/fuzz.sh [-b BUILD] [-c COVBUILD] SECONDS [SURFACE...]   SURFACE: gguf, tokenizer, image, npy, labels, results
#
# BUILD (default build-fuzz) comes from `CC=clang meson setup BUILD -Dfuzz=true && ninja -C BUILD`.
# With -c, each target's corpus is then replayed in COVBUILD, a clang build with source-based
# coverage, and the share of lines run is printed per engine file the target drives:
#   CC=clang meson setup COVBUILD -Dc_args='-fprofile-instr-generate -fcoverage-mapping' \
#     -Dc_link_args=-fprofile-instr-generate && ninja -C COVBUILD      (needs the llvm package)
# Inputs that find new coverage accumulate in BUILD/fuzz/corpus/SURFACE across runs (the committed
# seeds in tests/fuzz/corpus/ are only read); crashes land in BUILD/fuzz/artifacts/SURFACE/, and
# each target's full log in BUILD/fuzz/SURFACE.log. A crash input belongs in
# tests/fuzz/regressions/SURFACE/ once fixed. Exits 1 if any target crashed.
set -uo pipefail
cd "$(dirname "$0")/.."
build=build-fuzz
cov=
while [ $# -gt 1 ] && [[ $1 == -[bc] ]]; do
  [ "$1" = -b ] && build=$2 || cov=$2
  shift 2
done
if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
  sed -n '6p' "$0" >&2
  exit 2
fi
seconds=$1
shift
surfaces=("$@")
[ ${#surfaces[@]} -gt 0 ] || surfaces=(gguf tokenizer image npy labels results)

# One thread: runs stay reproducible, and the machine stays usable for other work.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# "key: value" from the log's last status line and its final stats.
summarise() {
  local surface=$1 log=$2 status=$3
  local total execs rate cov ft corp
  total=$(grep -o 'Loaded 1 modules *([0-9]*' "$log" | grep -o '[0-9]*$' | head -1)
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  corp=$(find "$build/fuzz/corpus/$surface" -type f | wc -l)
  printf '%-9s %s executions in %s s (%s/s), coverage %s of %s edges, %s features, corpus %s' \
    "$surface" "${execs:-?}" "$seconds" "${rate:-?}" "${cov:-?}" "${total:-?}" "${ft:-?}" "$corp"
  if [ "$status" -eq 0 ]; then
    echo ", no crash"
  else
    echo ", CRASH (exit $status): $(ls "$build/fuzz/artifacts/$surface" | tr '\n' ' ')"
  fi
}

# The engine files each target drives.
declare -A sources=([gguf]="gguf.c cobra.c vit.c projector.c mamba.c tokenizer.c"
  [tokenizer]="tokenizer.c" [image]="image.c" [npy]="" [labels]="cobra.c tokenizer.c" [results]="image.c")

# "file NN.N%" of lines run by replaying the target's corpus in the coverage build.
line_coverage() {
  local surface=$1 raw=$build/fuzz/$surface.profraw data=$build/fuzz/$surface.profdata
  LLVM_PROFILE_FILE=$raw "$cov/tests/fuzz/replay-$surface" "$build/fuzz/corpus/$surface" \
    "tests/fuzz/corpus/$surface" >/dev/null 2>&1 &&
    llvm-profdata merge -o "$data" "$raw" &&
    llvm-cov report "$cov/tests/fuzz/replay-$surface" -instr-profile="$data" |
    awk -v want=" ${sources[$surface]} " '$1 ~ /engine\/[a-z_]+\.c$/ {
        n = split($1, p, "/"); if (index(want, " " p[n] " ")) out = out sprintf(" %s %s,", p[n], $10) }
      END { sub(/,$/, "", out); print "          lines run:" out }'
}

failed=0
for surface in "${surfaces[@]}"; do
  exe=$build/tests/fuzz/fuzz-$surface
  if [ ! -x "$exe" ]; then
    echo "$exe is missing: CC=clang meson setup $build -Dfuzz=true && ninja -C $build" >&2
    exit 2
  fi
  mkdir -p "$build/fuzz/corpus/$surface" "$build/fuzz/artifacts/$surface"
  log=$build/fuzz/$surface.log
  "$exe" -max_total_time="$seconds" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$build/fuzz/artifacts/$surface/" \
    "$build/fuzz/corpus/$surface" "tests/fuzz/corpus/$surface" >"$log" 2>&1
  status=$?
  summarise "$surface" "$log" "$status"
  [ -z "$cov" ] || line_coverage "$surface"
  [ "$status" -eq 0 ] || failed=1
done
exit $failed
