/* tokenizer.c - GPT-NeoX byte-level BPE, matching Hugging Face `tokenizers` on tokenizer.json:
 * added tokens split out first (specials on the raw text, the others after NFC), then the GPT-2
 * pre-tokenizer regex, the byte -> unicode map and BPE by merge rank. */
#include "tokenizer.h"

#include <string.h>

#include "cobra.h"

enum { TOKEN_NORMAL = 1, TOKEN_CONTROL = 3, TOKEN_USER = 4, TOKEN_UNUSED = 5 };

/* The byte -> unicode map of GPT-2 reaches code points below this. */
#define BYTE_CHAR_LIMIT 324

typedef struct {
    const char *text; /* the bytes to match (decoded token text) */
    size_t len;
    int32_t id;
    gboolean normalized; /* matched on NFC-normalised text (HF `normalized: true`) */
} AddedToken;

/* Open-addressing hash map from a pair of token ids to its merge: rank and resulting id. */
typedef struct {
    uint64_t *keys;  /* (left << 32 | right) + 1; 0 = empty */
    int32_t *rank;
    int32_t *merged;
    size_t mask;
} MergeMap;

struct Tokenizer {
    int n_tokens;
    int eos;
    char **text;          /* [n_tokens] token strings as in the file */
    int32_t *type;        /* [n_tokens] */
    GByteArray *bytes;    /* decoded bytes of every token, concatenated */
    uint32_t *bytes_off;  /* [n_tokens + 1] offsets into bytes */
    int32_t byte_token[256];
    MergeMap merges;
    AddedToken *added;
    int n_added;
};

/* ---- the GPT-2 byte <-> unicode alphabet ---- */

static gboolean byte_is_printable(int b)
{
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* byte_char[b]: the code point standing for byte b. */
static void byte_chars(gunichar byte_char[256])
{
    int n = 0;
    for (int b = 0; b < 256; b++)
        byte_char[b] = byte_is_printable(b) ? (gunichar)b : (gunichar)(256 + n++);
}

/* A token string back to bytes as HF's ByteLevel decoder does: through the alphabet when every
 * character belongs to it, else the string's own UTF-8 (added tokens like "  " are stored raw). */
static void token_to_bytes(const char *s, const int16_t char_byte[BYTE_CHAR_LIMIT],
                           GByteArray *out)
{
    guint start = out->len;
    for (const char *p = s; *p; p = g_utf8_next_char(p)) {
        gunichar c = g_utf8_get_char_validated(p, -1);
        if (c >= BYTE_CHAR_LIMIT || char_byte[c] < 0) {
            g_byte_array_set_size(out, start);
            g_byte_array_append(out, (const guint8 *)s, strlen(s));
            return;
        }
        guint8 b = (guint8)char_byte[c];
        g_byte_array_append(out, &b, 1);
    }
}

/* ---- UTF-8 with the replacement rules of Rust's String::from_utf8_lossy ---- */

/* Length of the character at s[0..n) if it is whole and valid (> 0); otherwise -k where k is the
 * number of leading bytes that form the start of a valid character (0 for a bad lead byte). */
static int utf8_char_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    int len;
    uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c < 0x80)
        return 1;
    else if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n || s[i] < lo || s[i] > hi)
            return -i;
        lo = 0x80, hi = 0xBF;
    }
    return len;
}

static void append_replacement(GString *out)
{
    g_string_append(out, "\xEF\xBF\xBD");
}

/* Append s[0..n) to out with each maximal invalid sequence replaced by U+FFFD. When hold_tail,
 * an incomplete character at the very end is left alone. Returns the bytes consumed. */
static size_t append_lossy(GString *out, const uint8_t *s, size_t n, gboolean hold_tail)
{
    size_t i = 0;
    while (i < n) {
        int r = utf8_char_len(s + i, n - i);
        if (r > 0) {
            g_string_append_len(out, (const char *)s + i, r);
            i += r;
        } else if (hold_tail && r < 0 && (size_t)-r == n - i) {
            break;
        } else {
            append_replacement(out);
            i += r < 0 ? (size_t)-r : 1;
        }
    }
    return i;
}

/* ---- merges ---- */

static uint64_t pair_key(int32_t left, int32_t right)
{
    return ((uint64_t)(uint32_t)left << 32 | (uint32_t)right) + 1;
}

