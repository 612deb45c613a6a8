/* fuzz_npy.c - a hostile .npy file through cobra-cli's reader (tools/npy.c): the header dict is
 * parsed by hand, so every malformed or truncated header must end in an error naming the file,
 * and an array that loads must have all the bytes its shape and dtype say. */
#include <glib.h>
#include <string.h>

#include "fuzz.h"
#include "npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_input_file(data, size, path, sizeof path);
    Npy a;
    GError *error = NULL;
    if (npy_load(path, &a, &error)) {
        size_t n = 1;
        for (int i = 0; i < a.n_dims; i++)
            n *= (size_t)a.shape[i];
        if (n != a.n_elems || a.elem_size == 0 || a.n_dims > NPY_MAX_DIMS) {
            fprintf(stderr, "npy_load: shape, count and dtype disagree\n");
            abort();
        }
        /* touch every byte, so a short buffer trips the sanitizer */
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < a.n_elems * a.elem_size; i++)
            sum += ((const uint8_t *)a.data)[i];
        npy_free(&a);
    } else if (!error || !strstr(error->message, path)) {
        fprintf(stderr, "npy_load failed without an error naming the file\n");
        abort();
    }
    g_clear_error(&error);
    close(fd);
    return 0;
}
