/* cobra-bench - speed of the engine on a random-weight model with the real cobra+3b shapes.
 *
 *   cobra-bench [--type f32|f16|q8_0|q4_0] [-t THREADS] [--n-layer N] [--vision-depth D]
 *               [--prompt-tokens P] [--gen G] [--reps R] [-m MODEL]
 *
 * The model is written once by tools/bench_model.py (the converter's own assembly and GGUF
 * writer) into a cache directory keyed by its parameters, then loaded by the real loader and run
 * through the public API: one frame (both towers + projector), the prefill of its 729 image
 * tokens and a P-token prompt, then G greedy tokens. In the same run and with the same threads it
 * measures the machine's ceilings: OpenBLAS sgemm at every GEMM shape of the model and
 * streaming-read bandwidth. It prints a table, then one JSON line. Timings are the best of R.
 */
#include <glib/gstdio.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "cobra.h"
#include "gguf.h"

#ifndef COBRA_SOURCE_DIR
#define COBRA_SOURCE_DIR "."
#endif

#define PYTHON "/usr/bin/python3"

typedef struct {
    char *type;
    int threads, n_layer, vision_depth, prompt_tokens, gen, reps;
    char *model;
} Options;

static void die(const char *fmt, ...) G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN;
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cobra-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* A field of /proc/self/status in MiB (VmRSS, VmHWM). */
static double proc_status_mb(const char *field)
{
    char *text = NULL;
    double kb = 0;
    if (g_file_get_contents("/proc/self/status", &text, NULL, NULL)) {
        const char *p = strstr(text, field);
        if (p)
            kb = g_ascii_strtod(p + strlen(field) + 1, NULL);
    }
    g_free(text);
    return kb / 1024;
}

/* Start VmHWM afresh (Linux >= 4.0), so that the peak is the engine's, not the ceilings'. */
static void reset_peak_rss(void)
{
    FILE *fp = fopen("/proc/self/clear_refs", "w");
    if (!fp || fputs("5", fp) < 0 || fclose(fp) != 0)
        fprintf(stderr, "cobra-bench: cannot reset the peak RSS; it includes the ceilings' buffers\n");
}

/* ---- the model file ---- */

/* The scripts that write the model, whose contents key the cached file: a converter that
 * changes what it writes (padding, types) must not be timed on an old file. */
static const char *const WRITERS[] = {"bench_model.py", "cobra_convert.py", "gguf_io.py"};

static char *writers_digest(void)
{
    GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
    for (size_t i = 0; i < G_N_ELEMENTS(WRITERS); i++) {
        char *path = g_build_filename(COBRA_SOURCE_DIR, "tools", WRITERS[i], NULL), *text;
        gsize len;
        GError *err = NULL;
        if (!g_file_get_contents(path, &text, &len, &err))
            die("%s", err->message);
        g_checksum_update(sum, (const guchar *)text, len);
        g_free(text);
        g_free(path);
    }
    char *digest = g_strndup(g_checksum_get_string(sum), 12);
    g_checksum_free(sum);
    return digest;
}

static char *model_path(const Options *o)
{
    char *vd = o->vision_depth > 0 ? g_strdup_printf("%d", o->vision_depth) : g_strdup("full");
    char *digest = writers_digest();
    char *name = g_strdup_printf("cobra3b-random-%s-l%d-v%s-%s.gguf", o->type, o->n_layer, vd,
                                 digest);
    char *path = g_build_filename(g_get_tmp_dir(), "cobra-bench", name, NULL);
    g_free(vd);
    g_free(digest);
    g_free(name);
    return path;
}