static size_t pair_slot(const MergeMap *m, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull; /* Fibonacci hashing spreads consecutive ids */
    size_t i = (size_t)(h >> 20) & m->mask;
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & m->mask;
    return i;
}

static void merge_map_init(MergeMap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    m->keys = g_new0(uint64_t, cap);
    m->rank = g_new(int32_t, cap);
    m->merged = g_new(int32_t, cap);
    m->mask = cap - 1;
}

static void merge_map_clear(MergeMap *m)
{
    g_free(m->keys);
    g_free(m->rank);
    g_free(m->merged);
}

/* The first (lowest-rank) merge of a pair wins, as in HF. */
static void merge_map_add(MergeMap *m, int32_t left, int32_t right, int32_t rank, int32_t merged)
{
    uint64_t key = pair_key(left, right);
    size_t i = pair_slot(m, key);
    if (m->keys[i])
        return;
    m->keys[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
}

/* Rank of merging left+right and (*merged) the resulting id; both -1 if there is no merge. */
static int32_t merge_lookup(const MergeMap *m, int32_t left, int32_t right, int32_t *merged)
{
    size_t i = pair_slot(m, pair_key(left, right));
    gboolean found = m->keys[i] != 0;
    *merged = found ? m->merged[i] : -1;
    return found ? m->rank[i] : -1;
}

/* ---- loading ---- */

void tokenizer_free(Tokenizer *t)
{
    if (!t)
        return;
    if (t->text)
        for (int i = 0; i < t->n_tokens; i++)
            g_free(t->text[i]);
    g_free(t->text);
    g_free(t->type);
    if (t->bytes)
        g_byte_array_unref(t->bytes);
    g_free(t->bytes_off);
    merge_map_clear(&t->merges);
    if (t->added)
        for (int i = 0; i < t->n_added; i++)
            g_free((char *)t->added[i].text);
    g_free(t->added);
    g_free(t);
}

static gboolean load_vocab(Tokenizer *t, const GgufFile *f, GError **error)
{
    size_t n, n_types;
    const char *const *tokens = gguf_get_string_array(f, "tokenizer.ggml.tokens", &n, error);
    if (!tokens)
        return FALSE;
    const int32_t *types = gguf_get_i32_array(f, "tokenizer.ggml.token_type", &n_types, error);
    if (!types)
        return FALSE;
    if (n == 0 || n > G_MAXINT32 || n_types != n) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: tokenizer.ggml.tokens has %zu entries and tokenizer.ggml.token_type %zu; "
                    "expected the same non-zero count", gguf_path(f), n, n_types);
        return FALSE;
    }
    t->n_tokens = (int)n;
    t->text = g_new0(char *, n);
    t->type = g_new(int32_t, n);
    for (size_t i = 0; i < n; i++) {
        if (!g_utf8_validate(tokens[i], -1, NULL)) {
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                        "%s: token %zu of tokenizer.ggml.tokens is not valid UTF-8",
                        gguf_path(f), i);
            return FALSE;
        }
        t->text[i] = g_strdup(tokens[i]);
        t->type[i] = types[i];
    }
    return TRUE;
}

static void load_token_bytes(Tokenizer *t)
{
    gunichar byte_char[256];
    int16_t char_byte[BYTE_CHAR_LIMIT];
    byte_chars(byte_char);
    memset(char_byte, 0xFF, sizeof char_byte);
    for (int b = 0; b < 256; b++)
        char_byte[byte_char[b]] = (int16_t)b;

    t->bytes = g_byte_array_new();
    t->bytes_off = g_new(uint32_t, t->n_tokens + 1);
    for (int i = 0; i < t->n_tokens; i++) {
        t->bytes_off[i] = t->bytes->len;
        token_to_bytes(t->text[i], char_byte, t->bytes);
    }
    t->bytes_off[t->n_tokens] = t->bytes->len;
}

/* Model vocabulary: the first id of each string (added tokens never shadow BPE tokens). */
static GHashTable *vocab_index(const Tokenizer *t)
{
    GHashTable *index = g_hash_table_new(g_str_hash, g_str_equal);
    for (int i = 0; i < t->n_tokens; i++)
        if (!g_hash_table_contains(index, t->text[i]))
            g_hash_table_insert(index, t->text[i], GINT_TO_POINTER(i));
    return index;
}

static gboolean lookup_token(GHashTable *index, const char *s, int32_t *id)
{
    gpointer value;
    if (!g_hash_table_lookup_extended(index, s, NULL, &value))
        return FALSE;
    *id = GPOINTER_TO_INT(value);
    return TRUE;
}

