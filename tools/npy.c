/* npy.c - the .npy format: a magic string, a version, a Python-dict header, then raw data. */
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static gboolean fail(GError **error, const char *path, const char *what)
{
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL, "%s: %s", path, what);
    return FALSE;
}

static size_t dtype_size(const char *code)
{
    if (strlen(code) != 2 || !strchr("uif", code[0]) || !strchr("1248", code[1]))
        return 0;
    return (size_t)(code[1] - '0');
}

/* The dict of a .npy header (NUL-terminated) into out's dtype, shape and sizes. */
static gboolean parse_header(const char *hdr, Npy *out)
{
    const char *d = strstr(hdr, "'descr':");
    const char *f = strstr(hdr, "'fortran_order':");
    const char *s = strstr(hdr, "'shape':");
    if (!d || !f || !s || strncmp(f + 16, " False", 6) != 0)
        return FALSE;
    /* 'B' + two-character code + ', where B is the byte order */
    const char *q = strchr(d + 8, '\'');
    if (!q || strnlen(q, 5) < 5 || (q[1] != '<' && q[1] != '|') || q[4] != '\'')
        return FALSE;
    memcpy(out->dtype, q + 2, 2);
    out->dtype[2] = 0;
    out->elem_size = dtype_size(out->dtype);
    const char *p = strchr(s, '(');
    if (!p || out->elem_size == 0)
        return FALSE;
    out->n_elems = 1;
    for (p++; *p != ')';) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        char *end;
        gint64 dim = g_ascii_strtoll(p, &end, 10);
        if (end == p || dim < 0 || out->n_dims == NPY_MAX_DIMS ||
            !g_size_checked_mul(&out->n_elems, out->n_elems, (size_t)dim))
            return FALSE;
        out->shape[out->n_dims++] = dim;
        p = end;
    }
    return TRUE;
}

gboolean npy_load(const char *path, Npy *out, GError **error)
{
    memset(out, 0, sizeof *out);
    gchar *buf;
    gsize len;
    if (!g_file_get_contents(path, &buf, &len, error))
        return FALSE;
    gboolean ok = FALSE;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        fail(error, path, "not a .npy file");
        goto out;
    }
    size_t hlen, hstart;
    if (buf[6] == 1) {
        hlen = (uint8_t)buf[8] | (size_t)(uint8_t)buf[9] << 8;
        hstart = 10;
    } else if (buf[6] >= 2 && len >= 12) {
        hlen = (uint8_t)buf[8] | (size_t)(uint8_t)buf[9] << 8 | (size_t)(uint8_t)buf[10] << 16 |
               (size_t)(uint8_t)buf[11] << 24;
        hstart = 12;
    } else {
        fail(error, path, "unsupported .npy version");
        goto out;
    }
    if (hstart + hlen > len) {
        fail(error, path, "truncated header");
        goto out;
    }
    /* A copy, so the header's end is a NUL whatever the file holds: every look below stops there
     * (strnlen before indexing), never at the end of the buffer. */
    gchar *hdr = g_strndup(buf + hstart, hlen);
    gboolean hdr_ok = parse_header(hdr, out);
    g_free(hdr);
    size_t nbytes;
    if (!hdr_ok || !g_size_checked_mul(&nbytes, out->n_elems, out->elem_size)) {
        fail(error, path, "malformed header: expected {'descr': '<xN', 'fortran_order': False, "
             "'shape': (...)} with a little-endian number type and a shape that fits in memory");
        goto out;
    }
    if (len - hstart - hlen < nbytes) {
        fail(error, path, "truncated data");
        goto out;
    }
    out->data = g_malloc(nbytes ? nbytes : 1);
    memcpy(out->data, buf + hstart + hlen, nbytes);
    ok = TRUE;
out:
    g_free(buf);
    return ok;
}

void npy_free(Npy *a)
{
    g_free(a->data);
    a->data = NULL;
}

gboolean npy_save(const char *path, const char *dtype, const int64_t *shape, int n_dims,
                  const void *data, GError **error)
{
    size_t esize = dtype_size(dtype);
    if (!esize)
        return fail(error, path, "unsupported dtype");
    GString *h = g_string_new(NULL);
    g_string_append_printf(h, "{'descr': '%c%s', 'fortran_order': False, 'shape': (",
                           esize == 1 ? '|' : '<', dtype);
    size_t n = 1;
    for (int i = 0; i < n_dims; i++) {
        g_string_append_printf(h, "%" G_GINT64_FORMAT ",%s", shape[i], i + 1 < n_dims ? " " : "");
        n *= (size_t)shape[i];
    }
    if (n_dims > 1)
        g_string_truncate(h, h->len - 1); /* "(2, 3)" but "(5,)" */
    g_string_append(h, "), }");
    while ((10 + h->len + 1) % 64)
        g_string_append_c(h, ' ');
    g_string_append_c(h, '\n');
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        g_string_free(h, TRUE);
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno), "%s: %s", path,
                    g_strerror(errno));
        return FALSE;
    }
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(h->len & 0xff),
                       (uint8_t)(h->len >> 8)};
    gboolean ok = fwrite(pre, 1, 10, fp) == 10 && fwrite(h->str, 1, h->len, fp) == h->len &&
                  fwrite(data, esize, n, fp) == n;
    ok = (fclose(fp) == 0) && ok;
    g_string_free(h, TRUE);
    if (!ok)
        return fail(error, path, "write failed");
    return TRUE;
}