static void write_model(const Options *o, const char *path)
{
    char *dir = g_path_get_dirname(path);
    g_mkdir_with_parents(dir, 0755);
    g_free(dir);
    char *script = g_build_filename(COBRA_SOURCE_DIR, "tools", "bench_model.py", NULL);
    char n_layer[16], depth[16];
    g_snprintf(n_layer, sizeof n_layer, "%d", o->n_layer);
    g_snprintf(depth, sizeof depth, "%d", o->vision_depth);
    const char *argv[] = {PYTHON, script, "--type", o->type, "--n-layer", n_layer, "-o", path,
                          o->vision_depth > 0 ? "--vision-depth" : NULL, depth, NULL};
    fprintf(stderr, "cobra-bench: writing %s ...\n", path);
    GError *err = NULL;
    int status;
    double t0 = now_s();
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, NULL, NULL, &status,
                      &err) ||
        !g_spawn_check_wait_status(status, &err))
        die("%s: %s", script, err->message);
    fprintf(stderr, "cobra-bench: written in %.0f s\n", now_s() - t0);
    g_free(script);
}

/* ---- what the model costs, from its file ---- */

typedef struct {
    int m, n, k;   /* out[m][n] = x[m][k] · w[n][k]ᵀ, as matmul() calls it */
    double count;  /* times per frame (vision) or per prefill chunk (LM) */
} Shape;

#define MAX_SHAPES 16
#define PREFILL_CHUNK 256 /* cobra.c's */

typedef struct {
    double vision_flop;       /* per frame: both towers + projector */
    double token_flop;        /* per LM token, LM head excluded (prefill computes it once) */
    double head_flop;
    double token_bytes;       /* weight bytes one decoded token reads: every layer + the head */
    double file_mb;
    const char *type;         /* general.file_type's name: what -m's file holds */
    int n_layer, n_image;
    Shape vision[MAX_SHAPES], lm[MAX_SHAPES]; /* the weight GEMMs of a frame and of a chunk */
    int n_vision, n_lm;
} Costs;

static uint64_t get_uint(const GgufFile *f, const char *fmt, const char *tower)
{
    char key[96];
    uint64_t v;
    GError *err = NULL;
    g_snprintf(key, sizeof key, fmt, tower);
    if (!gguf_get_uint(f, key, UINT32_MAX, &v, &err))
        die("%s", err->message);
    return v;
}

static const GgufTensor *tensor(const GgufFile *f, const char *name)
{
    const GgufTensor *t = gguf_find_tensor(f, name);
    if (!t)
        die("the model has no tensor %s", name);
    return t;
}

static void add_shape(Shape *list, int *n, int m, const GgufTensor *w, double count)
{
    list[(*n)++] = (Shape){m, (int)w->ne[1], (int)w->ne[0], count};
}

static double shape_flop(const Shape *s) { return s->count * 2.0 * s->m * s->n * s->k; }

/* One tower's weight GEMMs into c->vision; returns the FLOPs the GEMMs do not count:
 * the patch embedding and attention's q kᵀ and (softmax) v. */
static double add_tower(Costs *c, const GgufFile *f, const char *p)
{
    double P = get_uint(f, "clip.vision.patch_size", NULL);
    double C = get_uint(f, "clip.%s.embedding_length", p);
    int blocks = (int)get_uint(f, "clip.%s.feature_layer", p) + 1;
    gboolean cls = FALSE;
    char key[96];
    g_snprintf(key, sizeof key, "clip.%s.has_class_token", p);
    gguf_get_bool(f, key, &cls, NULL);
    int T = c->n_image + cls + (int)get_uint(f, "clip.%s.n_register_tokens", p);
    static const char *const mats[] = {"attn_qkv", "attn_out", "ffn_up", "ffn_down"};
    for (int i = 0; i < 4; i++) {
        char name[96];
        g_snprintf(name, sizeof name, "%s.blk.0.%s.weight", p, mats[i]);
        add_shape(c->vision, &c->n_vision, T, tensor(f, name), blocks);
    }
    return 2.0 * c->n_image * C * 3 * P * P + blocks * 4.0 * T * T * C;
}