/* Bytes that never occur in UTF-8 (C0, C1, F5..FF) may lack a token: encoding validates first. */
static gboolean load_byte_tokens(Tokenizer *t, GHashTable *index, const GgufFile *f,
                                 GError **error)
{
    gunichar byte_char[256];
    byte_chars(byte_char);
    for (int b = 0; b < 256; b++) {
        char s[8] = { 0 };
        g_unichar_to_utf8(byte_char[b], s);
        gboolean in_utf8 = b < 0xC0 || (b >= 0xC2 && b <= 0xF4);
        if (!lookup_token(index, s, &t->byte_token[b]) && in_utf8) {
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                        "%s: tokenizer.ggml.tokens lacks the token \"%s\" for byte 0x%02X",
                        gguf_path(f), s, b);
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean load_merges(Tokenizer *t, GHashTable *index, const GgufFile *f, GError **error)
{
    size_t n;
    const char *const *merges = gguf_get_string_array(f, "tokenizer.ggml.merges", &n, error);
    if (!merges)
        return FALSE;
    if (n > G_MAXINT32) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: tokenizer.ggml.merges has %zu entries, too many", gguf_path(f), n);
        return FALSE;
    }
    merge_map_init(&t->merges, n);
    for (size_t r = 0; r < n; r++) {
        const char *space = strchr(merges[r], ' ');
        char *left = space ? g_strndup(merges[r], space - merges[r]) : NULL;
        char *joined = space ? g_strconcat(left, space + 1, NULL) : NULL;
        int32_t a, b, ab;
        gboolean ok = space && !strchr(space + 1, ' ') && lookup_token(index, left, &a) &&
                      lookup_token(index, space + 1, &b) && lookup_token(index, joined, &ab);
        g_free(left);
        g_free(joined);
        if (!ok) {
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                        "%s: merge %zu \"%s\" of tokenizer.ggml.merges is not two tokens whose "
                        "concatenation is a token", gguf_path(f), r, merges[r]);
            return FALSE;
        }
        merge_map_add(&t->merges, a, b, (int32_t)r, ab);
    }
    return TRUE;
}

/* Added tokens (types 3 and 4) as the byte strings to match; the normalised ones in NFC. */
static void load_added_tokens(Tokenizer *t)
{
    t->added = g_new0(AddedToken, t->n_tokens);
    for (int i = 0; i < t->n_tokens; i++) {
        if (t->type[i] != TOKEN_CONTROL && t->type[i] != TOKEN_USER)
            continue;
        const char *raw = (const char *)t->bytes->data + t->bytes_off[i];
        gssize len = t->bytes_off[i + 1] - t->bytes_off[i];
        AddedToken *a = &t->added[t->n_added];
        a->id = i;
        a->normalized = t->type[i] == TOKEN_USER;
        a->text = a->normalized ? g_utf8_normalize(raw, len, G_NORMALIZE_NFC) : NULL;
        if (!a->text) /* raw text, or bytes that are not UTF-8 (then never normalised input) */
            a->text = g_strndup(raw, len);
        a->len = strlen(a->text);
        if (a->len > 0)
            t->n_added++;
        else
            g_free((char *)a->text);
    }
}

Tokenizer *tokenizer_load(const GgufFile *f, GError **error)
{
    Tokenizer *t = g_new0(Tokenizer, 1);
    const char *model = gguf_get_string(f, "tokenizer.ggml.model", error);
    if (!model)
        goto fail;
    if (strcmp(model, "gpt2") != 0) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_FORMAT,
                    "%s: tokenizer.ggml.model is \"%s\"; only \"gpt2\" (byte-level BPE) is "
                    "supported", gguf_path(f), model);
        goto fail;
    }
    if (!load_vocab(t, f, error))
        goto fail;
    uint64_t eos;
    if (!gguf_get_uint(f, "tokenizer.ggml.eos_token_id", (uint64_t)t->n_tokens - 1, &eos, error))
        goto fail;
    t->eos = (int)eos;
    load_token_bytes(t);
    GHashTable *index = vocab_index(t);
    gboolean ok = load_byte_tokens(t, index, f, error) && load_merges(t, index, f, error);
    g_hash_table_unref(index);
    if (!ok)
        goto fail;
    load_added_tokens(t);
    return t;
