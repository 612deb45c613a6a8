/* cobra-cli - ask Cobra about one image from the command line.
 *
 *   cobra-cli -m cobra.gguf -i photo.jpg -p "What is in the picture?"
 *
 * Prints only the answer on stdout; diagnostics and timings go to stderr. The image is decoded
 * with GStreamer (any format it reads) or read from a uint8 H x W x 3 .npy array. -p may be
 * given several times: the image is encoded once and each answer printed on its own line
 * (a newline inside an answer then written as \n).
 * --labels "a,b,c" scores those answers instead of generating one and prints, per question, one
 * JSON line {"label": best, "confidence": its softmax share, "scores": {"a": log-prob, ...}}.
 * --dump-dir writes every intermediate as .npy under the names of the reference dumps;
 * --tokenize / --detokenize convert between text on stdin and a JSON array of ids.
 */
#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <gst/video/video.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cobra.h"
#include "npy.h"

typedef struct {
    GBytes *pixels;
    CobraImage image;
} LoadedImage;

static void die(const char *fmt, ...) G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN;
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cobra-cli: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static gboolean load_npy_image(const char *path, LoadedImage *out, GError **error)
{
    Npy a;
    if (!npy_load(path, &a, error))
        return FALSE;
    if (strcmp(a.dtype, "u1") != 0 || a.n_dims != 3 || a.shape[2] != 3 ||
        a.shape[1] > G_MAXINT / 3 || a.shape[0] > G_MAXINT) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID,
                    "%s: expected a uint8 array of shape (height, width, 3)", path);
        npy_free(&a);
        return FALSE;
    }
    out->pixels = g_bytes_new_take(a.data, a.n_elems);
    out->image = (CobraImage){COBRA_FORMAT_RGB, (int)a.shape[1], (int)a.shape[0],
                              {g_bytes_get_data(out->pixels, NULL)}, {(int)a.shape[1] * 3}, 0};
    return TRUE;
}

/* Decode the first frame of any file GStreamer reads into packed RGB. */
static gboolean load_gst_image(const char *path, LoadedImage *out, GError **error)
{
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_IO, "%s: no such file", path);
        return FALSE;
    }
    gst_init(NULL, NULL);
    GstElement *pipe = gst_parse_launch(
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=RGB ! "
        "appsink name=sink sync=false max-buffers=1",
        error);
    if (!pipe)
        return FALSE;
    GstElement *src = gst_bin_get_by_name(GST_BIN(pipe), "src");
    GstElement *sink = gst_bin_get_by_name(GST_BIN(pipe), "sink");
    g_object_set(src, "location", path, NULL);
    gst_element_set_state(pipe, GST_STATE_PLAYING);
    GstSample *sample = gst_app_sink_try_pull_sample(GST_APP_SINK(sink), 30 * GST_SECOND);
    gboolean ok = FALSE;
    GstVideoInfo info;
    if (!sample) {
        GstMessage *msg = gst_bus_pop_filtered(GST_ELEMENT_BUS(pipe), GST_MESSAGE_ERROR);
        GError *gerr = NULL;
        if (msg)
            gst_message_parse_error(msg, &gerr, NULL);
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_IO, "%s: cannot decode an image: %s", path,
                    gerr ? gerr->message : "no frame");
        g_clear_error(&gerr);
        g_clear_pointer(&msg, gst_message_unref);
    } else if (gst_video_info_from_caps(&info, gst_sample_get_caps(sample))) {
        GstBuffer *buf = gst_sample_get_buffer(sample);
        GstVideoFrame frame;
        if (gst_video_frame_map(&frame, &info, buf, GST_MAP_READ)) {
            int stride = GST_VIDEO_FRAME_PLANE_STRIDE(&frame, 0);
            out->pixels = g_bytes_new(GST_VIDEO_FRAME_PLANE_DATA(&frame, 0),
                                      (gsize)stride * info.height);
            out->image = (CobraImage){COBRA_FORMAT_RGB, info.width, info.height,
                                      {g_bytes_get_data(out->pixels, NULL)}, {stride}, 0};
            gst_video_frame_unmap(&frame);
            ok = TRUE;
        }
    }
    if (sample && !ok)
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_IO, "%s: cannot map the decoded frame", path);
    g_clear_pointer(&sample, gst_sample_unref);
    gst_element_set_state(pipe, GST_STATE_NULL);
    gst_object_unref(src);
    gst_object_unref(sink);
    gst_object_unref(pipe);
    return ok;
}