static Costs model_costs(const char *path)
{
    GError *err = NULL;
    GgufFile *f = gguf_open_mapped(path, &err); /* only shapes are read */
    if (!f)
        die("%s", err->message);
    Costs c = {0};
    int grid = (int)(get_uint(f, "clip.vision.image_size", NULL) /
                     get_uint(f, "clip.vision.patch_size", NULL));
    c.n_image = grid * grid;
    c.vision_flop = add_tower(&c, f, "dino") + add_tower(&c, f, "siglip");
    for (int i = 0; i <= 4; i += 2) {
        char name[32];
        g_snprintf(name, sizeof name, "mm.%d.weight", i);
        add_shape(c.vision, &c.n_vision, c.n_image, tensor(f, name), 1);
    }
    for (int i = 0; i < c.n_vision; i++)
        c.vision_flop += shape_flop(&c.vision[i]);

    c.n_layer = (int)get_uint(f, "mamba.block_count", NULL);
    switch (get_uint(f, "general.file_type", NULL)) { /* llama.cpp's numbering */
    case 0: c.type = "f32"; break;
    case 1: c.type = "f16"; break;
    case 2: c.type = "q4_0"; break;
    case 7: c.type = "q8_0"; break;
    default: c.type = "other"; break;
    }
    static const char *const mats[] = {"ssm_in", "ssm_x", "ssm_dt", "ssm_out"};
    for (int i = 0; i < 4; i++) {
        char name[32];
        g_snprintf(name, sizeof name, "blk.0.%s.weight", mats[i]);
        add_shape(c.lm, &c.n_lm, PREFILL_CHUNK, tensor(f, name), c.n_layer);
        c.token_flop += shape_flop(&c.lm[i]) / PREFILL_CHUNK;
    }
    const char *head = gguf_find_tensor(f, "output.weight") ? "output.weight" : "token_embd.weight";
    c.head_flop = 2.0 * tensor(f, head)->ne[0] * tensor(f, head)->ne[1];
    for (int i = 0; i < gguf_n_tensors(f); i++) {
        const GgufTensor *t = gguf_tensor_at(f, i);
        if (g_str_has_prefix(t->name, "blk."))
            c.token_bytes += t->nbytes;
    }
    c.token_bytes += tensor(f, head)->nbytes + tensor(f, "output_norm.weight")->nbytes;
    gguf_close(f);
    GStatBuf st;
    if (g_stat(path, &st) == 0)
        c.file_mb = st.st_size / 1048576.0;
    return c;
}

/* Read the whole file once, so that the runs find it in the page cache as a server that keeps
 * the model loaded would (a file just written may have been partly evicted). */
static void warm_page_cache(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        die("%s: cannot open", path);
    char *buf = g_malloc(1 << 20);
    while (fread(buf, 1, 1 << 20, fp) == 1 << 20)
        ;
    g_free(buf);
    fclose(fp);
}

/* ---- the engine ---- */

typedef struct {
    double vision_s, prefill_s, decode_s, ttft_s;
    int n_prompt, n_generated;
    double rss_first_mb, rss_last_mb;
} Run;

typedef struct {
    double t0, first;
    int count;
    double rss_first, rss_last;
} TokenClock;

static gboolean on_token(const char *piece, int id, void *data)
{
    TokenClock *c = data;
    if (c->count++ == 0) {
        c->first = now_s();
        c->rss_first = proc_status_mb("VmRSS:");
    }
    c->rss_last = proc_status_mb("VmRSS:");
    return TRUE;
}

/* A question that makes the templated prompt `want` tokens long (" the" is one token). */
static char *make_question(const CobraModel *m, const char *template, int want)
{
    const char *q = strstr(template, "{question}");
    char *before = g_strndup(template, q - template);
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    cobra_model_tokenize(m, before, ids, NULL);
    cobra_model_tokenize(m, q + strlen("{question}"), ids, NULL);
    int words = MAX(1, want - (int)ids->len);
    GString *s = g_string_new("the");
    for (int i = 1; i < words; i++)
        g_string_append(s, " the");
    g_array_unref(ids);
    g_free(before);
    return g_string_free(s, FALSE);
}