fail:
    tokenizer_free(t);
    return NULL;
}

int tokenizer_n_tokens(const Tokenizer *t)
{
    return t->n_tokens;
}

int tokenizer_eos(const Tokenizer *t)
{
    return t->eos;
}

const char *tokenizer_token_text(const Tokenizer *t, int id)
{
    return id >= 0 && id < t->n_tokens ? t->text[id] : NULL;
}

/* ---- BPE of one pre-token ---- */

typedef struct {
    int32_t rank;
    int32_t pos; /* index of the left symbol */
} Candidate;

/* Scratch space of one encode call, reused across pre-tokens. */
typedef struct {
    int32_t *sym;  /* token id of the symbol starting at each byte */
    int32_t *prev, *next;
    gboolean *alive;
    Candidate *heap;
    size_t n_heap, cap;
} Bpe;

static void bpe_reserve(Bpe *w, size_t n)
{
    if (n <= w->cap)
        return;
    w->cap = MAX(n, 2 * w->cap);
    w->sym = g_renew(int32_t, w->sym, w->cap);
    w->prev = g_renew(int32_t, w->prev, w->cap);
    w->next = g_renew(int32_t, w->next, w->cap);
    w->alive = g_renew(gboolean, w->alive, w->cap);
    w->heap = g_renew(Candidate, w->heap, w->cap);
}

static void bpe_clear(Bpe *w)
{
    g_free(w->sym);
    g_free(w->prev);
    g_free(w->next);
    g_free(w->alive);
    g_free(w->heap);
}