static void dump_tensor(const char *name, const char *dtype, const int64_t *shape, int n_dims,
                        const void *data, void *user_data)
{
    char *file = g_strconcat(name, ".npy", NULL);
    char *path = g_build_filename((const char *)user_data, file, NULL);
    GError *err = NULL;
    if (!npy_save(path, dtype, shape, n_dims, data, &err))
        die("%s", err->message);
    g_free(path);
    g_free(file);
}

/* --labels: comma-separated items, trimmed; an empty or repeated item is an error. */
static GPtrArray *split_labels(const char *list)
{
    GPtrArray *labels = g_ptr_array_new_with_free_func(g_free);
    char **items = g_strsplit(list, ",", -1);
    for (int i = 0; items[i]; i++) {
        char *label = g_strstrip(items[i]);
        if (!*label)
            die("--labels: item %d of '%s' is empty", i + 1, list);
        for (guint j = 0; j < labels->len; j++)
            if (strcmp(labels->pdata[j], label) == 0)
                die("--labels: '%s' is given twice", label);
        g_ptr_array_add(labels, g_strdup(label));
    }
    g_strfreev(items);
    return labels;
}

static void append_json_string(GString *out, const char *s)
{
    g_string_append_c(out, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            g_string_append_printf(out, "\\%c", c);
        else if (c == '\n')
            g_string_append(out, "\\n");
        else if (c == '\t')
            g_string_append(out, "\\t");
        else if (c < 0x20)
            g_string_append_printf(out, "\\u%04x", c);
        else
            g_string_append_c(out, (char)c);
    }
    g_string_append_c(out, '"');
}

static void append_json_number(GString *out, double v)
{
    char buf[G_ASCII_DTOSTR_BUF_SIZE];
    g_string_append(out, isfinite(v) ? g_ascii_formatd(buf, sizeof buf, "%.9g", v) : "null");
}

/* The best label and its share of a softmax over the labels' log-probabilities. */
static void print_label_scores(CobraSession *session, const char *question, GPtrArray *labels)
{
    int n = (int)labels->len, best = 0;
    float *lp = g_new(float, n);
    GError *err = NULL;
    if (!cobra_session_score_labels(session, question, (const char *const *)labels->pdata, n, lp,
                                    &err))
        die("%s", err->message);
    for (int i = 1; i < n; i++)
        if (lp[i] > lp[best])
            best = i;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp((double)lp[i] - lp[best]);
    GString *line = g_string_new("{\"label\": ");
    append_json_string(line, labels->pdata[best]);
    g_string_append(line, ", \"confidence\": ");
    append_json_number(line, 1.0 / sum);
    g_string_append(line, ", \"scores\": {");
    for (int i = 0; i < n; i++) {
        g_string_append(line, i ? ", " : "");
        append_json_string(line, labels->pdata[i]);
        g_string_append(line, ": ");
        append_json_number(line, lp[i]);
    }
    g_string_append(line, "}}");
    puts(line->str);
    fflush(stdout);
    g_string_free(line, TRUE);
    g_free(lp);
}

static gboolean print_piece(const char *piece, int id, void *user_data)
{
    fputs(piece, stderr);
    return TRUE;
}

static void report_timings(const CobraSession *session)
{
    CobraTimings t;
    cobra_session_get_timings(session, &t);
    fprintf(stderr, "\n");
    if (t.n_prompt_truncated)
        fprintf(stderr, "warning: the question was cut by %d tokens to fit the context\n",
                t.n_prompt_truncated);
    fprintf(stderr,
            "image %.3f s | prefill %d+%d tokens %.3f s | decode %d tokens %.3f s (%.2f tok/s)\n",
            t.image_s, t.n_image_tokens, t.n_prompt_tokens, t.prefill_s, t.n_generated,
            t.decode_s, t.decode_s > 0 ? t.n_generated / t.decode_s : 0.0);
}

/* All of stdin as text; a NUL byte would silently end it, so it is an error. */
static char *read_stdin(const char *mode)
{
    GString *s = g_string_new(NULL);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0)
        g_string_append_len(s, buf, (gssize)n);
    const char *nul = memchr(s->str, 0, s->len);
    if (nul)
        die("%s: stdin has a NUL byte at offset %td; expected text", mode, nul - s->str);
    return g_string_free(s, FALSE);
}

