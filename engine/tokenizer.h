/* tokenizer.h - GPT-NeoX byte-level BPE, read from the model file's tokenizer.ggml.* keys. */
#ifndef COBRA_TOKENIZER_H
#define COBRA_TOKENIZER_H

#include <glib.h>
#include <stdint.h>

#include "gguf.h"

typedef struct Tokenizer Tokenizer;

Tokenizer *tokenizer_load(const GgufFile *f, GError **error);
void tokenizer_free(Tokenizer *t);

int tokenizer_n_tokens(const Tokenizer *t);
int tokenizer_eos(const Tokenizer *t);
const char *tokenizer_token_text(const Tokenizer *t, int id); /* the raw (byte-mapped) string */

/* Append the ids of UTF-8 text to ids (GArray of int32). Invalid UTF-8 is an error. */
gboolean tokenizer_encode(const Tokenizer *t, const char *text, gssize len, GArray *ids,
                          GError **error);

/* Decoded text of ids (invalid byte sequences become U+FFFD, as the reference does). */
char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, gboolean skip_special);

/* Streaming decode: push ids one at a time; each push appends to `out` only whole UTF-8
 * characters, holding back an incomplete sequence until the next ids complete it. */
typedef struct {
    GByteArray *pending;
} TokenStream;
void token_stream_init(TokenStream *s);
void token_stream_clear(TokenStream *s);
void token_stream_push(const Tokenizer *t, TokenStream *s, int32_t id, gboolean skip_special,
                       GString *out);
/* Flush whatever is held back (as U+FFFD). */
void token_stream_finish(TokenStream *s, GString *out);

#endif