/* Lower rank first; at equal rank the leftmost, as HF's merge queue orders them. */
static gboolean candidate_before(Candidate a, Candidate b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(Bpe *w, Candidate c)
{
    size_t i = w->n_heap++;
    while (i > 0 && candidate_before(c, w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = c;
}

static Candidate heap_pop(Bpe *w)
{
    Candidate top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= w->n_heap)
            break;
        if (child + 1 < w->n_heap && candidate_before(w->heap[child + 1], w->heap[child]))
            child++;
        if (!candidate_before(w->heap[child], last))
            break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    w->heap[i] = last;
    return top;
}

static void push_pair(const Tokenizer *t, Bpe *w, int32_t left)
{
    int32_t merged;
    if (left < 0 || w->next[left] < 0)
        return;
    int32_t rank = merge_lookup(&t->merges, w->sym[left], w->sym[w->next[left]], &merged);
    if (rank >= 0)
        heap_push(w, (Candidate){ rank, left });
}

/* Each merge adds at most two candidates, so the heap never holds more than 2n; stale
 * candidates (a side already merged away) are recognised on pop and dropped. */
static void bpe_word(const Tokenizer *t, Bpe *w, const uint8_t *s, size_t n, GArray *ids)
{
    bpe_reserve(w, 2 * n + 1);
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = t->byte_token[s[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        w->alive[i] = TRUE;
    }
    w->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, w, (int32_t)i);
    while (w->n_heap > 0) {
        Candidate c = heap_pop(w);
        int32_t right = w->next[c.pos], merged;
        if (!w->alive[c.pos] || right < 0 ||
            merge_lookup(&t->merges, w->sym[c.pos], w->sym[right], &merged) != c.rank)
            continue;
        w->sym[c.pos] = merged;
        w->alive[right] = FALSE;
        w->next[c.pos] = w->next[right];
        if (w->next[right] >= 0)
            w->prev[w->next[right]] = c.pos;
        push_pair(t, w, w->prev[c.pos]);
        push_pair(t, w, c.pos);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i])
        g_array_append_val(ids, w->sym[i]);
}

/* ---- the GPT-2 pre-tokenizer ----
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * Every character is matched by some alternative, so each match starts where the last ended. */

typedef enum { CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER } CharClass;

/* \s is Unicode White_Space (as in Oniguruma), which g_unichar_isspace() does not quite cover. */
static CharClass char_class(gunichar c)
{
    switch (g_unichar_type(c)) {
    case G_UNICODE_LOWERCASE_LETTER:
    case G_UNICODE_UPPERCASE_LETTER:
    case G_UNICODE_TITLECASE_LETTER:
    case G_UNICODE_MODIFIER_LETTER:
    case G_UNICODE_OTHER_LETTER:
        return CLASS_LETTER;
    case G_UNICODE_DECIMAL_NUMBER:
    case G_UNICODE_LETTER_NUMBER:
    case G_UNICODE_OTHER_NUMBER:
        return CLASS_NUMBER;
    case G_UNICODE_SPACE_SEPARATOR:
    case G_UNICODE_LINE_SEPARATOR:
    case G_UNICODE_PARAGRAPH_SEPARATOR:
        return CLASS_SPACE;
    default:
        return (c >= 0x09 && c <= 0x0D) || c == 0x85 ? CLASS_SPACE : CLASS_OTHER;
    }
}

/* Class of the character at s[i]; *next gets the index after it. */
static CharClass class_at(const char *s, size_t i, size_t *next)
{
    *next = g_utf8_next_char(s + i) - s;
    return char_class(g_utf8_get_char(s + i));
}

/* End of the run of characters of class `cls` (or, for CLASS_OTHER, of no other class) from i. */
static size_t run_end(const char *s, size_t i, size_t n, CharClass cls)
{
    size_t next;
    while (i < n && class_at(s, i, &next) == cls)
        i = next;
    return i;
}

static size_t contraction_len(const char *s, size_t i, size_t n)
{
    static const char *const suffixes[] = { "s", "t", "re", "ve", "m", "ll", "d" };
    if (s[i] != '\'')
        return 0;
    for (size_t k = 0; k < G_N_ELEMENTS(suffixes); k++) {
        size_t len = strlen(suffixes[k]);
        if (i + 1 + len <= n && memcmp(s + i + 1, suffixes[k], len) == 0)
            return 1 + len;
    }
    return 0;
}

/* Length of the pre-token starting at s[i]. */
static size_t pretoken_len(const char *s, size_t i, size_t n)
{
    size_t len = contraction_len(s, i, n);
    if (len)
        return len;
    size_t after;
    CharClass cls = class_at(s, i, &after);
    if (s[i] == ' ' && after < n) { /* " ?" before a letter, number or other run */
        size_t after2;
        CharClass next_cls = class_at(s, after, &after2);
        if (next_cls != CLASS_SPACE)
            return run_end(s, after, n, next_cls) - i;
    }
    if (cls != CLASS_SPACE)
        return run_end(s, i, n, cls) - i;
    /* \s+(?!\S): the whitespace run, less its last character when a non-space follows;
     * \s+ takes a lone space character before a non-space. */
    size_t end = run_end(s, i, n, CLASS_SPACE);
    if (end == n)
        return end - i;
    size_t last = end;
    do
        last--;
    while ((s[last] & 0xC0) == 0x80);
    return last > i ? last - i : end - i;
}

static void encode_pretokens(const Tokenizer *t, Bpe *w, const char *s, size_t n, GArray *ids)
{
    for (size_t i = 0; i < n;) {
        size_t len = pretoken_len(s, i, n);
        bpe_word(t, w, (const uint8_t *)s + i, len, ids);
        i += len;
    }
}

/* ---- added tokens ---- */

/* The longest added token of the given kind at s[i..n), or NULL. */
static const AddedToken *added_at(const Tokenizer *t, const char *s, size_t i, size_t n,
                                  gboolean normalized)
{
    const AddedToken *best = NULL;
    for (int k = 0; k < t->n_added; k++) {
        const AddedToken *a = &t->added[k];
        if (a->normalized == normalized && a->len <= n - i && (!best || a->len > best->len) &&
            s[i] == a->text[0] && memcmp(s + i, a->text, a->len) == 0)
            best = a;
    }
    return best;
}

/* Split s[0..n) at added tokens of one kind (leftmost, then longest, as HF's trie matches);
 * the text between them goes to `between`. */
typedef void (*SegmentFunc)(const Tokenizer *t, Bpe *w, const char *s, size_t n, GArray *ids);

static void split_added(const Tokenizer *t, Bpe *w, const char *s, size_t n, gboolean normalized,
                        SegmentFunc between, GArray *ids)
{
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        const AddedToken *a = added_at(t, s, i, n, normalized);
        if (!a) {
            i++;
            continue;
        }
        if (i > start)
            between(t, w, s + start, i - start, ids);
        g_array_append_val(ids, a->id);
        i += a->len;
        start = i;
    }
    if (n > start)
        between(t, w, s + start, n - start, ids);
}

static void encode_normalized(const Tokenizer *t, Bpe *w, const char *s, size_t n, GArray *ids)
{
    split_added(t, w, s, n, TRUE, encode_pretokens, ids);
}

