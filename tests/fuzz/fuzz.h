/* fuzz.h - what the fuzz targets share with libFuzzer and with replay.c, the plain main that
 * runs saved inputs through them in the ordinary test suite. */
#ifndef COBRA_FUZZ_H
#define COBRA_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* One input; returns 0 (libFuzzer's contract). A bug aborts or trips a sanitizer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The file lives in memory (memfd), so runs leave nothing on disk and cost no disk I/O; the path
 * through /proc makes a loader open, stat and read or map it exactly as a file on disk. Close the
 * returned descriptor when done. */
static inline int fuzz_input_file(const uint8_t *data, size_t size, char *path, size_t path_size)
{
    int fd = memfd_create("fuzz-input", MFD_CLOEXEC);
    if (fd < 0) {
        perror("memfd_create");
        abort();
    }
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            perror("write");
            abort();
        }
        done += (size_t)n;
    }
    snprintf(path, path_size, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