static Run run_once(CobraSession *s, const CobraImage *img, const char *question, int gen)
{
    GError *err = NULL;
    TokenClock clock = {now_s(), 0, 0, 0, 0};
    if (!cobra_session_set_image(s, img, &err))
        die("set_image: %s", err->message);
    CobraParams p;
    cobra_params_init(&p);
    p.max_tokens = gen;
    char *text = cobra_session_ask(s, question, &p, on_token, &clock, &err);
    if (!text)
        die("ask: %s", err->message);
    g_free(text);
    CobraTimings t;
    cobra_session_get_timings(s, &t);
    return (Run){t.image_s, t.prefill_s, t.decode_s, clock.first - clock.t0, t.n_prompt_tokens,
                 t.n_generated, clock.rss_first, clock.rss_last};
}

/* ---- ceilings ---- */

/* Seconds the GEMMs of `shapes` take at OpenBLAS's rate; *flop gets their work. */
static double sgemm_seconds(const Shape *shapes, int n, double *flop)
{
    double t = 0;
    *flop = 0;
    for (int i = 0; i < n; i++) {
        t += shapes[i].count * time_sgemm(shapes[i].m, shapes[i].n, shapes[i].k, 4);
        *flop += shape_flop(&shapes[i]);
    }
    return t;
}

typedef struct {
    double vision_gemm_s, vision_gemm_flop, lm_gemm_s, lm_gemm_flop, membw_gbs;
} Ceilings;

static Ceilings measure_ceilings(const Costs *c)
{
    Ceilings k;
    k.vision_gemm_s = sgemm_seconds(c->vision, c->n_vision, &k.vision_gemm_flop);
    k.lm_gemm_s = sgemm_seconds(c->lm, c->n_lm, &k.lm_gemm_flop);
    k.membw_gbs = read_bandwidth();
    return k;
}

/* The machine is shared: the ceilings are measured before and after the engine's runs and the
 * higher of each kept, so the engine's share of them is never flattered. */
static Ceilings best_ceilings(Ceilings a, Ceilings b)
{
    a.vision_gemm_s = MIN(a.vision_gemm_s, b.vision_gemm_s);
    a.lm_gemm_s = MIN(a.lm_gemm_s, b.lm_gemm_s);
    a.membw_gbs = MAX(a.membw_gbs, b.membw_gbs);
    return a;
}

/* ---- main ---- */

static Options parse_options(int argc, char **argv)
{
    Options o = {g_strdup("q8_0"), 0, 64, 0, 21, 64, 1, NULL};
    GOptionEntry entries[] = {
        {"type", 0, 0, G_OPTION_ARG_STRING, &o.type, "weight type: f32, f16, q8_0 or q4_0 (q8_0)", "T"},
        {"threads", 't', 0, G_OPTION_ARG_INT, &o.threads, "threads (all cores)", "N"},
        {"n-layer", 0, 0, G_OPTION_ARG_INT, &o.n_layer, "Mamba layers (64)", "N"},
        {"vision-depth", 0, 0, G_OPTION_ARG_INT, &o.vision_depth,
         "blocks computed per tower (the real 23 and 26)", "D"},
        {"prompt-tokens", 0, 0, G_OPTION_ARG_INT, &o.prompt_tokens,
         "prompt tokens after the 729 image tokens (21)", "P"},
        {"gen", 0, 0, G_OPTION_ARG_INT, &o.gen, "generated tokens (64)", "G"},
        {"reps", 0, 0, G_OPTION_ARG_INT, &o.reps, "repetitions; the best is kept (1)", "R"},
        {"model", 'm', 0, G_OPTION_ARG_FILENAME, &o.model, "use this model file instead", "PATH"},
        {NULL}};
    GOptionContext *ctx = g_option_context_new("- time the engine on a random cobra+3b");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die("%s", err->message);
    g_option_context_free(ctx);
    if (strcmp(o.type, "f32") && strcmp(o.type, "f16") && strcmp(o.type, "q8_0") &&
        strcmp(o.type, "q4_0"))
        die("--type must be f32, f16, q8_0 or q4_0");
    if (o.n_layer < 1 || o.vision_depth < 0 || o.prompt_tokens < 1 || o.gen < 2 || o.reps < 1 ||
        o.threads < 0)
        die("out-of-range option");
    if (o.threads == 0)
        o.threads = omp_get_num_procs();
    return o;
}