/* Whether text can be cut before c without changing its NFC: c is a starter that is no mark and
 * no conjoining jamo, so nothing reorders across it and it composes with nothing before it. */
static gboolean nfc_boundary(gunichar c)
{
    if (c < 0x80)
        return TRUE;
    GUnicodeType type = g_unichar_type(c);
    return g_unichar_combining_class(c) == 0 && type != G_UNICODE_NON_SPACING_MARK &&
           type != G_UNICODE_SPACING_MARK && type != G_UNICODE_ENCLOSING_MARK &&
           !(c >= 0x1100 && c <= 0x11FF);
}

/* NFC of s[0..n) (valid UTF-8), normalised in pieces of about NFC_PIECE bytes cut at
 * boundaries: GLib's composition step is quadratic in the length it is given. */
#define NFC_PIECE 256

static void append_nfc(GString *out, const char *s, size_t n)
{
    char *piece = g_utf8_normalize(s, n, G_NORMALIZE_NFC);
    g_string_append(out, piece);
    g_free(piece);
}

static GString *normalize_nfc(const char *s, size_t n)
{
    GString *out = g_string_sized_new(n);
    size_t start = 0;
    for (size_t i = 0; i < n; i = g_utf8_next_char(s + i) - s)
        if (i - start >= NFC_PIECE && nfc_boundary(g_utf8_get_char(s + i))) {
            append_nfc(out, s + start, i - start);
            start = i;
        }
    append_nfc(out, s + start, n - start);
    return out;
}

static void encode_raw_segment(const Tokenizer *t, Bpe *w, const char *s, size_t n, GArray *ids)
{
    GString *nfc = normalize_nfc(s, n);
    encode_normalized(t, w, nfc->str, nfc->len, ids);
    g_string_free(nfc, TRUE);
}

gboolean tokenizer_encode(const Tokenizer *t, const char *text, gssize len, GArray *ids,
                          GError **error)
{
    size_t n = len < 0 ? strlen(text) : (size_t)len;
    const char *end;
    if (!g_utf8_validate_len(text, n, &end)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID,
                    "text to tokenize is not valid UTF-8: %s byte 0x%02X at byte offset %zu",
                    *end ? "bad" : "NUL", (guint8)*end, (size_t)(end - text));
        return FALSE;
    }
    Bpe w = { 0 };
    split_added(t, &w, text, n, FALSE, encode_raw_segment, ids);
    bpe_clear(&w);
    return TRUE;
}

/* ---- decoding ---- */

/* The bytes an id decodes to; none for unknown ids, unused slots and skipped specials. */
static const uint8_t *token_bytes(const Tokenizer *t, int32_t id, gboolean skip_special,
                                  size_t *n)
{
    *n = 0;
    if (id < 0 || id >= t->n_tokens || t->type[id] == TOKEN_UNUSED ||
        (skip_special && t->type[id] == TOKEN_CONTROL))
        return NULL;
    *n = t->bytes_off[id + 1] - t->bytes_off[id];
    return t->bytes->data + t->bytes_off[id];
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n, gboolean skip_special)
{
    GByteArray *bytes = g_byte_array_new();
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const uint8_t *b = token_bytes(t, ids[i], skip_special, &len);
        g_byte_array_append(bytes, b, len);
    }
    GString *out = g_string_sized_new(bytes->len + 1);
    append_lossy(out, bytes->data, bytes->len, FALSE);
    g_byte_array_unref(bytes);
    return g_string_free(out, FALSE);
}

void token_stream_init(TokenStream *s)
{
    s->pending = g_byte_array_new();
}

void token_stream_clear(TokenStream *s)
{
    if (s->pending)
        g_byte_array_unref(s->pending);
    s->pending = NULL;
}

void token_stream_push(const Tokenizer *t, TokenStream *s, int32_t id, gboolean skip_special,
                       GString *out)
{
    size_t len;
    const uint8_t *b = token_bytes(t, id, skip_special, &len);
    g_byte_array_append(s->pending, b, len);
    size_t used = append_lossy(out, s->pending->data, s->pending->len, TRUE);
    g_byte_array_remove_range(s->pending, 0, used);
}

void token_stream_finish(TokenStream *s, GString *out)
{
    append_lossy(out, s->pending->data, s->pending->len, FALSE);
    g_byte_array_set_size(s->pending, 0);
}
