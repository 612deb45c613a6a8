/* replay.c - a plain main for a fuzz target, so the seed corpora and every saved crash input run
 * in the ordinary test suite with any compiler (and under the sanitizers in CI's sanitizer pass).
 *
 *   replay-<surface> PATH...   each PATH a file, or a directory whose files are all replayed
 *
 * Prints a TAP line per path; fails when an input crashes, when a path cannot be read, or when
 * nothing at all was replayed (a replay of nothing proves nothing). */
#include <glib.h>
#include <stdio.h>
#include <string.h>

#include "fuzz.h"

static gboolean replay_file(const char *path)
{
    char *data;
    gsize size;
    GError *error = NULL;
    if (!g_file_get_contents(path, &data, &size, &error)) {
        fprintf(stderr, "replay: %s\n", error->message);
        g_error_free(error);
        return FALSE;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)data, size);
    g_free(data);
    return TRUE;
}

static int compare_names(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The files of a directory, in name order so runs are reproducible; how many were replayed, or
 * -1 if the directory or one of its files cannot be read. */
static int replay_dir(const char *path)
{
    GDir *dir = g_dir_open(path, 0, NULL);
    if (!dir)
        return -1;
    GPtrArray *files = g_ptr_array_new_with_free_func(g_free);
    for (const char *name; (name = g_dir_read_name(dir));)
        if (name[0] != '.')
            g_ptr_array_add(files, g_build_filename(path, name, NULL));
    g_dir_close(dir);
    g_ptr_array_sort(files, compare_names);
    int n = 0;
    for (guint i = 0; i < files->len && n >= 0; i++)
        n = replay_file(files->pdata[i]) ? n + 1 : -1;
    g_ptr_array_unref(files);
    return n;
}

int main(int argc, char **argv)
{
    int failed = 0, total = 0;
    printf("1..%d\n", argc - 1);
    for (int i = 1; i < argc; i++) {
        int n = g_file_test(argv[i], G_FILE_TEST_IS_DIR) ? replay_dir(argv[i])
                                                         : replay_file(argv[i]) ? 1 : -1;
        gboolean ok = n >= 0;
        printf("%s %d - %s: %d inputs replayed\n", ok ? "ok" : "not ok", i, argv[i], MAX(n, 0));
        failed += !ok;
        total += MAX(n, 0);
    }
    fprintf(stderr, "replay: %d inputs\n", total);
    return failed > 0 || total == 0;
}