int main(int argc, char **argv)
{
    Options o = parse_options(argc, argv);
    char *path = o.model ? g_strdup(o.model) : model_path(&o);
    if (!g_file_test(path, G_FILE_TEST_EXISTS))
        write_model(&o, path);
    Costs c = model_costs(path);

    warm_page_cache(path);
    /* OpenBLAS is the OpenMP build: it follows the same thread count. */
    omp_set_num_threads(o.threads);
    Ceilings before = measure_ceilings(&c);
    reset_peak_rss();

    GError *err = NULL;
    double t0 = now_s();
    CobraModel *model = cobra_model_load(path, &err);
    if (!model)
        die("%s", err->message);
    double load_s = now_s() - t0;
    CobraSession *s = cobra_session_new(model, o.threads, &err);
    if (!s)
        die("%s", err->message);

    int S = cobra_model_image_size(model);
    guint8 *rgb = g_malloc((size_t)S * S * 3);
    for (size_t i = 0; i < (size_t)S * S * 3; i++)
        rgb[i] = (guint8)(i * 7 + i / 1153);
    CobraImage img = {COBRA_FORMAT_RGB, S, S, {rgb}, {S * 3}, 0};
    /* mapped: the model holds the weights already, a second copy would double the peak RSS */
    GgufFile *f = gguf_open_mapped(path, &err);
    char *question = make_question(model, gguf_get_string(f, "cobra.prompt_template", NULL),
                                   o.prompt_tokens);
    gguf_close(f);

    Run best = {1e9, 1e9, 1e9, 1e9, 0, 0, 0, 0};
    for (int r = 0; r < o.reps; r++) {
        Run x = run_once(s, &img, question, o.gen);
        fprintf(stderr, "cobra-bench: run %d: vision %.2f s, prefill %.2f s, decode %.2f s\n", r + 1,
                x.vision_s, x.prefill_s, x.decode_s);
        best.vision_s = MIN(best.vision_s, x.vision_s);
        best.prefill_s = MIN(best.prefill_s, x.prefill_s);
        best.decode_s = MIN(best.decode_s, x.decode_s);
        best.ttft_s = MIN(best.ttft_s, x.ttft_s);
        best.n_prompt = x.n_prompt;
        best.n_generated = x.n_generated;
        best.rss_first_mb = x.rss_first_mb;
        best.rss_last_mb = x.rss_last_mb;
    }
    double peak_rss_mb = proc_status_mb("VmHWM:");
    cobra_session_free(s);
    cobra_model_free(model);

    omp_set_num_threads(o.threads);
    Ceilings k = best_ceilings(before, measure_ceilings(&c));
    double sgemm_gflops = (k.vision_gemm_flop + k.lm_gemm_flop) / (k.vision_gemm_s + k.lm_gemm_s) / 1e9;
    double membw = k.membw_gbs;

    int n_prefill = c.n_image + best.n_prompt;
    double prefill_tok_s = n_prefill / best.prefill_s;
    double prefill_gflops = (n_prefill * c.token_flop + c.head_flop) / best.prefill_s / 1e9;
    double vision_gflops = c.vision_flop / best.vision_s / 1e9;
    /* decode_s holds n_generated samples and n_generated - 1 forward steps */
    double decode_tok_s = (best.n_generated - 1) / best.decode_s;
    double decode_gbs = decode_tok_s * c.token_bytes / 1e9;
    double vision_sgemm = k.vision_gemm_flop / k.vision_gemm_s / 1e9;
    double lm_sgemm = k.lm_gemm_flop / k.lm_gemm_s / 1e9;

    const char *wait = g_getenv("OMP_WAIT_POLICY") ? g_getenv("OMP_WAIT_POLICY") : "default";
    printf("cobra-bench: %s, %d threads (OMP_WAIT_POLICY %s), %d Mamba layers, model %.0f MiB "
           "(%s), load %.2f s, best of %d\n",
           c.type, o.threads, wait, c.n_layer, c.file_mb, path, load_s, o.reps);
    printf("%-28s %12s %14s %18s\n", "stage", "measured", "work", "vs ceiling");
    printf("%-28s %10.3f s %10.1f GFLOP %9.1f GFLOP/s (%3.0f%% of sgemm %.1f)\n", "vision (towers+projector)",
           best.vision_s, c.vision_flop / 1e9, vision_gflops, 100 * vision_gflops / vision_sgemm,
           vision_sgemm);
    printf("%-28s %8.2f tok/s %10.1f GFLOP %9.1f GFLOP/s (%3.0f%% of sgemm %.1f)\n", "prefill",
           prefill_tok_s, (n_prefill * c.token_flop + c.head_flop) / 1e9, prefill_gflops,
           100 * prefill_gflops / lm_sgemm, lm_sgemm);
    printf("%-28s %10.3f s  (%d image + %d prompt tokens)\n", "", best.prefill_s, c.n_image,
           best.n_prompt);
    printf("%-28s %8.2f tok/s %10.1f MB/tok %9.1f GB/s    (%3.0f%% of read %.1f)\n", "decode",
           decode_tok_s, c.token_bytes / 1e6, decode_gbs, 100 * decode_gbs / membw, membw);
    printf("%-28s %10.3f s\n", "time to first token", best.ttft_s);
    printf("%-28s %8.0f MiB  (file %.0f MiB + %.0f); RSS %+.1f MiB over %d tokens\n", "peak RSS",
           peak_rss_mb, c.file_mb, peak_rss_mb - c.file_mb, best.rss_last_mb - best.rss_first_mb,
           best.n_generated);
    printf("{\"type\": \"%s\", \"threads\": %d, \"wait_policy\": \"%s\", \"n_layer\": %d, "
           "\"vision_depth\": %d, "
           "\"vision_s\": %.4f, \"vision_gflops\": %.2f, \"prefill_tokens\": %d, "
           "\"prefill_tok_s\": %.3f, \"prefill_gflops\": %.2f, \"decode_tok_s\": %.3f, "
           "\"decode_bytes_per_token\": %.0f, \"decode_gbs\": %.2f, \"ttft_s\": %.4f, "
           "\"sgemm_gflops\": %.2f, \"sgemm_vision_gflops\": %.2f, \"sgemm_prefill_gflops\": %.2f, "
           "\"membw_gbs\": %.2f, \"peak_rss_mb\": %.1f, \"file_mb\": %.1f, "
           "\"rss_growth_mb\": %.2f, \"generated\": %d}\n",
           c.type, o.threads, wait, c.n_layer, o.vision_depth, best.vision_s, vision_gflops, n_prefill,
           prefill_tok_s, prefill_gflops, decode_tok_s, c.token_bytes, decode_gbs, best.ttft_s,
           sgemm_gflops, vision_sgemm, lm_sgemm, membw, peak_rss_mb, c.file_mb,
           best.rss_last_mb - best.rss_first_mb, best.n_generated);
    g_free(rgb);
    g_free(question);
    g_free(path);
    g_free(o.type);
    g_free(o.model);
    return 0;
}
