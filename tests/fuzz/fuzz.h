/* fuzz.h - what the fuzz targets share with libFuzzer and with replay.c, the plain main that
 * runs saved inputs through them in the ordinary test suite. */
#ifndef COBRA_FUZZ_H
#define COBRA_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* One input; returns 0 (libFuzzer's contract). A bug aborts or trips a sanitizer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