static int tokenize(CobraModel *model)
{
    char *text = read_stdin("--tokenize");
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    GError *err = NULL;
    if (!cobra_model_tokenize(model, text, ids, &err))
        die("%s", err->message);
    putchar('[');
    for (guint i = 0; i < ids->len; i++)
        printf("%s%d", i ? ", " : "", g_array_index(ids, int32_t, i));
    puts("]");
    g_array_unref(ids);
    g_free(text);
    return 0;
}

/* Token ids as a JSON array ("[1, 2]") or bare ("1 2", "1,2"): integers in 0..INT32_MAX separated
 * by commas or white space. Anything else is named and refused (exit 2): a half-read list would
 * print a plausible but wrong text. */
static int detokenize(CobraModel *model, gboolean skip_special)
{
    char *text = read_stdin("--detokenize");
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(int32_t));
    char *body = g_strstrip(text);
    size_t len = strlen(body);
    gboolean open = len > 0 && body[0] == '[', close = len > 0 && body[len - 1] == ']';
    if (open != close) {
        fprintf(stderr, "cobra-cli: --detokenize: unbalanced bracket in '%.40s'\n", body);
        return 2;
    }
    if (open) {
        body[len - 1] = 0;
        body++;
    }
    char **tokens = g_regex_split_simple("[\\s,]+", g_strstrip(body), 0, 0);
    int status = 0;
    for (char **t = tokens; *t && status == 0; t++) {
        guint64 v;
        if (!**t)
            continue; /* an empty list */
        if (!g_ascii_string_to_unsigned(*t, 10, 0, G_MAXINT32, &v, NULL)) {
            fprintf(stderr, "cobra-cli: --detokenize: '%.40s' is not a token id (an integer in "
                    "0..%d)\n", *t, G_MAXINT32);
            status = 2;
            break;
        }
        int32_t id = (int32_t)v;
        g_array_append_val(ids, id);
    }
    g_strfreev(tokens);
    if (status == 0) {
        char *out = cobra_model_detokenize(model, (const int32_t *)ids->data, ids->len,
                                           skip_special);
        fputs(out, stdout);
        g_free(out);
    }
    g_array_unref(ids);
    g_free(text);
    return status;
}

