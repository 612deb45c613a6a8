/* fuzz_tokenizer.c - arbitrary bytes through the tokenizer of the tiny model, both ways:
 *
 * - as text: encoding must refuse invalid UTF-8 with an error, and otherwise be lossless up to
 *   canonical equivalence (decode(encode(s)) has the NFC form of s; the tokenizer normalises to
 *   NFC except inside special tokens, so comparing NFC forms is the exact promise);
 * - as token ids (16 bits each, shifted so negative and out-of-range ids occur): streaming decode,
 *   pushed one id at a time, must give the same valid UTF-8 (NULs allowed: byte 0 is a token) as
 *   the one-shot decode.
 *
 * The model file is $COBRA_FUZZ_MODEL, else the tiny model the build converts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "gguf.h"
#include "tokenizer.h"

#ifndef COBRA_FUZZ_DEFAULT_MODEL
#error "the build defines COBRA_FUZZ_DEFAULT_MODEL"
#endif

/* Ids are read as 16-bit values minus this, so a few are negative. */
#define ID_SHIFT 8

static void fail(const char *what, size_t size)
{
    fprintf(stderr, "fuzz-tokenizer: %s (input of %zu bytes)\n", what, size);
    abort();
}

/* Loaded on first use and kept for the process: only the tokenizer is under test here. */
static const Tokenizer *tokenizer(void)
{
    static Tokenizer *t;
    if (t)
        return t;
    const char *path = g_getenv("COBRA_FUZZ_MODEL");
    if (!path)
        path = COBRA_FUZZ_DEFAULT_MODEL;
    GError *error = NULL;
    GgufFile *f = gguf_open(path, &error);
    if (f) {
        t = tokenizer_load(f, &error);
        gguf_close(f); /* the tokenizer keeps copies: closing proves it needs nothing more */
    }
    if (!t) {
        fprintf(stderr, "fuzz-tokenizer: cannot load the tokenizer (set COBRA_FUZZ_MODEL): %s\n",
                error->message);
        abort();
    }
    return t;
}

/* UTF-8 with NULs allowed: a token may stand for byte 0, which GLib's validators refuse. */
static gboolean utf8_valid(const char *s, size_t n)
{
    const char *end;
    while (!g_utf8_validate_len(s, n, &end)) {
        if (*end != '\0')
            return FALSE;
        n -= (size_t)(end + 1 - s);
        s = end + 1;
    }
    return TRUE;
}

static char *nfc(const char *s, gssize len)
{
    return g_utf8_normalize(s, len, G_NORMALIZE_NFC);
}

static void check_round_trip(const Tokenizer *t, const uint8_t *data, size_t size)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *error = NULL;
    gboolean valid = g_utf8_validate_len((const char *)data, size, NULL);
    gboolean ok = tokenizer_encode(t, (const char *)data, (gssize)size, ids, &error);
    if (ok != valid)
        fail(valid ? "valid UTF-8 refused" : "invalid UTF-8 accepted", size);
    if (!ok && (!error || !error->message[0]))
        fail("refused without an error message", size);
    g_clear_error(&error);
    if (ok) {
        char *decoded = tokenizer_decode(t, (const int32_t *)ids->data, ids->len, FALSE);
        char *want = nfc((const char *)data, (gssize)size), *got = nfc(decoded, -1);
        if (!got || strcmp(want, got) != 0)
            fail("decode(encode(text)) is not canonically equivalent to the text", size);
        g_free(want);
        g_free(got);
        g_free(decoded);
    }
    g_array_unref(ids);
}

static void check_stream_decode(const Tokenizer *t, const uint8_t *data, size_t size)
{
    gboolean skip_special = size > 0 && (data[0] & 1);
    size_t n = size / 2;
    int32_t *ids = g_new(int32_t, n + 1);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)(data[2 * i] | data[2 * i + 1] << 8) - ID_SHIFT;

    TokenStream stream;
    token_stream_init(&stream);
    GString *streamed = g_string_new(NULL);
    for (size_t i = 0; i < n; i++) {
        gsize before = streamed->len;
        token_stream_push(t, &stream, ids[i], skip_special, streamed);
        if (!utf8_valid(streamed->str + before, streamed->len - before))
            fail("a streamed piece is not valid UTF-8", size);
    }
    token_stream_finish(&stream, streamed);
    token_stream_clear(&stream);

    /* The one-shot decode has no length: a NUL in it would hide the rest, so its bytes are
     * compared up to the streamed length (its buffer holds them all, else ASan stops us). */
    char *whole = tokenizer_decode(t, ids, n, skip_special);
    if (memcmp(whole, streamed->str, streamed->len + 1) != 0)
        fail("streaming decode differs from one-shot decode", size);
    g_free(whole);
    g_string_free(streamed, TRUE);
    g_free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const Tokenizer *t = tokenizer();
    check_round_trip(t, data, size);
    check_stream_decode(t, data, size);
    return 0;
}