int main(int argc, char **argv)
{
    /* Freed at return (the option parser allocates them), so leak checkers see a clean exit. */
    g_autofree char *model_path = NULL, *image_path = NULL, *dump_dir = NULL, *label_list = NULL;
    g_auto(GStrv) prompts = NULL;
    int threads = 0;
    gboolean do_tokenize = FALSE, do_detokenize = FALSE, skip_special = FALSE, use_mmap = FALSE;
    double temp = 0, top_p = 1, repeat_penalty = 1;
    gint64 seed = 0;
    CobraParams params;
    cobra_params_init(&params);
    int max_tokens = params.max_tokens, top_k = 0;
    GOptionEntry entries[] = {
        {"model", 'm', 0, G_OPTION_ARG_FILENAME, &model_path, "Model file (.gguf)", "FILE"},
        {"mmap", 0, 0, G_OPTION_ARG_NONE, &use_mmap,
         "Map the model file instead of reading it (shared pages; dies if the file is truncated)",
         NULL},
        {"image", 'i', 0, G_OPTION_ARG_FILENAME, &image_path,
         "Image: any format GStreamer decodes, or a uint8 HxWx3 .npy", "FILE"},
        {"prompt", 'p', 0, G_OPTION_ARG_STRING_ARRAY, &prompts,
         "Question about the image (repeat for several)", "TEXT"},
        {"n-predict", 'n', 0, G_OPTION_ARG_INT, &max_tokens, "Maximum new tokens (default 64)",
         "N"},
        {"threads", 't', 0, G_OPTION_ARG_INT, &threads, "Threads (default: all cores)", "N"},
        {"temp", 0, 0, G_OPTION_ARG_DOUBLE, &temp, "Temperature (0 = greedy, the default)", "T"},
        {"top-k", 0, 0, G_OPTION_ARG_INT, &top_k, "Top-k (0 = off)", "K"},
        {"top-p", 0, 0, G_OPTION_ARG_DOUBLE, &top_p, "Top-p (1 = off)", "P"},
        {"repeat-penalty", 0, 0, G_OPTION_ARG_DOUBLE, &repeat_penalty,
         "Repetition penalty (1 = off)", "R"},
        {"seed", 0, 0, G_OPTION_ARG_INT64, &seed, "Sampling seed", "S"},
        /* FILENAME: the bytes as given, whatever the locale (the engine checks the UTF-8). */
        {"labels", 0, 0, G_OPTION_ARG_FILENAME, &label_list,
         "Score these comma-separated answers instead of generating; print JSON", "A,B,..."},
        {"dump-dir", 0, 0, G_OPTION_ARG_FILENAME, &dump_dir,
         "Write every intermediate tensor as .npy into DIR", "DIR"},
        {"tokenize", 0, 0, G_OPTION_ARG_NONE, &do_tokenize,
         "Print the ids of the text on stdin as a JSON array", NULL},
        {"detokenize", 0, 0, G_OPTION_ARG_NONE, &do_detokenize,
         "Print the text of the JSON array of ids on stdin", NULL},
        {"skip-special", 0, 0, G_OPTION_ARG_NONE, &skip_special,
         "With --detokenize: leave out special tokens", NULL},
        {NULL}};
    /* GOption converts arguments from the locale's charset; in the C locale a program starts in,
     * that is ASCII and every non-ASCII question was refused. Numbers stay in C's format (the
     * label scores are printed for other programs to read). */
    setlocale(LC_ALL, "");
    setlocale(LC_NUMERIC, "C");
    GOptionContext *ctx = g_option_context_new("- ask the Cobra vision-language model about an image");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *err = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &err))
        die("%s", err->message);
    g_option_context_free(ctx);
    if (argc > 1)
        die("unexpected argument '%s'", argv[1]);
    if (!model_path)
        die("no model: pass -m MODEL.gguf");

    gint64 t_load = g_get_monotonic_time();
    CobraModel *model = cobra_model_load_with_flags(
        model_path, use_mmap ? COBRA_LOAD_MMAP : COBRA_LOAD_DEFAULT, &err);
    if (!model)
        die("%s", err->message);
    if (!do_tokenize && !do_detokenize)
        fprintf(stderr, "model loaded in %.3f s\n", (g_get_monotonic_time() - t_load) / 1e6);
    if (do_tokenize || do_detokenize) {
        int status = do_tokenize ? tokenize(model) : detokenize(model, skip_special);
        cobra_model_free(model);
        return status;
    }
    if (!image_path || !prompts)
        die("pass an image (-i) and a question (-p)");
    g_autoptr(GPtrArray) labels = label_list ? split_labels(label_list) : NULL;

    params.max_tokens = max_tokens;
    params.temperature = (float)temp;
    params.top_k = top_k;
    params.top_p = (float)top_p;
    params.repeat_penalty = (float)repeat_penalty;
    params.seed = (uint64_t)seed;

    LoadedImage img = {0};
    gboolean loaded = g_str_has_suffix(image_path, ".npy") ? load_npy_image(image_path, &img, &err)
                                                           : load_gst_image(image_path, &img, &err);
    if (!loaded)
        die("%s", err->message);
    CobraSession *session = cobra_session_new(model, threads, &err);
    if (!session)
        die("%s", err->message);
    if (dump_dir) {
        if (g_mkdir_with_parents(dump_dir, 0755) != 0)
            die("%s: cannot create the directory", dump_dir);
        cobra_session_set_tensor_callback(session, dump_tensor, dump_dir);
    }
    if (!cobra_session_set_image(session, &img.image, &err))
        die("%s", err->message);
    gboolean several = prompts[0] && prompts[1];
    for (char **q = prompts; *q && labels; q++)
        print_label_scores(session, *q, labels);
    for (char **q = prompts; *q && !labels; q++) {
        char *answer = cobra_session_ask(session, *q, &params, print_piece, NULL, &err);
        if (!answer)
            die("%s", err->message);
        report_timings(session);
        if (several) {
            char **lines = g_strsplit(answer, "\n", -1);
            g_free(answer);
            answer = g_strjoinv("\\n", lines);
            g_strfreev(lines);
        }
        puts(answer);
        fflush(stdout);
        g_free(answer);
    }
    cobra_session_free(session);
    cobra_model_free(model);
    g_bytes_unref(img.pixels);
    return 0;
}
