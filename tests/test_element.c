/* test_element.c - the cobravlm element: its answers against the engine's on the same frame and
 * against the golden run, its properties, sampling, the three ways results leave, flushing,
 * EOS, state changes while generating, shared models, bad models, and the pipelines/ scripts. */
#include <fcntl.h>
#include <glib/gstdio.h>
#include <gst/app/gstappsink.h>
#include <gst/check/gstharness.h>
#include <gst/gst.h>
#include <gst/video/video.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cobra.h"
#include "support.h"

#define META_NAME "CobraCaptionMeta"
/* One thread each keeps the tests quick on a loaded 2-core machine. */
#define N_THREADS 1
/* Enough tokens for answers about different frames of the tiny model to differ. */
#define MAX_TOKENS 40
/* A generation long enough that stopping it early is measurable. */
#define LONG_TOKENS 1500

static char *model_file; /* tiny-f32.gguf; set once in main() */

/* ---- helpers ---- */

static GstElement *make_vlm(const char *first_property, ...)
{
    GstElement *vlm = gst_element_factory_make("cobravlm", NULL);
    va_list args;

    g_assert_nonnull(vlm);
    gst_object_ref_sink(vlm);
    g_object_set(vlm, "model-file", model_file, "n-threads", N_THREADS, "max-tokens", MAX_TOKENS,
                 NULL);
    if (first_property) {
        va_start(args, first_property);
        g_object_set_valist(G_OBJECT(vlm), first_property, args);
        va_end(args);
    }
    return vlm;
}

/* A frame whose pixels depend on `seed`, with GstVideoInfo's default strides. */
static GstBuffer *make_frame(const GstVideoInfo *info, guint seed, GstClockTime pts)
{
    GstBuffer *buf = gst_buffer_new_allocate(NULL, GST_VIDEO_INFO_SIZE(info), NULL);
    GRand *rand = g_rand_new_with_seed(seed);
    GstMapInfo map;

    gst_buffer_map(buf, &map, GST_MAP_WRITE);
    for (gsize i = 0; i < map.size; i++)
        map.data[i] = (guint8)((i / 97) * (seed + 3) + g_rand_int_range(rand, 0, 48));
    gst_buffer_unmap(buf, &map);
    g_rand_free(rand);
    GST_BUFFER_PTS(buf) = pts;
    GST_BUFFER_DURATION(buf) = 500 * GST_MSECOND;
    return buf;
}

/* I420 or NV12 frames on which the tiny model's answer depends on the YUV matrix:
 * CARD_CHECKER on BT.601 vs BT.709, CARD_RAMP on limited vs full range. */
typedef enum { CARD_NONE, CARD_CHECKER, CARD_RAMP } Card;

static GstBuffer *make_card(const GstVideoInfo *info, Card card, GstClockTime pts)
{
    GstBuffer *buf = gst_buffer_new_allocate(NULL, GST_VIDEO_INFO_SIZE(info), NULL);
    guint8 u = card == CARD_CHECKER ? 200 : 128, v = card == CARD_CHECKER ? 60 : 128;
    GstVideoFrame f;

    g_assert_true(gst_video_frame_map(&f, info, buf, GST_MAP_WRITE));
    for (int y = 0; y < GST_VIDEO_FRAME_HEIGHT(&f); y++) {
        guint8 *row = (guint8 *)GST_VIDEO_FRAME_PLANE_DATA(&f, 0) + y * GST_VIDEO_FRAME_PLANE_STRIDE(&f, 0);
        for (int x = 0; x < GST_VIDEO_FRAME_WIDTH(&f); x++)
            row[x] = card == CARD_CHECKER ? ((x / 8 + y / 8) % 2 ? 250 : 5) : MIN(y * 5, 255);
    }
    for (int y = 0; y < GST_VIDEO_FRAME_COMP_HEIGHT(&f, 1); y++) {
        for (int x = 0; x < GST_VIDEO_FRAME_COMP_WIDTH(&f, 1); x++) {
            *((guint8 *)GST_VIDEO_FRAME_COMP_DATA(&f, 1) + y * GST_VIDEO_FRAME_COMP_STRIDE(&f, 1) +
              x * GST_VIDEO_FRAME_COMP_PSTRIDE(&f, 1)) = u;
            *((guint8 *)GST_VIDEO_FRAME_COMP_DATA(&f, 2) + y * GST_VIDEO_FRAME_COMP_STRIDE(&f, 2) +
              x * GST_VIDEO_FRAME_COMP_PSTRIDE(&f, 2)) = v;
        }
    }
    gst_video_frame_unmap(&f);
    GST_BUFFER_PTS(buf) = pts;
    GST_BUFFER_DURATION(buf) = GST_SECOND;
    return buf;
}

/* An H x W x 3 uint8 array as an RGB buffer of `info` (rows copied to its strides). */
static GstBuffer *rgb_frame(const GstVideoInfo *info, const guint8 *rgb)
{
    GstBuffer *buf = gst_buffer_new_allocate(NULL, GST_VIDEO_INFO_SIZE(info), NULL);
    int w = GST_VIDEO_INFO_WIDTH(info), h = GST_VIDEO_INFO_HEIGHT(info);
    GstVideoFrame f;

    g_assert_true(gst_video_frame_map(&f, info, buf, GST_MAP_WRITE));
    for (int y = 0; y < h; y++)
        memcpy((guint8 *)GST_VIDEO_FRAME_PLANE_DATA(&f, 0) + y * GST_VIDEO_FRAME_PLANE_STRIDE(&f, 0),
               rgb + (gsize)y * w * 3, (gsize)w * 3);
    gst_video_frame_unmap(&f);
    GST_BUFFER_PTS(buf) = 0;
    GST_BUFFER_DURATION(buf) = GST_SECOND;
    return buf;
}

static char *checksum(GstBuffer *buf)
{
    GstMapInfo map;
    char *sum;

    gst_buffer_map(buf, &map, GST_MAP_READ);
    sum = g_compute_checksum_for_data(G_CHECKSUM_SHA1, map.data, map.size);
    gst_buffer_unmap(buf, &map);
    return sum;
}

/* The engine's own answer for the frame, asked through the public API; params NULL means
 * greedy decoding of MAX_TOKENS, the element's settings in these tests. */
static char *engine_answer(CobraModel *model, const GstVideoInfo *info, GstBuffer *buf,
                           const char *question, const CobraParams *params)
{
    const GstVideoColorimetry *c = &GST_VIDEO_INFO_COLORIMETRY(info);
    gboolean full = c->range == GST_VIDEO_COLOR_RANGE_0_255;
    CobraImage img = {0};
    CobraParams greedy;
    GError *err = NULL;
    CobraSession *s;
    GstVideoFrame f;
    char *answer;

    switch (GST_VIDEO_INFO_FORMAT(info)) {
    case GST_VIDEO_FORMAT_RGB: img.format = COBRA_FORMAT_RGB; break;
    case GST_VIDEO_FORMAT_BGRx: img.format = COBRA_FORMAT_BGRx; break;
    case GST_VIDEO_FORMAT_I420: img.format = COBRA_FORMAT_I420; break;
    case GST_VIDEO_FORMAT_NV12: img.format = COBRA_FORMAT_NV12; break;
    default: g_assert_not_reached();
    }
    if (c->matrix == GST_VIDEO_COLOR_MATRIX_BT709)
        img.yuv_matrix = full ? COBRA_YUV_BT709_FULL : COBRA_YUV_BT709_LIMITED;
    else
        img.yuv_matrix = full ? COBRA_YUV_BT601_FULL : COBRA_YUV_BT601_LIMITED;
    img.width = GST_VIDEO_INFO_WIDTH(info);
    img.height = GST_VIDEO_INFO_HEIGHT(info);
    g_assert_true(gst_video_frame_map(&f, info, buf, GST_MAP_READ));
    for (guint i = 0; i < GST_VIDEO_FRAME_N_PLANES(&f); i++) {
        img.planes[i] = GST_VIDEO_FRAME_PLANE_DATA(&f, i);
        img.strides[i] = GST_VIDEO_FRAME_PLANE_STRIDE(&f, i);
    }
    s = cobra_session_new(model, N_THREADS, &err);
    g_assert_no_error(err);
    cobra_session_set_image(s, &img, &err);
    g_assert_no_error(err);
    if (!params) {
        cobra_params_init(&greedy);
        greedy.max_tokens = MAX_TOKENS;
        params = &greedy;
    }
    answer = cobra_session_ask(s, question, params, NULL, NULL, &err);
    g_assert_no_error(err);
    cobra_session_free(s);
    gst_video_frame_unmap(&f);
    return answer;
}

/* The CobraCaptionMeta structure of a buffer, or NULL. */
static const GstStructure *caption(GstBuffer *buf)
{
    GstCustomMeta *meta = gst_buffer_get_custom_meta(buf, META_NAME);
    return meta ? gst_custom_meta_get_structure(meta) : NULL;
}

/* The CobraCaptionMeta of `buf` from element `name` (any if NULL) for ask `request_id` (0: the
 * prompt's), or NULL. */
static const GstStructure *caption_for(GstBuffer *buf, const char *name, guint request_id)
{
    gpointer state = NULL;
    GstMeta *meta;

    while ((meta = gst_buffer_iterate_meta(buf, &state))) {
        GstCustomMeta *cm = (GstCustomMeta *)meta;
        const GstStructure *s;
        guint id = 0;
        if (!gst_meta_info_is_custom(meta->info) || !gst_custom_meta_has_name(cm, META_NAME))
            continue;
        s = gst_custom_meta_get_structure(cm);
        gst_structure_get_uint(s, "request-id", &id);
        if (id == request_id && (!name || !g_strcmp0(gst_structure_get_string(s, "element"), name)))
            return s;
    }
    return NULL;
}

static gboolean is_fresh(GstBuffer *buf)
{
    gboolean fresh = FALSE;
    const GstStructure *s = caption(buf);
    return s && gst_structure_get_boolean(s, "fresh", &fresh) && fresh;
}

static guint64 get_u64(const GstStructure *s, const char *field)
{
    guint64 v = G_MAXUINT64;
    g_assert_true(gst_structure_get_uint64(s, field, &v));
    return v;
}

static guint64 get_counter(GstElement *vlm, const char *name)
{
    guint64 v;
    g_object_get(vlm, name, &v, NULL);
    return v;
}

/* A cobravlm between harnesses: video in and out, optionally text_src, and a bus. */
typedef struct {
    GstElement *vlm;
    GstHarness *h, *text;
    GstBus *bus;
} Rig;

static void rig_init(Rig *r, GstElement *vlm, const GstVideoInfo *info, gboolean with_text)
{
    r->vlm = vlm;
    r->bus = gst_bus_new();
    gst_element_set_bus(vlm, r->bus);
    r->h = gst_harness_new_with_element(vlm, "sink", "src");
    r->text = with_text ? gst_harness_new_with_element(vlm, NULL, "text_src") : NULL;
    gst_harness_set_src_caps(r->h, gst_video_info_to_caps(info));
}

static void rig_clear(Rig *r)
{
    if (r->text)
        gst_harness_teardown(r->text);
    gst_harness_teardown(r->h);
    gst_element_set_bus(r->vlm, NULL);
    gst_object_unref(r->bus);
    gst_object_unref(r->vlm);
}

/* Pushes a frame and pulls it back, checking it came out unchanged; returns it. */
static GstBuffer *push_pull(Rig *r, GstBuffer *in)
{
    char *before = checksum(in), *after;
    GstClockTime pts = GST_BUFFER_PTS(in);
    GstBuffer *out;

    g_assert_cmpint(gst_harness_push(r->h, in), ==, GST_FLOW_OK);
    out = gst_harness_pull(r->h);
    g_assert_nonnull(out);
    after = checksum(out);
    g_assert_cmpstr(before, ==, after);
    g_assert_cmpuint(GST_BUFFER_PTS(out), ==, pts);
    g_free(before);
    g_free(after);
    return out;
}

/* The next "cobravlm" result message's structure (copied), waiting up to 30 s; partial
 * messages are skipped. */
static GstStructure *next_result(GstBus *bus, GstClockTime timeout)
{
    GstMessage *msg;

    while ((msg = gst_bus_timed_pop_filtered(bus, timeout, GST_MESSAGE_ELEMENT))) {
        const GstStructure *s = gst_message_get_structure(msg);
        GstStructure *copy = gst_structure_has_name(s, "cobravlm") ? gst_structure_copy(s) : NULL;
        gst_message_unref(msg);
        if (copy)
            return copy;
    }
    return NULL;
}

/* Everything but `fresh` of a caption equals the message. */
static void assert_same_fields(const GstStructure *meta, const GstStructure *msg)
{
    GstStructure *m = gst_structure_copy(meta);
    gst_structure_set_name(m, gst_structure_get_name(msg));
    gst_structure_remove_field(m, "fresh");
    if (!gst_structure_is_equal(m, msg)) {
        char *a = gst_structure_to_string(m), *b = gst_structure_to_string(msg);
        g_test_fail_printf("meta %s differs from message %s", a, b);
        g_free(a);
        g_free(b);
    }
    gst_structure_free(m);
}

/* The text of a buffer, as a string. */
static char *buffer_text(GstBuffer *buf)
{
    GstMapInfo map;
    char *text;
    gst_buffer_map(buf, &map, GST_MAP_READ);
    text = map.size ? g_strndup((const char *)map.data, map.size) : g_strdup("");
    gst_buffer_unmap(buf, &map);
    return text;
}

/* The next warning or error on `bus` is a warning whose message contains `text`. */
static void expect_warning(GstBus *bus, const char *text)
{
    GstMessage *msg = gst_bus_pop_filtered(bus, GST_MESSAGE_WARNING | GST_MESSAGE_ERROR);
    GError *err = NULL;

    g_assert_nonnull(msg);
    g_assert_cmpint(GST_MESSAGE_TYPE(msg), ==, GST_MESSAGE_WARNING);
    gst_message_parse_warning(msg, &err, NULL);
    if (!strstr(err->message, text))
        g_test_fail_printf("warning \"%s\" does not say \"%s\"", err->message, text);
    g_error_free(err);
    gst_message_unref(msg);
}

/* ---- tests ---- */

/* The golden image, pushed as an RGB frame of its size, gives the reference's text. */
static void test_golden(void)
{
    char *manifest = test_read_text("tiny/golden/manifest.json");
    char *question = test_json_string(manifest, "question");
    char *golden = test_json_string(manifest, "generated_text");
    CobraModel *model = test_load_model("f32");
    GstVideoInfo info;
    Npy img, ids;
    Rig r;

    test_load_npy("tiny/golden/image_rgb.npy", &img);
    test_load_npy("tiny/golden/generated_ids.npy", &ids);
    g_assert_cmpint(img.n_dims, ==, 3);
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, (guint)img.shape[1], (guint)img.shape[0]);
    rig_init(&r, make_vlm("async", FALSE, "prompt", question, "max-tokens", (guint)ids.n_elems, NULL),
             &info, FALSE);

    GstBuffer *in = rgb_frame(&info, img.data);
    CobraParams params;
    cobra_params_init(&params);
    params.max_tokens = (int)ids.n_elems;
    char *expect = engine_answer(model, &info, in, question, &params);
    GstBuffer *out = push_pull(&r, in);
    const GstStructure *s = caption(out);
    g_assert_nonnull(s);
    g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, g_strstrip(golden));
    g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, expect);
    g_assert_cmpstr(gst_structure_get_string(s, "prompt"), ==, question);
    g_assert_true(is_fresh(out));

    gst_buffer_unref(out);
    g_free(expect);
    rig_clear(&r);
    cobra_model_free(model);
    npy_free(&img);
    npy_free(&ids);
    g_free(manifest);
    g_free(question);
    g_free(golden);
}

/* Captions equal the engine's answers for the same frames, through caps changes in mid-stream
 * (format, size, colorimetry); different frames, or one frame read with another YUV matrix, give
 * different answers, so the check has teeth. */
static void test_engine_frames_and_caps(void)
{
    static const struct {
        GstVideoFormat format;
        guint width, height;
        Card card;               /* CARD_NONE: random pixels */
        const char *colorimetry; /* NULL: GStreamer's default for the size */
    } steps[] = {
        {GST_VIDEO_FORMAT_RGB, 64, 48, CARD_NONE, NULL},
        {GST_VIDEO_FORMAT_I420, 80, 60, CARD_NONE, NULL},
        {GST_VIDEO_FORMAT_BGRx, 33, 17, CARD_NONE, NULL},
        {GST_VIDEO_FORMAT_NV12, 50, 38, CARD_NONE, NULL},
        {GST_VIDEO_FORMAT_I420, 64, 48, CARD_CHECKER, "bt709"},
        {GST_VIDEO_FORMAT_NV12, 64, 48, CARD_RAMP, "1:4:0:0"}, /* BT.601 full range (JPEG) */
    };
    CobraModel *model = test_load_model("f32");
    GstElement *vlm = make_vlm("async", FALSE, "interval", (guint64)0, NULL);
    char *answers[G_N_ELEMENTS(steps)];
    GstVideoInfo info;
    Rig r;

    gst_video_info_set_format(&info, steps[0].format, steps[0].width, steps[0].height);
    rig_init(&r, vlm, &info, FALSE);
    for (guint i = 0; i < G_N_ELEMENTS(steps); i++) {
        gst_video_info_set_format(&info, steps[i].format, steps[i].width, steps[i].height);
        if (steps[i].colorimetry)
            g_assert_true(gst_video_colorimetry_from_string(&info.colorimetry, steps[i].colorimetry));
        if (i)
            gst_harness_set_src_caps(r.h, gst_video_info_to_caps(&info));
        GstBuffer *in = steps[i].card ? make_card(&info, steps[i].card, i * GST_SECOND)
                                      : make_frame(&info, i + 1, i * GST_SECOND);
        answers[i] = engine_answer(model, &info, in, "Describe the image.", NULL);
        if (steps[i].card) { /* the same frame read as BT.601 limited range */
            GstVideoInfo other = info;
            g_assert_true(gst_video_colorimetry_from_string(&other.colorimetry, "bt601"));
            char *wrong = engine_answer(model, &other, in, "Describe the image.", NULL);
            g_assert_cmpstr(wrong, !=, answers[i]);
            g_free(wrong);
        }
        GstBuffer *out = push_pull(&r, in);
        const GstStructure *s = caption(out);
        g_assert_nonnull(s);
        g_test_message("%s %ux%u %s: %s", gst_video_format_to_string(steps[i].format),
                       steps[i].width, steps[i].height,
                       steps[i].colorimetry ? steps[i].colorimetry : "",
                       gst_structure_get_string(s, "text"));
        g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, answers[i]);
        g_assert_cmpuint(get_u64(s, "seq"), ==, i + 1);
        gst_buffer_unref(out);
    }
    g_assert_cmpstr(answers[0], !=, answers[1]);
    g_assert_cmpuint(get_counter(vlm, "frames-analyzed"), ==, G_N_ELEMENTS(steps));
    for (guint i = 0; i < G_N_ELEMENTS(steps); i++)
        g_free(answers[i]);
    rig_clear(&r);
    cobra_model_free(model);
}

static void test_properties(void)
{
    GstElement *vlm = gst_element_factory_make("cobravlm", NULL);
    GObjectClass *klass = G_OBJECT_GET_CLASS(vlm);
    static const struct {
        const char *name;
        GParamFlags mutable;
    } mutability[] = {
        {"model-file", GST_PARAM_MUTABLE_READY}, {"prompt", GST_PARAM_MUTABLE_PLAYING},
        {"interval", GST_PARAM_MUTABLE_PLAYING}, {"async", GST_PARAM_MUTABLE_READY},
        {"max-tokens", GST_PARAM_MUTABLE_PLAYING}, {"temperature", GST_PARAM_MUTABLE_PLAYING},
        {"top-k", GST_PARAM_MUTABLE_PLAYING}, {"top-p", GST_PARAM_MUTABLE_PLAYING},
        {"seed", GST_PARAM_MUTABLE_PLAYING}, {"n-threads", GST_PARAM_MUTABLE_READY},
        {"post-messages", GST_PARAM_MUTABLE_PLAYING},
        {"partial-messages", GST_PARAM_MUTABLE_PLAYING},
        {"text-format", GST_PARAM_MUTABLE_READY},
    };
    GstBus *bus = gst_bus_new();
    char *model, *prompt;
    guint64 interval, seed, analyzed, skipped;
    gboolean async, post, partial;
    guint max_tokens, top_k, n_threads, id;
    gfloat temperature, top_p;

    gst_object_ref_sink(vlm);
    gst_element_set_bus(vlm, bus);
    g_object_get(vlm, "model-file", &model, "prompt", &prompt, "interval", &interval, "async",
                 &async, "max-tokens", &max_tokens, "temperature", &temperature, "top-k", &top_k,
                 "top-p", &top_p, "seed", &seed, "n-threads", &n_threads, "post-messages", &post,
                 "partial-messages", &partial, "frames-analyzed", &analyzed, "frames-skipped",
                 &skipped, NULL);
    g_assert_null(model);
    g_assert_cmpstr(prompt, ==, "Describe the image.");
    g_free(prompt);
    g_assert_cmpuint(interval, ==, GST_SECOND);
    g_assert_true(async);
    g_assert_cmpuint(max_tokens, ==, 32);
    g_assert_cmpfloat(temperature, ==, 0.0f);
    g_assert_cmpuint(top_k, ==, 0);
    g_assert_cmpfloat(top_p, ==, 1.0f);
    g_assert_cmpuint(seed, ==, 0);
    g_assert_cmpuint(n_threads, ==, 0);
    g_assert_true(post);
    g_assert_false(partial);
    g_assert_cmpuint(analyzed, ==, 0);
    g_assert_cmpuint(skipped, ==, 0);

    for (guint i = 0; i < G_N_ELEMENTS(mutability); i++) {
        GParamSpec *p = g_object_class_find_property(klass, mutability[i].name);
        g_assert_nonnull(p);
        g_assert_true(p->flags & mutability[i].mutable);
        g_assert_true(p->flags & G_PARAM_WRITABLE);
    }
    g_assert_false(g_object_class_find_property(klass, "frames-analyzed")->flags & G_PARAM_WRITABLE);
    g_assert_false(g_object_class_find_property(klass, "frames-skipped")->flags & G_PARAM_WRITABLE);
    g_assert_false(g_object_class_find_property(klass, "asks-refused")->flags & G_PARAM_WRITABLE);
    g_assert_false(g_object_class_find_property(klass, "text-dropped")->flags & G_PARAM_WRITABLE);
    gchar *format_nick;
    gst_util_set_object_arg(G_OBJECT(vlm), "text-format", "json");
    GValue fv = G_VALUE_INIT;
    g_value_init(&fv, g_object_class_find_property(klass, "text-format")->value_type);
    g_object_get_property(G_OBJECT(vlm), "text-format", &fv);
    format_nick = gst_value_serialize(&fv);
    g_assert_cmpstr(format_nick, ==, "json");
    g_free(format_nick);
    g_value_unset(&fv);

    g_object_set(vlm, "model-file", "/x/m.gguf", "prompt", "Qué hay?", "interval", (guint64)7,
                 "async", FALSE, "max-tokens", 5, "temperature", 0.5f, "top-k", 40, "top-p", 0.9f,
                 "seed", (guint64)G_MAXUINT64, "n-threads", 3, "post-messages", FALSE,
                 "partial-messages", TRUE, NULL);
    g_object_get(vlm, "model-file", &model, "prompt", &prompt, "interval", &interval, "async",
                 &async, "max-tokens", &max_tokens, "temperature", &temperature, "top-k", &top_k,
                 "top-p", &top_p, "seed", &seed, "n-threads", &n_threads, "post-messages", &post,
                 "partial-messages", &partial, NULL);
    g_assert_cmpstr(model, ==, "/x/m.gguf");
    g_assert_cmpstr(prompt, ==, "Qué hay?");
    g_assert_cmpuint(interval, ==, 7);
    g_assert_false(async);
    g_assert_cmpuint(max_tokens, ==, 5);
    g_assert_cmpfloat(temperature, ==, 0.5f);
    g_assert_cmpuint(top_k, ==, 40);
    g_assert_cmpfloat(top_p, ==, 0.9f);
    g_assert_cmpuint(seed, ==, G_MAXUINT64);
    g_assert_cmpuint(n_threads, ==, 3);
    g_assert_false(post);
    g_assert_true(partial);
    g_free(model);
    g_free(prompt);

    /* absurd values are refused with a warning and change nothing */
    static const struct {
        const char *name;
        double value;
    } bad[] = {
        {"max-tokens", 0}, {"max-tokens", 1e6}, {"temperature", -1}, {"temperature", 1e9},
        {"top-p", 1.5}, {"top-p", 0}, {"n-threads", 1e5}, {"top-k", 1e7},
    };
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        GParamSpec *p = g_object_class_find_property(klass, bad[i].name);
        GValue before = G_VALUE_INIT, after = G_VALUE_INIT, v = G_VALUE_INIT;
        g_value_init(&before, p->value_type);
        g_value_init(&after, p->value_type);
        g_object_get_property(G_OBJECT(vlm), bad[i].name, &before);
        g_value_init(&v, G_TYPE_DOUBLE);
        g_value_set_double(&v, bad[i].value);
        g_value_transform(&v, &after);
        g_test_expect_message("GLib-GObject", G_LOG_LEVEL_WARNING, "*out of range*");
        g_object_set_property(G_OBJECT(vlm), bad[i].name, &after);
        g_test_assert_expected_messages();
        g_object_get_property(G_OBJECT(vlm), bad[i].name, &after);
        g_assert_cmpint(g_param_values_cmp(p, &before, &after), ==, 0);
    }
    static const char *bad_prompts[] = {"", "   \n", "\xff\xfe bad UTF-8", NULL};
    for (guint i = 0; i < G_N_ELEMENTS(bad_prompts); i++) {
        g_object_set(vlm, "prompt", bad_prompts[i], NULL);
        expect_warning(bus, "prompt must be");
        g_object_get(vlm, "prompt", &prompt, NULL);
        g_assert_cmpstr(prompt, ==, "Qué hay?");
        g_free(prompt);
    }
    g_signal_emit_by_name(vlm, "ask", "", &id);
    expect_warning(bus, "question must be");
    g_assert_cmpuint(id, ==, 0);
    g_signal_emit_by_name(vlm, "ask", "First?", &id);
    g_assert_cmpuint(id, ==, 1);
    g_signal_emit_by_name(vlm, "ask", "Second?", &id);
    g_assert_cmpuint(id, ==, 2);
    /* waiting questions are bounded: the first refused one is counted and warned about */
    guint accepted = 2;
    do {
        g_signal_emit_by_name(vlm, "ask", "More?", &id);
        accepted += id > 0;
    } while (id > 0 && accepted < 10000);
    g_test_message("%u questions waiting before one was refused", accepted);
    g_assert_cmpuint(accepted, <, 10000);
    expect_warning(bus, "already waiting");
    g_assert_cmpuint(get_counter(vlm, "asks-refused"), ==, 2); /* and the empty one */
    gst_element_set_bus(vlm, NULL);
    gst_object_unref(bus);
    gst_object_unref(vlm);
}

/* The sampling properties reach the engine: a seeded sampled answer equals the engine's with
 * the same settings, and differs from the greedy one. */
static void test_sampling(void)
{
    CobraModel *model = test_load_model("f32");
    GstElement *vlm = make_vlm("async", FALSE, "temperature", 1.5f, "top-k", 200, "top-p", 0.95f,
                               "seed", (guint64)7, NULL);
    CobraParams params;
    GstVideoInfo info;
    Rig r;

    cobra_params_init(&params);
    params.max_tokens = MAX_TOKENS;
    params.temperature = 1.5f;
    params.top_k = 200;
    params.top_p = 0.95f;
    params.seed = 7;
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 48, 36);
    rig_init(&r, vlm, &info, FALSE);
    GstBuffer *in = make_frame(&info, 5, 0);
    char *sampled = engine_answer(model, &info, in, "Describe the image.", &params);
    char *greedy = engine_answer(model, &info, in, "Describe the image.", NULL);
    GstBuffer *out = push_pull(&r, in);
    g_assert_cmpstr(gst_structure_get_string(caption(out), "text"), ==, sampled);
    g_assert_cmpstr(sampled, !=, greedy);
    gst_buffer_unref(out);
    g_free(sampled);
    g_free(greedy);
    rig_clear(&r);
    cobra_model_free(model);
}

/* Frames 0.5 s apart with interval 1 s: every other one is analysed, by running time (the
 * segment starts at 10 s, so running time = PTS - 10 s). */
static void test_interval(void)
{
    GstElement *vlm = make_vlm("async", FALSE, "max-tokens", 4, NULL);
    GstVideoInfo info;
    GstSegment seg;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 32, 24);
    rig_init(&r, vlm, &info, FALSE);
    gst_segment_init(&seg, GST_FORMAT_TIME);
    seg.start = seg.time = 10 * GST_SECOND;
    gst_harness_push_event(r.h, gst_event_new_segment(&seg));
    for (guint i = 0; i < 8; i++) {
        GstClockTime pts = 10 * GST_SECOND + i * 500 * GST_MSECOND;
        GstBuffer *out = push_pull(&r, make_frame(&info, i, pts));
        const GstStructure *s = caption(out);
        g_assert_nonnull(s);
        g_assert_cmpint(is_fresh(out), ==, i % 2 == 0);
        g_assert_cmpuint(get_u64(s, "source-pts"), ==, 10 * GST_SECOND + (i / 2) * GST_SECOND);
        g_assert_cmpuint(get_u64(s, "running-time"), ==, (i / 2) * GST_SECOND);
        g_assert_cmpuint(get_u64(s, "seq"), ==, i / 2 + 1);
        gst_buffer_unref(out);
    }
    g_assert_cmpuint(get_counter(vlm, "frames-analyzed"), ==, 4);
    g_assert_cmpuint(get_counter(vlm, "frames-skipped"), ==, 0);

    /* a change of interval applies at once */
    g_object_set(vlm, "interval", (guint64)0, NULL);
    for (guint i = 8; i < 10; i++) {
        GstBuffer *out = push_pull(&r, make_frame(&info, i, 10 * GST_SECOND + i * 500 * GST_MSECOND));
        g_assert_true(is_fresh(out));
        gst_buffer_unref(out);
    }
    rig_clear(&r);
}

/* async: frames pass at once while the worker is busy, unchanged and counted; the in-flight
 * answer is posted, and sent on text_src, before EOS passes. */
static void test_async_skip_and_eos(void)
{
    GstElement *vlm = make_vlm("interval", (guint64)0, "max-tokens", 400, NULL);
    const guint n = 40;
    GstVideoInfo info;
    GstStructure *first;
    guint n_results = 0, n_text = 0;
    GstBuffer *buf;
    GstEvent *ev;
    Rig r;

    gst_util_set_object_arg(G_OBJECT(vlm), "text-format", "json");
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_I420, 64, 48);
    rig_init(&r, vlm, &info, TRUE);
    gint64 t0 = g_get_monotonic_time();
    for (guint i = 0; i < n; i++)
        gst_buffer_unref(push_pull(&r, make_frame(&info, i, i * 40 * GST_MSECOND)));
    guint64 push_ns = (g_get_monotonic_time() - t0) * GST_USECOND;
    g_assert_cmpuint(gst_harness_buffers_received(r.h), ==, n);

    first = next_result(r.bus, 60 * GST_SECOND);
    g_assert_nonnull(first);
    /* not one frame waited for the answer */
    g_test_message("pushing %u frames took %" G_GUINT64_FORMAT " ns, one answer %" G_GUINT64_FORMAT,
                   n, push_ns, get_u64(first, "latency"));
    g_assert_cmpuint(push_ns, <, get_u64(first, "latency"));
    n_results = 1;
    gst_structure_free(first);

    g_assert_true(gst_harness_push_event(r.h, gst_event_new_eos()));
    guint64 analyzed = get_counter(vlm, "frames-analyzed");
    guint64 skipped = get_counter(vlm, "frames-skipped");
    g_test_message("analysed %" G_GUINT64_FORMAT ", skipped %" G_GUINT64_FORMAT, analyzed, skipped);
    g_assert_cmpuint(analyzed + skipped, ==, n);
    g_assert_cmpuint(skipped, >, 0);
    GstStructure *s;
    while ((s = next_result(r.bus, 0))) {
        n_results++;
        gst_structure_free(s);
    }
    g_assert_cmpuint(n_results, ==, analyzed);

    /* text_src (JSON): one object per answer, then EOS */
    while ((ev = gst_harness_pull_event(r.text)) && GST_EVENT_TYPE(ev) != GST_EVENT_EOS)
        gst_event_unref(ev);
    g_assert_nonnull(ev);
    gst_event_unref(ev);
    while ((buf = gst_harness_try_pull(r.text))) {
        GstMapInfo map;
        gst_buffer_map(buf, &map, GST_MAP_READ);
        g_assert_cmpuint(map.size, >, 2);
        g_assert_cmpint(map.data[0], ==, '{');
        g_assert_cmpmem(map.data + map.size - 2, 2, "}\n", 2);
        gst_buffer_unmap(buf, &map);
        n_text++;
        gst_buffer_unref(buf);
    }
    g_assert_cmpuint(n_text, ==, analyzed);
    rig_clear(&r);
}

/* Pulls text_src's next buffer and checks its text and time. */
static void expect_text(GstHarness *text, const char *want, GstClockTime pts, GstClockTime duration)
{
    GstBuffer *buf = gst_harness_pull(text);
    GstMapInfo map;

    g_assert_nonnull(buf);
    gst_buffer_map(buf, &map, GST_MAP_READ);
    g_assert_cmpmem(map.data, map.size, want, strlen(want));
    gst_buffer_unmap(buf, &map);
    g_assert_cmpuint(GST_BUFFER_PTS(buf), ==, pts);
    g_assert_cmpuint(GST_BUFFER_DURATION(buf), ==, duration);
    gst_buffer_unref(buf);
}

/* The meta and the message carry the same fields; text_src starts its stream properly, and
 * (text mode) carries the current caption over every frame from the first answer on. */
static void test_three_outputs(void)
{
    GstElement *vlm = make_vlm("async", FALSE, NULL);
    GstVideoInfo info;
    GstEvent *ev;
    char *text = NULL;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 40, 30);
    rig_init(&r, vlm, &info, TRUE);
    for (guint i = 0; i < 4; i++) {
        GstBuffer *out = push_pull(&r, make_frame(&info, i, i * 500 * GST_MSECOND));
        if (i % 2 == 0) {
            GstStructure *msg = next_result(r.bus, 0);
            g_assert_nonnull(msg);
            g_assert_true(is_fresh(out));
            assert_same_fields(caption(out), msg);
            g_assert_cmpstr(gst_structure_get_string(msg, "element"), ==, GST_OBJECT_NAME(vlm));
            g_assert_cmpstr(gst_structure_get_string(msg, "stop-reason"), ==, "max-tokens");
            g_free(text);
            text = g_strdup(gst_structure_get_string(msg, "text"));
            gst_structure_free(msg);
        } else {
            g_assert_false(is_fresh(out));
            g_assert_nonnull(caption(out));
        }
        if (i == 0) {
            /* stream-start, caps, segment first */
            static const GstEventType first[] = {GST_EVENT_STREAM_START, GST_EVENT_CAPS,
                                                 GST_EVENT_SEGMENT};
            for (guint k = 0; k < G_N_ELEMENTS(first); k++) {
                ev = gst_harness_pull_event(r.text);
                g_assert_cmpint(GST_EVENT_TYPE(ev), ==, first[k]);
                if (first[k] == GST_EVENT_CAPS) {
                    GstCaps *caps, *want = gst_caps_from_string("text/x-raw, format=utf8");
                    gst_event_parse_caps(ev, &caps);
                    g_assert_true(gst_caps_is_equal(caps, want));
                    gst_caps_unref(want);
                }
                gst_event_unref(ev);
            }
        }
        expect_text(r.text, text, i * 500 * GST_MSECOND, 500 * GST_MSECOND);
        gst_buffer_unref(out);
    }
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_eos()));
    ev = gst_harness_pull_event(r.text);
    g_assert_cmpint(GST_EVENT_TYPE(ev), ==, GST_EVENT_EOS);
    gst_event_unref(ev);
    g_assert_null(gst_harness_try_pull(r.text));
    g_free(text);
    rig_clear(&r);
}

/* A new prompt applies from the next sampled frame; `ask` adds one answer with its id. */
static void test_prompt_and_ask(void)
{
    CobraModel *model = test_load_model("f32");
    GstElement *vlm = make_vlm("async", FALSE, "prompt", "What is this?", NULL);
    GstVideoInfo info;
    GstStructure *s;
    guint id;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 48, 36);
    rig_init(&r, vlm, &info, FALSE);

    GstBuffer *f0 = make_frame(&info, 10, 0);
    char *a0 = engine_answer(model, &info, f0, "What is this?", NULL);
    gst_buffer_unref(push_pull(&r, f0));
    s = next_result(r.bus, 0);
    g_assert_cmpstr(gst_structure_get_string(s, "prompt"), ==, "What is this?");
    g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, a0);
    gst_structure_free(s);

    g_object_set(vlm, "prompt", "Which colours?", NULL);
    g_signal_emit_by_name(vlm, "ask", "Is it dark?", &id);
    g_assert_cmpuint(id, >, 0);
    GstBuffer *f1 = make_frame(&info, 11, GST_SECOND);
    char *a1 = engine_answer(model, &info, f1, "Which colours?", NULL);
    char *a2 = engine_answer(model, &info, f1, "Is it dark?", NULL);
    GstBuffer *out = push_pull(&r, f1);

    s = next_result(r.bus, 0);
    g_assert_cmpstr(gst_structure_get_string(s, "prompt"), ==, "Which colours?");
    g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, a1);
    g_assert_false(gst_structure_has_field(s, "request-id"));
    g_assert_cmpuint(get_u64(s, "seq"), ==, 2);
    gst_structure_free(s);

    s = next_result(r.bus, 0);
    guint got_id = 0;
    g_assert_cmpstr(gst_structure_get_string(s, "prompt"), ==, "Is it dark?");
    g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, a2);
    g_assert_true(gst_structure_get_uint(s, "request-id", &got_id));
    g_assert_cmpuint(got_id, ==, id);
    g_assert_cmpuint(get_u64(s, "seq"), ==, 3);
    /* the frame carries both answers, each in its own meta */
    assert_same_fields(caption_for(out, NULL, id), s);
    g_assert_nonnull(caption_for(out, NULL, 0));
    g_assert_cmpstr(gst_structure_get_string(caption_for(out, NULL, 0), "text"), ==, a1);
    gst_structure_free(s);
    gst_buffer_unref(out);

    /* an ask is answered once */
    gst_buffer_unref(push_pull(&r, make_frame(&info, 12, 2 * GST_SECOND)));
    s = next_result(r.bus, 0);
    g_assert_false(gst_structure_has_field(s, "request-id"));
    gst_structure_free(s);
    g_assert_null(next_result(r.bus, 0));

    g_free(a0);
    g_free(a1);
    g_free(a2);
    rig_clear(&r);
    cobra_model_free(model);
}

/* Microseconds of one uncancelled LONG_TOKENS answer on this machine now: what "promptly"
 * is measured against. */
static gint64 long_generation_us(void)
{
    CobraModel *model = test_load_model("f32");
    CobraSession *s = cobra_session_new(model, N_THREADS, NULL);
    GstVideoInfo info;
    CobraTimings timings;
    CobraParams params;
    GstVideoFrame f;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 64, 48);
    GstBuffer *buf = make_frame(&info, 1, 0);
    g_assert_true(gst_video_frame_map(&f, &info, buf, GST_MAP_READ));
    CobraImage img = {COBRA_FORMAT_RGB, 64, 48, {GST_VIDEO_FRAME_PLANE_DATA(&f, 0)},
                      {GST_VIDEO_FRAME_PLANE_STRIDE(&f, 0)}, 0};
    cobra_params_init(&params);
    params.max_tokens = LONG_TOKENS;
    gint64 t0 = g_get_monotonic_time();
    g_assert_true(cobra_session_set_image(s, &img, NULL));
    g_free(cobra_session_ask(s, "Describe the image.", &params, NULL, NULL, NULL));
    gint64 us = g_get_monotonic_time() - t0;
    cobra_session_get_timings(s, &timings);
    g_assert_cmpint(timings.n_generated, ==, LONG_TOKENS); /* no early stop token */
    g_test_message("an uncancelled %d-token answer takes %" G_GINT64_FORMAT " us", LONG_TOKENS, us);
    gst_video_frame_unmap(&f);
    gst_buffer_unref(buf);
    cobra_session_free(s);
    cobra_model_free(model);
    return us;
}

/* Waits for the first partial message of a generation; FALSE on timeout. */
static gboolean wait_generating(GstBus *bus, GstClockTime timeout)
{
    GstMessage *msg;

    while ((msg = gst_bus_timed_pop_filtered(bus, timeout, GST_MESSAGE_ELEMENT | GST_MESSAGE_ERROR))) {
        gboolean partial = gst_message_has_name(msg, "cobravlm-partial");
        g_assert_cmpint(GST_MESSAGE_TYPE(msg), !=, GST_MESSAGE_ERROR);
        gst_message_unref(msg);
        if (partial)
            return TRUE;
    }
    return FALSE;
}

/* A flush cancels the generation in flight promptly and drops its answer; the element works
 * on afterwards. */
static void test_flush(void)
{
    gint64 full_us = long_generation_us();
    GstElement *vlm = make_vlm("max-tokens", LONG_TOKENS, "partial-messages", TRUE, NULL);
    GstVideoInfo info;
    GstSegment seg;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 32, 24);
    rig_init(&r, vlm, &info, TRUE);
    gst_buffer_unref(push_pull(&r, make_frame(&info, 1, 0)));
    g_assert_true(wait_generating(r.bus, 30 * GST_SECOND));

    gint64 t0 = g_get_monotonic_time();
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_flush_start()));
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_flush_stop(TRUE)));
    gst_segment_init(&seg, GST_FORMAT_TIME);
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_segment(&seg)));
    g_object_set(vlm, "max-tokens", 3, "partial-messages", FALSE, NULL);
    /* the next frame is analysed as soon as the cancelled job has ended */
    gboolean answered = FALSE;
    for (guint i = 0; !answered; i++) {
        g_assert_cmpuint(i, <, 2000);
        GstBuffer *out = push_pull(&r, make_frame(&info, 2, i * 40 * GST_MSECOND));
        answered = is_fresh(out);
        gst_buffer_unref(out);
        if (!answered)
            g_usleep(5000);
    }
    gint64 flush_us = g_get_monotonic_time() - t0;
    g_test_message("flush to the next answer: %" G_GINT64_FORMAT " us", flush_us);
    g_assert_cmpint(flush_us, <, full_us / 3);

    /* the only answer is the one after the flush */
    GstStructure *s = next_result(r.bus, 0);
    g_assert_nonnull(s);
    guint n_tokens = 0;
    g_assert_true(gst_structure_get_uint(s, "n-tokens", &n_tokens));
    g_assert_cmpuint(n_tokens, <=, 3);
    g_assert_cmpuint(get_u64(s, "seq"), ==, 1);
    gst_structure_free(s);
    g_assert_null(next_result(r.bus, 0));
    rig_clear(&r);
}

static GstElement *launch(const char *desc)
{
    GError *err = NULL;
    GstElement *p = gst_parse_launch(desc, &err);
    g_assert_no_error(err);
    return p;
}

/* A flushing seek while async=false is generating on the streaming thread returns promptly and
 * drops the answer in progress. */
static void test_seek_sync(void)
{
    char *desc = g_strdup_printf(
        "videotestsrc pattern=ball ! video/x-raw,width=64,height=48,framerate=10/1 ! "
        "cobravlm name=vlm model-file=%s n-threads=%d async=false max-tokens=%d "
        "partial-messages=true ! fakesink",
        model_file, N_THREADS, LONG_TOKENS);
    gint64 full_us = long_generation_us();
    GstElement *p = launch(desc);
    GstElement *vlm = gst_bin_get_by_name(GST_BIN(p), "vlm");
    GstBus *bus = gst_element_get_bus(p);
    GstStructure *s;

    g_assert_cmpint(gst_element_set_state(p, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
    g_assert_true(wait_generating(bus, 30 * GST_SECOND));
    g_object_set(vlm, "max-tokens", 3, "partial-messages", FALSE, NULL);
    gint64 t0 = g_get_monotonic_time();
    g_assert_true(gst_element_seek_simple(p, GST_FORMAT_TIME, GST_SEEK_FLAG_FLUSH, 5 * GST_SECOND));
    g_assert_cmpint(gst_element_get_state(p, NULL, NULL, 10 * GST_SECOND), ==,
                    GST_STATE_CHANGE_SUCCESS);
    gint64 seek_us = g_get_monotonic_time() - t0;
    s = next_result(bus, 30 * GST_SECOND); /* the first answer after the seek */
    g_assert_nonnull(s);
    g_test_message("seek took %" G_GINT64_FORMAT " us; next answer for %" G_GUINT64_FORMAT,
                   seek_us, get_u64(s, "source-pts"));
    g_assert_cmpint(seek_us, <, full_us / 3);
    g_assert_cmpuint(get_u64(s, "source-pts"), >=, 5 * GST_SECOND);
    g_assert_cmpuint(get_u64(s, "seq"), ==, 1);
    gst_structure_free(s);
    gst_element_set_state(p, GST_STATE_NULL);
    gst_object_unref(bus);
    gst_object_unref(vlm);
    gst_object_unref(p);
    g_free(desc);
}

/* Entries of a /proc/self directory: "fd" (open files) or "task" (threads). */
static guint count_proc_entries(const char *name)
{
    char *path = g_build_filename("/proc/self", name, NULL);
    GDir *d = g_dir_open(path, 0, NULL);
    guint n = 0;

    g_assert_nonnull(d);
    while (g_dir_read_name(d))
        n++;
    g_dir_close(d);
    g_free(path);
    return n;
}

/* Mappings of `file` in this process. */
static guint count_mappings(const char *file)
{
    char *maps, *real = realpath(file, NULL);
    guint n = 0;

    g_assert_true(g_file_get_contents("/proc/self/maps", &maps, NULL, NULL));
    for (const char *p = maps; (p = strstr(p, real)); p++)
        n++;
    g_free(maps);
    free(real);
    return n;
}

/* 200 PLAYING -> NULL while a generation runs (async and not, text_src linked): each returns
 * promptly, and no thread or open file is left behind; the model file is never mapped. */
static void test_state_cycles(void)
{
    char *desc = g_strdup_printf(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=30/1 ! "
        "cobravlm name=vlm model-file=%s n-threads=%d interval=0 max-tokens=%d "
        "partial-messages=true ! fakesink  vlm.text_src ! fakesink async=false",
        model_file, N_THREADS, LONG_TOKENS);
    gint64 full_us = long_generation_us();
    GstElement *p = launch(desc);
    GstElement *vlm = gst_bin_get_by_name(GST_BIN(p), "vlm");
    GstBus *bus = gst_element_get_bus(p);
    guint threads = 0, fds = 0;
    gint64 worst = 0;

    for (guint i = 0; i < 200; i++) {
        g_object_set(vlm, "async", i % 2 == 0, NULL);
        g_assert_cmpint(gst_element_set_state(p, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
        /* read into memory, not mapped: a model file rewritten in place cannot hurt it */
        g_assert_cmpuint(count_mappings(model_file), ==, 0);
        g_assert_true(wait_generating(bus, 30 * GST_SECOND));
        gint64 t0 = g_get_monotonic_time();
        g_assert_cmpint(gst_element_set_state(p, GST_STATE_NULL), ==, GST_STATE_CHANGE_SUCCESS);
        worst = MAX(worst, g_get_monotonic_time() - t0);
        gst_bus_set_flushing(bus, TRUE);
        gst_bus_set_flushing(bus, FALSE);
        g_assert_cmpuint(count_mappings(model_file), ==, 0);
        if (i == 1) { /* after a cycle of each kind, thread pools are warm */
            threads = count_proc_entries("task");
            fds = count_proc_entries("fd");
        }
    }
    g_test_message("slowest PLAYING -> NULL: %" G_GINT64_FORMAT " us; threads %u -> %u, "
                   "files %u -> %u", worst, threads, count_proc_entries("task"), fds,
                   count_proc_entries("fd"));
    g_assert_cmpint(worst, <, full_us / 3);
    /* GLib's thread pools keep a few idle threads */
    g_assert_cmpuint(count_proc_entries("task"), <=, threads + 2);
    g_assert_cmpuint(count_proc_entries("fd"), ==, fds);
    gst_object_unref(bus);
    gst_object_unref(vlm);
    gst_object_unref(p);
    g_free(desc);
}

/* Runs a pipeline to EOS, failing on an error, and leaves it in PLAYING; returns its "cobravlm"
 * results by element name, and its "cobravlm-unanswered" messages under "NAME/unanswered". */
static GHashTable *run_to_eos_keep(GstElement *p)
{
    GHashTable *results = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                                (GDestroyNotify)g_ptr_array_unref);
    GstBus *bus = gst_element_get_bus(p);
    GstMessage *msg;

    g_assert_cmpint(gst_element_set_state(p, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
    while ((msg = gst_bus_timed_pop_filtered(bus, 60 * GST_SECOND,
                                             GST_MESSAGE_ELEMENT | GST_MESSAGE_EOS |
                                                 GST_MESSAGE_ERROR | GST_MESSAGE_LATENCY))) {
        if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_LATENCY) /* as gst-launch-1.0 does */
            gst_bin_recalculate_latency(GST_BIN(p));
        if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
            GError *err;
            gst_message_parse_error(msg, &err, NULL);
            g_error("pipeline error: %s", err->message);
        }
        if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_EOS) {
            gst_message_unref(msg);
            break;
        }
        if (gst_message_has_name(msg, "cobravlm") ||
            gst_message_has_name(msg, "cobravlm-unanswered")) {
            char *name = gst_message_has_name(msg, "cobravlm")
                             ? gst_object_get_name(GST_MESSAGE_SRC(msg))
                             : g_strconcat(GST_OBJECT_NAME(GST_MESSAGE_SRC(msg)), "/unanswered", NULL);
            GPtrArray *list = g_hash_table_lookup(results, name);
            if (!list) {
                list = g_ptr_array_new_with_free_func((GDestroyNotify)gst_structure_free);
                g_hash_table_insert(results, g_strdup(name), list);
            }
            g_ptr_array_add(list, gst_structure_copy(gst_message_get_structure(msg)));
            g_free(name);
        }
        gst_message_unref(msg);
    }
    g_assert_nonnull(msg);
    gst_object_unref(bus);
    return results;
}

/* The same, and then the pipeline is set to NULL. */
static GHashTable *run_to_eos(GstElement *p)
{
    GHashTable *results = run_to_eos_keep(p);
    gst_element_set_state(p, GST_STATE_NULL);
    return results;
}

typedef struct {
    GstElement *vlm;
    volatile gint stop;
    GHashTable *ids; /* ask ids issued -> their questions */
    guint refused;   /* asks refused: too many waiting */
} Hammer;

static gpointer hammer_main(gpointer data)
{
    Hammer *h = data;
    static const char *prompts[] = {"Describe the image.", "What moves?", "Which colours?"};

    /* all asked well before the 3 s of video end, so each accepted one has an outcome by EOS */
    for (guint i = 0; i < 300 && !g_atomic_int_get(&h->stop); i++) {
        char *q = g_strdup_printf("Extra %u?", i);
        guint id;
        g_object_set(h->vlm, "prompt", prompts[i % G_N_ELEMENTS(prompts)], NULL);
        g_signal_emit_by_name(h->vlm, "ask", q, &id);
        if (id > 0)
            g_hash_table_insert(h->ids, GUINT_TO_POINTER(id), g_strdup(q));
        else
            h->refused++;
        g_free(q);
        g_usleep(2000);
    }
    return NULL;
}

/* Prompt changes and `ask` from another thread while playing: every answer is to a question
 * that was asked, each accepted `ask` gets exactly one outcome (an answer or an unanswered
 * message), refusals are counted. */
static void test_concurrent_controls(void)
{
    char *desc = g_strdup_printf(
        "videotestsrc num-buffers=90 pattern=ball ! video/x-raw,width=64,height=48,framerate=30/1 ! "
        "cobravlm name=vlm model-file=%s n-threads=%d interval=0 max-tokens=4 ! fakesink sync=true",
        model_file, N_THREADS);
    GstElement *p = launch(desc);
    Hammer h = {gst_bin_get_by_name(GST_BIN(p), "vlm"), 0,
                g_hash_table_new_full(NULL, NULL, NULL, g_free), 0};
    GThread *thread = g_thread_new("hammer", hammer_main, &h);
    GHashTable *results = run_to_eos(p);
    GHashTable *answered = g_hash_table_new(NULL, NULL);

    g_atomic_int_set(&h.stop, 1);
    g_thread_join(thread);
    GPtrArray *list = g_hash_table_lookup(results, "vlm");
    g_assert_nonnull(list);
    guint n_asks = 0;
    for (guint i = 0; i < list->len; i++) {
        const GstStructure *s = list->pdata[i];
        const char *prompt = gst_structure_get_string(s, "prompt");
        guint id;
        g_assert_cmpuint(get_u64(s, "seq"), ==, i + 1);
        if (gst_structure_get_uint(s, "request-id", &id)) {
            g_assert_cmpstr(prompt, ==, g_hash_table_lookup(h.ids, GUINT_TO_POINTER(id)));
            g_assert_true(g_hash_table_add(answered, GUINT_TO_POINTER(id)));
            n_asks++;
        } else {
            g_assert_true(g_str_equal(prompt, "Describe the image.") ||
                          g_str_equal(prompt, "What moves?") ||
                          g_str_equal(prompt, "Which colours?"));
        }
    }
    GPtrArray *unanswered = g_hash_table_lookup(results, "vlm/unanswered");
    guint n_unanswered = unanswered ? unanswered->len : 0;
    for (guint i = 0; i < n_unanswered; i++) {
        const GstStructure *s = unanswered->pdata[i];
        guint id = 0;
        g_assert_true(gst_structure_get_uint(s, "request-id", &id));
        g_assert_true(g_hash_table_contains(h.ids, GUINT_TO_POINTER(id)));
        g_assert_true(g_hash_table_add(answered, GUINT_TO_POINTER(id)));
        g_assert_cmpstr(gst_structure_get_string(s, "reason"), ==, "eos");
    }
    g_test_message("%u answers, %u of them to %u asks; %u unanswered at EOS, %u refused",
                   list->len, n_asks, g_hash_table_size(h.ids), n_unanswered, h.refused);
    g_assert_cmpuint(n_asks, >, 0);
    g_assert_cmpuint(g_hash_table_size(answered), ==, g_hash_table_size(h.ids));
    g_assert_cmpuint(get_counter(h.vlm, "asks-refused"), ==, h.refused);
    g_hash_table_unref(answered);
    g_hash_table_unref(h.ids);
    g_hash_table_unref(results);
    gst_object_unref(h.vlm);
    gst_object_unref(p);
    g_free(desc);
}

typedef struct {
    GstVideoInfo info;
    GstBuffer *frame;
} SentFrame;

static void sent_frame_free(SentFrame *f)
{
    gst_buffer_unref(f->frame);
    g_free(f);
}

/* async with the caps changing every 3 frames: each answer is the engine's for the frame whose
 * PTS it names, so the copy the worker reads is that frame, in its own format. */
static void test_caps_churn(void)
{
    static const struct {
        GstVideoFormat format;
        guint width, height;
    } caps[] = {
        {GST_VIDEO_FORMAT_I420, 64, 48}, {GST_VIDEO_FORMAT_RGB, 30, 20},
        {GST_VIDEO_FORMAT_NV12, 96, 54}, {GST_VIDEO_FORMAT_BGRx, 17, 41},
    };
    CobraModel *model = test_load_model("f32");
    GstElement *vlm = make_vlm("interval", (guint64)0, NULL);
    GHashTable *sent = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                             (GDestroyNotify)sent_frame_free);
    GstVideoInfo info;
    GPtrArray *answers = g_ptr_array_new_with_free_func((GDestroyNotify)gst_structure_free);
    GstStructure *s;
    guint n;
    Rig r;

    gst_video_info_set_format(&info, caps[0].format, caps[0].width, caps[0].height);
    rig_init(&r, vlm, &info, FALSE);
    for (guint i = 0; i < 60; i++) {
        if (i % 3 == 0) {
            guint k = (i / 3) % G_N_ELEMENTS(caps);
            gst_video_info_set_format(&info, caps[k].format, caps[k].width, caps[k].height);
            gst_harness_set_src_caps(r.h, gst_video_info_to_caps(&info));
            /* let the worker finish, so that some frames of every format are analysed */
            while (answers->len < get_counter(vlm, "frames-analyzed"))
                g_ptr_array_add(answers, next_result(r.bus, 60 * GST_SECOND));
            g_usleep(20000); /* the worker goes idle just after posting */
        }
        SentFrame *f = g_new(SentFrame, 1);
        f->info = info;
        f->frame = make_frame(&info, i, i * 20 * GST_MSECOND);
        gint64 *pts = g_new(gint64, 1);
        *pts = (gint64)GST_BUFFER_PTS(f->frame);
        g_hash_table_insert(sent, pts, f);
        gst_buffer_unref(push_pull(&r, gst_buffer_ref(f->frame)));
    }
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_eos()));
    while ((s = next_result(r.bus, 0)))
        g_ptr_array_add(answers, s);
    for (guint i = 0; i < answers->len; i++) {
        s = answers->pdata[i];
        g_assert_nonnull(s);
        gint64 pts = (gint64)get_u64(s, "source-pts");
        SentFrame *f = g_hash_table_lookup(sent, &pts);
        g_assert_nonnull(f);
        char *expect = engine_answer(model, &f->info, f->frame, "Describe the image.", NULL);
        g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, expect);
        g_free(expect);
    }
    n = answers->len;
    g_test_message("%u answers checked", n);
    g_assert_cmpuint(n, ==, get_counter(vlm, "frames-analyzed"));
    g_assert_cmpuint(n, >=, G_N_ELEMENTS(caps));
    g_ptr_array_unref(answers);
    g_hash_table_unref(sent);
    rig_clear(&r);
    cobra_model_free(model);
}

typedef struct {
    guint n;
    guint64 rss_kib[2]; /* after 2,000 frames and at the end */
} LongRun;

static guint64 rss_kib(void)
{
    char *status, *line;
    guint64 kib = 0;

    g_assert_true(g_file_get_contents("/proc/self/status", &status, NULL, NULL));
    line = strstr(status, "VmRSS:");
    g_assert_nonnull(line);
    kib = g_ascii_strtoull(line + strlen("VmRSS:"), NULL, 10);
    g_free(status);
    return kib;
}

static GstPadProbeReturn count_frames(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    LongRun *run = data;

    if (++run->n == 2000)
        run->rss_kib[0] = rss_kib();
    else if (run->n == 10000)
        run->rss_kib[1] = rss_kib();
    return GST_PAD_PROBE_OK;
}

/* 10,000 frames, one in 20 analysed (500 answers, on the streaming thread so that the count
 * does not depend on the machine's speed): resident memory stays flat. */
static void test_long_run(void)
{
    char *desc = g_strdup_printf(
        "videotestsrc num-buffers=10000 pattern=ball ! "
        "video/x-raw,width=64,height=48,framerate=100/1 ! "
        "cobravlm name=vlm model-file=%s n-threads=%d async=false interval=200000000 "
        "max-tokens=4 ! "
        "fakesink name=sink  vlm.text_src ! fakesink async=false",
        model_file, N_THREADS);
    GstElement *p = launch(desc);
    GstElement *sink = gst_bin_get_by_name(GST_BIN(p), "sink");
    GstElement *vlm = gst_bin_get_by_name(GST_BIN(p), "vlm");
    GstPad *pad = gst_element_get_static_pad(sink, "sink");
    LongRun run = {0};

    gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER, count_frames, &run, NULL);
    GHashTable *results = run_to_eos(p);
    guint64 analyzed = get_counter(vlm, "frames-analyzed");
    g_test_message("%u frames, %" G_GUINT64_FORMAT " analysed; RSS %" G_GUINT64_FORMAT
                   " KiB after 2,000, %" G_GUINT64_FORMAT " KiB after 10,000",
                   run.n, analyzed, run.rss_kib[0], run.rss_kib[1]);
    g_assert_cmpuint(run.n, ==, 10000);
    g_assert_cmpuint(analyzed, ==, 500);
#ifndef __SANITIZE_ADDRESS__ /* ASan's quarantine keeps freed memory resident: nothing to measure */
    g_assert_cmpuint(run.rss_kib[1], <, run.rss_kib[0] + 4096);
#endif
    g_hash_table_unref(results);
    gst_object_unref(pad);
    gst_object_unref(sink);
    gst_object_unref(vlm);
    gst_object_unref(p);
    g_free(desc);
}

/* Four elements on one model file in one pipeline share one load of it and agree on every frame. */
static void test_shared_model(void)
{
    GString *desc = g_string_new(
        "videotestsrc num-buffers=6 pattern=ball ! "
        "video/x-raw,format=RGB,width=64,height=48,framerate=2/1 ! tee name=t ");
    for (int i = 0; i < 4; i++)
        g_string_append_printf(desc,
                               "t. ! queue ! cobravlm name=v%d model-file=%s n-threads=%d "
                               "async=false max-tokens=%d ! fakesink ",
                               i, model_file, N_THREADS, MAX_TOKENS);
    GstElement *p = launch(desc->str);
    /* the four elements hold the weights once (one load, shared): READY costs them about what
     * it costs one element (four copies would cost four times as much) */
    char *one_desc = g_strdup_printf("fakesrc ! cobravlm model-file=%s ! fakesink", model_file);
    GstElement *one = launch(one_desc);
    guint64 before = rss_kib();
    g_assert_cmpint(gst_element_set_state(one, GST_STATE_READY), ==, GST_STATE_CHANGE_SUCCESS);
    guint64 grown_one = rss_kib() - before;
    gst_element_set_state(one, GST_STATE_NULL);
    gst_object_unref(one);
    g_free(one_desc);
    before = rss_kib();
    g_assert_cmpint(gst_element_set_state(p, GST_STATE_READY), ==, GST_STATE_CHANGE_SUCCESS);
    guint64 grown = rss_kib() - before;
    g_test_message("RSS at READY: +%" G_GUINT64_FORMAT " KiB for one element, +%" G_GUINT64_FORMAT
                   " KiB for four", grown_one, grown);
    g_assert_cmpuint(grown, <, 2 * grown_one);
    GHashTable *results = run_to_eos(p);

    g_assert_cmpuint(g_hash_table_size(results), ==, 4);
    GPtrArray *ref = g_hash_table_lookup(results, "v0");
    g_assert_cmpuint(ref->len, ==, 3); /* 3 s at one answer a second */
    for (int i = 1; i < 4; i++) {
        char name[4];
        g_snprintf(name, sizeof name, "v%d", i);
        GPtrArray *got = g_hash_table_lookup(results, name);
        g_assert_cmpuint(got->len, ==, ref->len);
        for (guint k = 0; k < ref->len; k++) {
            const GstStructure *a = ref->pdata[k], *b = got->pdata[k];
            g_assert_cmpstr(gst_structure_get_string(a, "text"), ==,
                            gst_structure_get_string(b, "text"));
            g_assert_cmpuint(get_u64(a, "source-pts"), ==, get_u64(b, "source-pts"));
        }
    }
    g_hash_table_unref(results);
    gst_object_unref(p);
    g_string_free(desc, TRUE);
}

/* The next message named `name` (element messages) on `bus`, waiting up to `timeout`; copied. */
static GstStructure *next_named(GstBus *bus, const char *name, GstClockTime timeout)
{
    GstMessage *msg;

    while ((msg = gst_bus_timed_pop_filtered(bus, timeout, GST_MESSAGE_ELEMENT))) {
        const GstStructure *s = gst_message_get_structure(msg);
        GstStructure *copy = gst_structure_has_name(s, name) ? gst_structure_copy(s) : NULL;
        gst_message_unref(msg);
        if (copy)
            return copy;
    }
    return NULL;
}

static guint get_uint(const GstStructure *s, const char *field)
{
    guint v = G_MAXUINT;
    g_assert_true(gst_structure_get_uint(s, field, &v));
    return v;
}

/* An ask is answered on the next frame whatever the interval; every accepted one ends in
 * exactly one outcome: at EOS before any frame, in a flush, and at a stop it says why. */
static void test_ask_outcomes(void)
{
    GstElement *vlm = make_vlm("async", FALSE, "interval", (guint64)3600 * GST_SECOND, NULL);
    GstVideoInfo info;
    GstStructure *s;
    guint id;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 32, 24);
    rig_init(&r, vlm, &info, FALSE);
    gst_buffer_unref(push_pull(&r, make_frame(&info, 1, 0)));
    s = next_result(r.bus, 0);
    g_assert_false(gst_structure_has_field(s, "request-id"));
    gst_structure_free(s);
    /* the prompt is not due for an hour; the ask goes on the very next frame */
    g_signal_emit_by_name(vlm, "ask", "What now?", &id);
    GstBuffer *out = push_pull(&r, make_frame(&info, 2, GST_SECOND));
    s = next_result(r.bus, 0);
    g_assert_nonnull(s);
    g_assert_cmpuint(get_uint(s, "request-id"), ==, id);
    g_assert_cmpuint(get_u64(s, "source-pts"), ==, GST_SECOND);
    g_assert_nonnull(caption_for(out, GST_OBJECT_NAME(vlm), id));
    gst_structure_free(s);
    gst_buffer_unref(out);
    g_assert_cmpuint(get_counter(vlm, "frames-analyzed"), ==, 2);

    /* EOS before another frame: not answered, and said so */
    g_signal_emit_by_name(vlm, "ask", "Too late?", &id);
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_eos()));
    s = next_named(r.bus, "cobravlm-unanswered", 0);
    g_assert_nonnull(s);
    g_assert_cmpuint(get_uint(s, "request-id"), ==, id);
    g_assert_cmpstr(gst_structure_get_string(s, "reason"), ==, "eos");
    gst_structure_free(s);
    /* after EOS, asks are refused */
    g_signal_emit_by_name(vlm, "ask", "Anyone?", &id);
    g_assert_cmpuint(id, ==, 0);
    expect_warning(r.bus, "ended");
    rig_clear(&r);

    /* a flush while an ask is being answered (async), and a stop with asks waiting */
    vlm = make_vlm("max-tokens", LONG_TOKENS, "partial-messages", TRUE, NULL);
    rig_init(&r, vlm, &info, FALSE);
    guint busy_id, waiting_id;
    g_signal_emit_by_name(vlm, "ask", "Tell me everything.", &busy_id);
    gst_buffer_unref(push_pull(&r, make_frame(&info, 3, 0)));
    /* the prompt is answered first; wait until the ask generates */
    GstMessage *msg;
    gboolean asking = FALSE;
    while (!asking && (msg = gst_bus_timed_pop_filtered(r.bus, 60 * GST_SECOND, GST_MESSAGE_ELEMENT))) {
        guint rid = 0;
        asking = gst_message_has_name(msg, "cobravlm-partial") &&
                 gst_structure_get_uint(gst_message_get_structure(msg), "request-id", &rid);
        gst_message_unref(msg);
    }
    g_assert_true(asking);
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_flush_start()));
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_flush_stop(TRUE)));
    s = next_named(r.bus, "cobravlm-unanswered", 30 * GST_SECOND);
    g_assert_nonnull(s);
    g_assert_cmpuint(get_uint(s, "request-id"), ==, busy_id);
    g_assert_cmpstr(gst_structure_get_string(s, "reason"), ==, "flushed");
    gst_structure_free(s);
    g_signal_emit_by_name(vlm, "ask", "Still there?", &waiting_id);
    gst_element_set_state(vlm, GST_STATE_NULL);
    s = next_named(r.bus, "cobravlm-unanswered", 0);
    g_assert_nonnull(s);
    g_assert_cmpuint(get_uint(s, "request-id"), ==, waiting_id);
    g_assert_cmpstr(gst_structure_get_string(s, "reason"), ==, "stopped");
    gst_structure_free(s);
    g_assert_null(next_named(r.bus, "cobravlm", 0));
    rig_clear(&r);
}

/* Two cobravlm in series: each buffer carries both elements' answers, each naming its element
 * and question; results carry the stream-id and a wall-clock time (the frame's NTP reference
 * timestamp when it has one). */
static void test_series_and_origin(void)
{
    GstElement *a = make_vlm("async", FALSE, "name", "first", NULL);
    GstElement *b = make_vlm("async", FALSE, "name", "second", "prompt", "What is this?", NULL);
    GstElement *bin = gst_object_ref_sink(gst_bin_new(NULL));
    GstCaps *ntp = gst_caps_new_empty_simple("timestamp/x-ntp");
    const guint64 ntp_unix_s = 2208988800u, when = 1796000000u; /* seconds since 1970 */
    GstVideoInfo info;
    GstBus *bus = gst_bus_new();

    gst_bin_add_many(GST_BIN(bin), a, b, NULL);
    g_assert_true(gst_element_link(a, b));
    GstPad *sink = gst_element_get_static_pad(a, "sink"), *src = gst_element_get_static_pad(b, "src");
    gst_element_add_pad(bin, gst_ghost_pad_new("sink", sink));
    gst_element_add_pad(bin, gst_ghost_pad_new("src", src));
    gst_object_unref(sink);
    gst_object_unref(src);
    gst_element_set_bus(bin, bus);
    GstHarness *h = gst_harness_new_with_element(bin, "sink", "src");
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 32, 24);
    gst_harness_set_src_caps(h, gst_video_info_to_caps(&info));

    GstBuffer *in = make_frame(&info, 4, 0);
    gst_buffer_add_reference_timestamp_meta(in, ntp, (ntp_unix_s + when) * GST_SECOND,
                                            GST_CLOCK_TIME_NONE);
    GstBuffer *out = gst_harness_push_and_pull(h, in);
    const GstStructure *m1 = caption_for(out, "first", 0), *m2 = caption_for(out, "second", 0);
    g_assert_nonnull(m1);
    g_assert_nonnull(m2);
    g_assert_cmpstr(gst_structure_get_string(m1, "prompt"), ==, "Describe the image.");
    g_assert_cmpstr(gst_structure_get_string(m2, "prompt"), ==, "What is this?");
    for (const GstStructure *m = m1; m; m = m == m1 ? m2 : NULL) {
        g_assert_cmpuint(get_u64(m, "timestamp"), ==, when * GST_SECOND);
        g_assert_cmpstr(gst_structure_get_string(m, "timestamp-source"), ==, "ntp");
        g_assert_true(strlen(gst_structure_get_string(m, "stream-id")) > 0);
    }
    gst_buffer_unref(out);

    /* without a reference timestamp: this machine's clock when the frame arrived */
    guint64 before = (guint64)g_get_real_time() * 1000;
    out = gst_harness_push_and_pull(h, make_frame(&info, 5, GST_SECOND));
    guint64 after = (guint64)g_get_real_time() * 1000;
    m1 = caption_for(out, "first", 0);
    g_assert_cmpstr(gst_structure_get_string(m1, "timestamp-source"), ==, "system");
    g_assert_cmpuint(get_u64(m1, "timestamp"), >=, before - GST_MSECOND);
    g_assert_cmpuint(get_u64(m1, "timestamp"), <=, after + GST_MSECOND);
    gst_buffer_unref(out);

    gst_harness_teardown(h);
    gst_element_set_bus(bin, NULL);
    gst_object_unref(bus);
    gst_caps_unref(ntp);
    gst_object_unref(a);
    gst_object_unref(b);
    gst_object_unref(bin);
}

/* async=false on a live source: the element answers the latency query with its processing
 * time (posting a latency message when it grows), so a synchronised sink keeps the frames held
 * behind an analysis; it used to report none, and the sink dropped them. */
static void test_sync_latency(void)
{
    char *desc = g_strdup_printf(
        "videotestsrc is-live=true num-buffers=90 ! video/x-raw,width=64,height=48,framerate=30/1 ! "
        "cobravlm name=vlm model-file=%s n-threads=%d async=false max-tokens=300 interval=%"
        G_GUINT64_FORMAT " ! fakesink name=sink sync=true qos=true max-lateness=%" G_GUINT64_FORMAT,
        model_file, N_THREADS, (guint64)(GST_SECOND / 2), (guint64)(5 * GST_MSECOND));
    GstElement *p = launch(desc);
    GstElement *sink = gst_bin_get_by_name(GST_BIN(p), "sink");
    GstElement *vlm = gst_bin_get_by_name(GST_BIN(p), "vlm");
    GHashTable *results;
    GstStructure *stats;
    guint64 rendered = 0, dropped = 0;

    results = run_to_eos_keep(p);
    GPtrArray *answers = g_hash_table_lookup(results, "vlm");
    g_object_get(sink, "stats", &stats, NULL);
    gst_structure_get_uint64(stats, "rendered", &rendered);
    gst_structure_get_uint64(stats, "dropped", &dropped);
    GstQuery *q = gst_query_new_latency();
    gboolean live;
    GstClockTime min = 0, max;
    g_assert_true(gst_element_query(p, q));
    gst_query_parse_latency(q, &live, &min, &max);
    guint64 slowest = 0, held = 0; /* frames held behind all analyses */
    for (guint i = 0; i < answers->len; i++) {
        slowest = MAX(slowest, get_u64(answers->pdata[i], "latency"));
        held += get_u64(answers->pdata[i], "latency") / (GST_SECOND / 30);
    }
    g_test_message("%u answers (slowest %" G_GUINT64_FORMAT " ns, %" G_GUINT64_FORMAT
                   " frames held in all); pipeline latency %" G_GUINT64_FORMAT " ns; %"
                   G_GUINT64_FORMAT " frames rendered, %" G_GUINT64_FORMAT " dropped",
                   answers->len, slowest, held, min, rendered, dropped);
    g_assert_true(live);
    g_assert_cmpuint(min, >=, slowest);
    /* frames held behind an analysis slower than any before it (the first, before it was
     * measured) can still be late; the rest are on time */
    g_assert_cmpuint(dropped, <, held);
    gst_element_set_state(p, GST_STATE_NULL);
    gst_structure_free(stats);
    g_hash_table_unref(results);
    gst_object_unref(sink);
    gst_object_unref(vlm);
    gst_object_unref(p);
    g_free(desc);
}

/* model-file cannot change under a running session: refused with a warning in PLAYING. Caps
 * offer only sizes the engine takes (no warning flood on every sampled frame). */
static void test_refusals(void)
{
    GstElement *vlm = make_vlm(NULL);
    GstVideoInfo info;
    char *path;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 32, 24);
    rig_init(&r, vlm, &info, FALSE);
    g_assert_cmpint(gst_element_set_state(vlm, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
    g_object_set(vlm, "model-file", "/elsewhere/other.gguf", NULL);
    expect_warning(r.bus, "model-file can only change");
    g_object_get(vlm, "model-file", &path, NULL);
    g_assert_cmpstr(path, ==, model_file);
    g_free(path);

    GstPad *pad = gst_element_get_static_pad(vlm, "sink");
    GstCaps *huge = gst_caps_from_string("video/x-raw,format=RGB,width=20000,height=10,framerate=1/1");
    GstCaps *fine = gst_caps_from_string("video/x-raw,format=RGB,width=16384,height=10,framerate=1/1");
    g_assert_false(gst_pad_query_accept_caps(pad, huge));
    g_assert_true(gst_pad_query_accept_caps(pad, fine));
    gst_caps_unref(huge);
    gst_caps_unref(fine);
    gst_object_unref(pad);
    rig_clear(&r);
}

/* A text branch that takes nothing (a stalled muxer, a blocked probe) while video flows: the
 * element's text queue stays bounded (oldest captions become GAPs, counted) and video never
 * waits; when the branch moves again, its time still only goes forward. */
static GstPadProbeReturn block_probe(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    return GST_PAD_PROBE_OK;
}

static void test_stalled_text(void)
{
    GstElement *vlm = make_vlm("async", FALSE, "interval", (guint64)0, "max-tokens", 2, NULL);
    const guint n = 3000;
    GstVideoInfo info;
    GstBuffer *buf;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 16, 12);
    rig_init(&r, vlm, &info, TRUE);
    GstPad *text_sink = GST_PAD_PEER(gst_element_get_static_pad(vlm, "text_src"));
    gst_object_unref(gst_element_get_static_pad(vlm, "text_src"));
    gulong probe = gst_pad_add_probe(text_sink, GST_PAD_PROBE_TYPE_BLOCK_DOWNSTREAM, block_probe,
                                     NULL, NULL);
    for (guint i = 0; i < n; i++)
        gst_buffer_unref(push_pull(&r, make_frame(&info, i % 7, i * 10 * GST_MSECOND)));
    guint64 dropped = get_counter(vlm, "text-dropped");
    g_test_message("%u frames with the text branch blocked: %" G_GUINT64_FORMAT
                   " captions became GAPs", n, dropped);
    g_assert_cmpuint(dropped, >, n / 2);
    gst_pad_remove_probe(text_sink, probe);
    g_assert_true(gst_harness_push_event(r.h, gst_event_new_eos()));
    /* what the branch gets: at most the bound, in forward time */
    guint items = 0;
    GstClockTime pos = 0;
    GstEvent *ev;
    while ((ev = gst_harness_pull_event(r.text)) && GST_EVENT_TYPE(ev) != GST_EVENT_EOS) {
        if (GST_EVENT_TYPE(ev) == GST_EVENT_GAP) {
            GstClockTime ts, dur;
            gst_event_parse_gap(ev, &ts, &dur);
            g_assert_cmpuint(ts, >=, pos);
            pos = ts + dur;
        }
        gst_event_unref(ev);
    }
    g_assert_nonnull(ev);
    gst_event_unref(ev);
    while ((buf = gst_harness_try_pull(r.text))) {
        items++;
        gst_buffer_unref(buf);
    }
    g_test_message("%u caption buffers reached the branch", items);
    g_assert_cmpuint(items, <=, 1100);
    rig_clear(&r);
}

/* Label mode: the result is the best label with its softmax share, all scores alongside (the
 * engine's own for the frame); label-threshold and label-changes-only hold results back; bad
 * label lists are refused with a warning, labels the model cannot take warn once. */
static void test_labels(void)
{
    CobraModel *model = test_load_model("f32");
    static const char *labels[] = {"yes", "no", "maybe"};
    GstElement *vlm = make_vlm("async", FALSE, "interval", (guint64)0, "labels", "yes, no ,maybe",
                               NULL);
    GstVideoInfo info;
    GstStructure *s;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 48, 36);
    rig_init(&r, vlm, &info, TRUE);
    GstBuffer *in = make_frame(&info, 9, 0);
    /* the engine's scores for the same frame */
    GstVideoFrame f;
    CobraSession *session = cobra_session_new(model, N_THREADS, NULL);
    float lp[3];
    g_assert_true(gst_video_frame_map(&f, &info, in, GST_MAP_READ));
    CobraImage img = {COBRA_FORMAT_RGB, 48, 36, {GST_VIDEO_FRAME_PLANE_DATA(&f, 0)},
                      {GST_VIDEO_FRAME_PLANE_STRIDE(&f, 0)}, 0};
    g_assert_true(cobra_session_set_image(session, &img, NULL));
    g_assert_true(cobra_session_score_labels(session, "Describe the image.", labels, 3, lp, NULL));
    gst_video_frame_unmap(&f);
    cobra_session_free(session);
    int best = lp[1] > lp[0] ? 1 : 0;
    best = lp[2] > lp[best] ? 2 : best;
    double sum = exp(lp[0] - lp[best]) + exp(lp[1] - lp[best]) + exp(lp[2] - lp[best]);

    gst_buffer_unref(push_pull(&r, in));
    s = next_result(r.bus, 0);
    g_assert_nonnull(s);
    g_assert_cmpstr(gst_structure_get_string(s, "label"), ==, labels[best]);
    g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, labels[best]);
    g_assert_cmpstr(gst_structure_get_string(s, "stop-reason"), ==, "label");
    double confidence = 0;
    g_assert_true(gst_structure_get_double(s, "confidence", &confidence));
    g_assert_cmpfloat_with_epsilon(confidence, 1 / sum, 1e-6);
    const GValue *names = gst_structure_get_value(s, "labels"), *scores = gst_structure_get_value(s, "scores");
    g_assert_cmpuint(gst_value_array_get_size(names), ==, 3);
    for (guint i = 0; i < 3; i++) {
        g_assert_cmpstr(g_value_get_string(gst_value_array_get_value(names, i)), ==, labels[i]);
        g_assert_cmpfloat(g_value_get_double(gst_value_array_get_value(scores, i)), ==, lp[i]);
    }
    gst_structure_free(s);
    /* text mode carries the label */
    GstBuffer *text = gst_harness_pull(r.text);
    char *t = buffer_text(text);
    g_assert_cmpstr(t, ==, labels[best]);
    g_free(t);
    gst_buffer_unref(text);

    /* the same frame again: changes-only holds it back; a threshold above it too */
    g_object_set(vlm, "label-changes-only", TRUE, NULL);
    gst_buffer_unref(push_pull(&r, make_frame(&info, 9, GST_SECOND)));
    g_assert_null(next_result(r.bus, 0));
    g_object_set(vlm, "label-changes-only", FALSE, "label-threshold", MIN(1.0, 1 / sum + 0.01), NULL);
    gst_buffer_unref(push_pull(&r, make_frame(&info, 9, 2 * GST_SECOND)));
    g_assert_null(next_result(r.bus, 0));
    g_object_set(vlm, "label-threshold", 0.0, NULL);
    gst_buffer_unref(push_pull(&r, make_frame(&info, 9, 3 * GST_SECOND)));
    s = next_result(r.bus, 0);
    g_assert_nonnull(s);
    gst_structure_free(s);

    /* refused lists keep the labels set before */
    static const char *bad[] = {"yes,,no", "yes,no,yes", "\xff"};
    for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
        char *now;
        g_object_set(vlm, "labels", bad[i], NULL);
        expect_warning(r.bus, "labels: ");
        g_object_get(vlm, "labels", &now, NULL);
        g_assert_cmpstr(now, ==, "yes,no,maybe");
        g_free(now);
    }
    /* a label with a token the model has no embedding for: one warning for many frames */
    g_object_set(vlm, "labels", "yes,RWKV", NULL);
    for (guint i = 0; i < 3; i++)
        gst_buffer_unref(push_pull(&r, make_frame(&info, i, (4 + i) * GST_SECOND)));
    expect_warning(r.bus, "Could not score the labels");
    g_assert_null(gst_bus_pop_filtered(r.bus, GST_MESSAGE_WARNING));
    /* empty = generate again */
    g_object_set(vlm, "labels", "", NULL);
    while ((s = next_result(r.bus, 0)))
        gst_structure_free(s);
    gst_buffer_unref(push_pull(&r, make_frame(&info, 9, 8 * GST_SECOND)));
    s = next_result(r.bus, 0);
    g_assert_false(gst_structure_has_field(s, "label"));
    gst_structure_free(s);
    rig_clear(&r);
    cobra_model_free(model);
}

/* The engine's answer about the part of a frame inside a box, from a copy cut out in RGB. */
static char *crop_answer(CobraModel *model, const GstVideoInfo *info, GstBuffer *buf, int x, int y,
                         int w, int h)
{
    GstVideoFrame f;
    GstVideoInfo crop_info;
    g_assert_true(gst_video_frame_map(&f, info, buf, GST_MAP_READ));
    gst_video_info_set_format(&crop_info, GST_VIDEO_FORMAT_RGB, w, h);
    GstBuffer *crop = gst_buffer_new_allocate(NULL, GST_VIDEO_INFO_SIZE(&crop_info), NULL);
    GstVideoFrame cf;
    g_assert_true(gst_video_frame_map(&cf, &crop_info, crop, GST_MAP_WRITE));
    for (int row = 0; row < h; row++)
        memcpy((guint8 *)GST_VIDEO_FRAME_PLANE_DATA(&cf, 0) + row * GST_VIDEO_FRAME_PLANE_STRIDE(&cf, 0),
               (guint8 *)GST_VIDEO_FRAME_PLANE_DATA(&f, 0) + (y + row) * GST_VIDEO_FRAME_PLANE_STRIDE(&f, 0) + x * 3,
               (gsize)w * 3);
    gst_video_frame_unmap(&cf);
    gst_video_frame_unmap(&f);
    char *answer = engine_answer(model, &crop_info, crop, "Describe the image.", NULL);
    gst_buffer_unref(crop);
    return answer;
}

/* Region mode: one answer per region of interest, the engine's for that crop, attached to the
 * region's own meta as a "cobravlm" parameter; boxes outside the frame are clamped, empty ones
 * skipped and counted, types filtered; a frame without regions is not analysed. */
static void test_regions(void)
{
    CobraModel *model = test_load_model("f32");
    GstElement *vlm = make_vlm("async", FALSE, "roi-mode", TRUE, "roi-types", "car, person", NULL);
    GstVideoInfo info;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 96, 64);
    rig_init(&r, vlm, &info, FALSE);
    GstBuffer *in = make_frame(&info, 6, 0);
    struct { const char *type; int x, y, w, h; int cx, cy, cw, ch; } boxes[] = {
        {"car", 5, 7, 40, 30, 5, 7, 40, 30},
        {"person", 70, 40, 50, 50, 70, 40, 26, 24}, /* clamped to the frame */
        {"dog", 0, 0, 20, 20, 0, 0, 0, 0},          /* not a wanted type */
        {"car", 200, 10, 10, 10, 0, 0, 0, 0},       /* outside: skipped */
        {"car", 10, 10, 0, 5, 0, 0, 0, 0},          /* empty: skipped */
    };
    for (guint i = 0; i < G_N_ELEMENTS(boxes); i++) {
        GstVideoRegionOfInterestMeta *m = gst_buffer_add_video_region_of_interest_meta(
            in, boxes[i].type, boxes[i].x, boxes[i].y, boxes[i].w, boxes[i].h);
        m->id = 100 + i;
    }
    char *want[2] = {crop_answer(model, &info, in, 5, 7, 40, 30),
                     crop_answer(model, &info, in, 70, 40, 26, 24)};
    GstBuffer *out = push_pull(&r, in);
    for (guint i = 0; i < 2; i++) {
        GstStructure *s = next_result(r.bus, 0);
        g_assert_nonnull(s);
        g_assert_cmpuint(get_uint(s, "region-id"), ==, 100 + i);
        g_assert_cmpstr(gst_structure_get_string(s, "region-type"), ==, boxes[i].type);
        int v;
        g_assert_true(gst_structure_get_int(s, "region-x", &v) && v == boxes[i].cx);
        g_assert_true(gst_structure_get_int(s, "region-y", &v) && v == boxes[i].cy);
        g_assert_true(gst_structure_get_int(s, "region-width", &v) && v == boxes[i].cw);
        g_assert_true(gst_structure_get_int(s, "region-height", &v) && v == boxes[i].ch);
        g_assert_cmpstr(gst_structure_get_string(s, "text"), ==, want[i]);
        GstVideoRegionOfInterestMeta *m = gst_buffer_get_video_region_of_interest_meta_id(out, 100 + i);
        g_assert_nonnull(m);
        GstStructure *param = gst_video_region_of_interest_meta_get_param(m, "cobravlm");
        g_assert_nonnull(param);
        g_assert_cmpstr(gst_structure_get_string(param, "text"), ==, want[i]);
        gst_structure_free(s);
        g_free(want[i]);
    }
    g_assert_null(next_result(r.bus, 0));
    g_assert_null(gst_video_region_of_interest_meta_get_param(
        gst_buffer_get_video_region_of_interest_meta_id(out, 102), "cobravlm"));
    g_assert_cmpuint(get_counter(vlm, "rois-skipped"), ==, 2);
    gst_buffer_unref(out);
    /* no regions: nothing to analyse */
    gst_buffer_unref(push_pull(&r, make_frame(&info, 7, 2 * GST_SECOND)));
    g_assert_null(next_result(r.bus, 0));
    g_assert_cmpuint(get_counter(vlm, "frames-analyzed"), ==, 1);
    rig_clear(&r);

    /* subsampled formats: the crop's corner moves onto the chroma grid */
    vlm = make_vlm("async", FALSE, "roi-mode", TRUE, NULL);
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_I420, 64, 48);
    rig_init(&r, vlm, &info, FALSE);
    in = make_frame(&info, 8, 0);
    gst_buffer_add_video_region_of_interest_meta(in, "x", 7, 5, 30, 21)->id = 1;
    out = push_pull(&r, in);
    GstStructure *s = next_result(r.bus, 0);
    g_assert_nonnull(s);
    g_assert_nonnull(gst_video_region_of_interest_meta_get_param(
        gst_buffer_get_video_region_of_interest_meta_id(out, 1), "cobravlm"));
    gst_structure_free(s);
    gst_buffer_unref(out);
    rig_clear(&r);
    cobra_model_free(model);
}

/* Change gating: a still scene is analysed once while frames keep flowing (the meta keeps the
 * answer), a change is analysed at once, and skipped-as-unchanged frames are counted apart
 * from frames skipped while busy. */
static void test_change_gating(void)
{
    GstElement *vlm = make_vlm("async", FALSE, "interval", (guint64)0, "change-threshold", 2.0, NULL);
    GstVideoInfo info;
    Rig r;

    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_I420, 64, 48);
    rig_init(&r, vlm, &info, FALSE);
    for (guint i = 0; i < 20; i++) {
        GstBuffer *out = push_pull(&r, make_frame(&info, 3, i * 40 * GST_MSECOND));
        g_assert_nonnull(caption(out));
        g_assert_cmpint(is_fresh(out), ==, i == 0);
        gst_buffer_unref(out);
    }
    g_assert_cmpuint(get_counter(vlm, "frames-analyzed"), ==, 1);
    g_assert_cmpuint(get_counter(vlm, "frames-unchanged"), ==, 19);
    GstBuffer *out = push_pull(&r, make_frame(&info, 11, 20 * 40 * GST_MSECOND));
    g_assert_true(is_fresh(out));
    gst_buffer_unref(out);
    g_assert_cmpuint(get_counter(vlm, "frames-analyzed"), ==, 2);
    g_assert_cmpuint(get_counter(vlm, "frames-skipped"), ==, 0);
    rig_clear(&r);
}

/* Threads of this process named `name` (the scheduler's workers are "cobravlm"). */
static guint count_threads_named(const char *name)
{
    GDir *d = g_dir_open("/proc/self/task", 0, NULL);
    const char *tid;
    guint n = 0;

    while ((tid = g_dir_read_name(d))) {
        char *path = g_build_filename("/proc/self/task", tid, "comm", NULL), *comm = NULL;
        if (g_file_get_contents(path, &comm, NULL, NULL) && g_str_equal(g_strstrip(comm), name))
            n++;
        g_free(comm);
        g_free(path);
    }
    g_dir_close(d);
    return n;
}

typedef struct {
    volatile gint stop;
    guint most;
} ThreadWatch;

static gpointer watch_threads(gpointer data)
{
    ThreadWatch *w = data;
    while (!g_atomic_int_get(&w->stop)) {
        w->most = MAX(w->most, count_threads_named("cobravlm"));
        g_usleep(2000);
    }
    return NULL;
}

/* Four live streams on one model with every element asking for all cores: one scheduler runs
 * their jobs one at a time, so the workers and their OpenMP teams (whose threads inherit the
 * name "cobravlm") are no more threads than cores (there used to be one worker per element, each
 * with a team of all cores), and every stream gets its turn. */
static void test_scheduler(void)
{
    GString *desc = g_string_new("videotestsrc is-live=true num-buffers=45 pattern=ball ! "
                                 "video/x-raw,width=64,height=48,framerate=15/1 ! tee name=t ");
    for (int i = 0; i < 4; i++)
        g_string_append_printf(desc, "t. ! queue ! cobravlm name=v%d model-file=%s n-threads=0 "
                                     "interval=0 max-tokens=%d ! fakesink ",
                               i, model_file, MAX_TOKENS);
    GstElement *p = launch(desc->str);
    ThreadWatch w = {0, 0};
    GThread *watcher = g_thread_new("watch", watch_threads, &w);
    GHashTable *results = run_to_eos(p);
    g_atomic_int_set(&w.stop, 1);
    g_thread_join(watcher);

    guint fewest = G_MAXUINT, most = 0, cores = (guint)g_get_num_processors();
    for (int i = 0; i < 4; i++) {
        char name[4];
        g_snprintf(name, sizeof name, "v%d", i);
        GPtrArray *got = g_hash_table_lookup(results, name);
        guint n = got ? got->len : 0;
        fewest = MIN(fewest, n);
        most = MAX(most, n);
    }
    g_test_message("answers per stream %u..%u; at most %u model threads on %u cores", fewest, most,
                   w.most, cores);
    g_assert_cmpuint(w.most, <=, cores);
    g_assert_cmpuint(fewest, >, 0);
    g_assert_cmpuint(fewest * 3, >=, most);
    g_hash_table_unref(results);
    gst_object_unref(p);
    g_string_free(desc, TRUE);
}

/* A question longer than the model's context is cut to fit with one warning, not an error. */
static void test_long_prompt(void)
{
    GString *prompt = g_string_new(NULL);
    GstVideoInfo info;
    GstMessage *msg;
    Rig r;

    for (int i = 0; i < 3000; i++)
        g_string_append(prompt, "why ");
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, 32, 24);
    rig_init(&r, make_vlm("async", FALSE, "max-tokens", 4, "prompt", prompt->str, NULL), &info,
             FALSE);
    for (guint i = 0; i < 2; i++) {
        GstBuffer *out = push_pull(&r, make_frame(&info, i, i * GST_SECOND));
        g_assert_true(is_fresh(out));
        gst_buffer_unref(out);
    }
    msg = gst_bus_pop_filtered(r.bus, GST_MESSAGE_WARNING | GST_MESSAGE_ERROR);
    g_assert_nonnull(msg);
    g_assert_cmpint(GST_MESSAGE_TYPE(msg), ==, GST_MESSAGE_WARNING);
    gst_message_unref(msg);
    g_assert_null(gst_bus_pop_filtered(r.bus, GST_MESSAGE_WARNING | GST_MESSAGE_ERROR));
    rig_clear(&r);
    g_string_free(prompt, TRUE);
}

typedef struct {
    guint frames, with_text;
    guint gaps; /* frames without text after the first with text: a blinking caption */
} Overlaid;

/* Counts frames, and those that are not all black: the test pattern is black, so any other
 * pixel is drawn text. */
static GstFlowReturn count_overlaid(GstAppSink *sink, gpointer data)
{
    Overlaid *o = data;
    GstSample *sample = gst_app_sink_pull_sample(sink);
    GstMapInfo map;

    gboolean text = FALSE;

    gst_buffer_map(gst_sample_get_buffer(sample), &map, GST_MAP_READ);
    for (gsize i = 0; i < map.size && !text; i++)
        text = map.data[i] != 0;
    if (!text && o->with_text)
        o->gaps++;
    o->with_text += text;
    gst_buffer_unmap(gst_sample_get_buffer(sample), &map);
    o->frames++;
    gst_sample_unref(sample);
    return GST_FLOW_OK;
}

/* text_src straight into textoverlay (no queue, its default wait-text=true), async and not:
 * every frame comes out, and from the first caption on every frame shows one. */
static void test_textoverlay(gconstpointer data)
{
    gboolean async = GPOINTER_TO_INT(data);
    char *desc = g_strdup_printf(
        "videotestsrc num-buffers=30 pattern=black ! "
        "video/x-raw,format=RGB,width=160,height=120,framerate=10/1 ! "
        "cobravlm name=vlm model-file=%s n-threads=%d max-tokens=8 async=%d ! "
        "textoverlay name=ov ! "
        "appsink name=out emit-signals=true sync=%d  vlm.text_src ! ov.text_sink",
        model_file, N_THREADS, async, async);
    GstElement *p = launch(desc);
    GstElement *sink = gst_bin_get_by_name(GST_BIN(p), "out");
    Overlaid o = {0};

    g_signal_connect(sink, "new-sample", G_CALLBACK(count_overlaid), &o);
    GHashTable *results = run_to_eos(p);
    GPtrArray *answers = g_hash_table_lookup(results, "vlm");
    g_assert_nonnull(answers);
    guint64 first_latency = get_u64(answers->pdata[0], "latency");
    g_test_message("%u frames, %u with text, %u without after the first; first answer after %"
                   G_GUINT64_FORMAT " ns", o.frames, o.with_text, o.gaps, first_latency);
    g_assert_cmpuint(o.frames, ==, 30);
    g_assert_cmpuint(o.gaps, ==, 0);
    /* async, the first caption can only be drawn if it came before the 3 s of video ended
     * (under valgrind it may not) */
    if (!async || first_latency < 2 * GST_SECOND)
        g_assert_cmpuint(o.with_text, >, 0);
    g_hash_table_unref(results);
    gst_object_unref(sink);
    gst_object_unref(p);
    g_free(desc);
}

/* Deletes a temporary directory and the files in it. */
static void remove_dir(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *name;

    while (d && (name = g_dir_read_name(d))) {
        char *path = g_build_filename(dir, name, NULL);
        g_unlink(path);
        g_free(path);
    }
    if (d)
        g_dir_close(d);
    g_rmdir(dir);
}

/* Buffers that reach appsink `name` of a pipeline run to EOS (copied out as they come). */
typedef struct {
    GPtrArray *buffers;
} Collected;

static GstFlowReturn collect_sample(GstAppSink *sink, gpointer data)
{
    Collected *c = data;
    GstSample *sample = gst_app_sink_pull_sample(sink);
    g_ptr_array_add(c->buffers, gst_buffer_ref(gst_sample_get_buffer(sample)));
    gst_sample_unref(sample);
    return GST_FLOW_OK;
}

/* Demuxes `file` with `demux`: its video frames' count and times, and its subtitle buffers. */
static GPtrArray *demux_subtitles(const char *file, const char *demux, guint *n_video,
                                  GstClockTime *video_start, GstClockTime *video_end)
{
    char *desc = g_strdup_printf("filesrc location=%s ! %s name=d "
                                 "d.video_0 ! appsink name=v sync=false async=false emit-signals=true "
                                 "d.subtitle_0 ! appsink name=t sync=false async=false emit-signals=true",
                                 file, demux);
    GstElement *p = launch(desc);
    GstElement *v = gst_bin_get_by_name(GST_BIN(p), "v"), *t = gst_bin_get_by_name(GST_BIN(p), "t");
    Collected video = {g_ptr_array_new_with_free_func((GDestroyNotify)gst_buffer_unref)};
    Collected text = {g_ptr_array_new_with_free_func((GDestroyNotify)gst_buffer_unref)};

    g_signal_connect(v, "new-sample", G_CALLBACK(collect_sample), &video);
    g_signal_connect(t, "new-sample", G_CALLBACK(collect_sample), &text);
    g_hash_table_unref(run_to_eos(p));
    *n_video = video.buffers->len;
    *video_start = G_MAXUINT64;
    *video_end = 0;
    for (guint i = 0; i < video.buffers->len; i++) {
        GstBuffer *b = video.buffers->pdata[i];
        *video_start = MIN(*video_start, GST_BUFFER_PTS(b));
        *video_end = MAX(*video_end, GST_BUFFER_PTS(b) + GST_BUFFER_DURATION(b));
    }
    g_ptr_array_unref(video.buffers);
    gst_object_unref(v);
    gst_object_unref(t);
    gst_object_unref(p);
    g_free(desc);
    return text.buffers;
}

typedef struct {
    const char *mux, *demux;
    gboolean live, async;
} MuxCase;

/* The captions muxed as a subtitle track beside H.264 video (issue: text_src used to hang the
 * muxer with async=true): the pipeline reaches EOS, the file demuxes to every video frame and to
 * subtitles whose times only go forward and cover the video to its end without a hole and
 * without a shift, and carry every caption the element announced. (x264enc without B-frames:
 * their reordering delay would start an mp4's video track later than its text track; its
 * look-ahead, which holds seconds of video while text flows, stays.) */
static void test_mux(gconstpointer data)
{
    const MuxCase *c = data;
    char *dir = g_dir_make_tmp("cobravlm-mux-XXXXXX", NULL);
    char *clip = g_build_filename(dir, "clip.mp4", NULL);
    char *out = g_build_filename(dir, "out", NULL);
    const guint n = 45, fps = 15;
    char *src, *desc;

    if (c->live) {
        src = g_strdup_printf("videotestsrc is-live=true num-buffers=%u pattern=ball ! "
                              "video/x-raw,width=160,height=120,framerate=%u/1", n, fps);
    } else {
        desc = g_strdup_printf("videotestsrc num-buffers=%u pattern=ball ! "
                               "video/x-raw,width=160,height=120,framerate=%u/1 ! x264enc ! "
                               "mp4mux ! filesink location=%s", n, fps, clip);
        GstElement *p = launch(desc);
        g_hash_table_unref(run_to_eos(p));
        gst_object_unref(p);
        g_free(desc);
        src = g_strdup_printf("filesrc location=%s ! decodebin ! videoconvert", clip);
    }
    desc = g_strdup_printf("%s ! cobravlm name=vlm model-file=%s n-threads=%d max-tokens=8 "
                           "interval=%" G_GUINT64_FORMAT " async=%d ! videoconvert ! x264enc bframes=0 ! "
                           "h264parse ! queue ! %s name=mux ! filesink location=%s "
                           "vlm.text_src ! queue ! mux.subtitle_0",
                           src, model_file, N_THREADS, (guint64)(GST_SECOND / 2), c->async,
                           c->mux, out);
    GstElement *p = launch(desc);
    GHashTable *results = run_to_eos(p);
    GPtrArray *answers = g_hash_table_lookup(results, "vlm");
    guint n_video = 0;
    GstClockTime video_start, video_end;
    GPtrArray *subs = demux_subtitles(out, c->demux, &n_video, &video_start, &video_end);

    g_test_message("%s, %s, async=%d: %u answers, %u video frames, %u subtitle buffers; video %"
                   GST_TIME_FORMAT " - %" GST_TIME_FORMAT, c->mux, c->live ? "live" : "file",
                   c->async, answers ? answers->len : 0, n_video, subs->len,
                   GST_TIME_ARGS(video_start), GST_TIME_ARGS(video_end));
    g_assert_nonnull(answers);
    g_assert_cmpuint(n_video, ==, n);
    g_assert_cmpuint(subs->len, >, 0);
    GstClockTime frame = GST_SECOND / fps, end = GST_CLOCK_TIME_NONE;
    /* from the first frame (empty cues before the first answer: matroskamux keeps them, mp4mux
     * starts its text track at the first cue with text, at its right time) */
    g_test_message("subtitles from %" GST_TIME_FORMAT, GST_TIME_ARGS(GST_BUFFER_PTS(subs->pdata[0])));
    g_assert_cmpuint(GST_BUFFER_PTS(subs->pdata[0]) + frame / 2, >=, video_start);
    if (g_str_equal(c->mux, "matroskamux"))
        g_assert_cmpuint(GST_BUFFER_PTS(subs->pdata[0]), <=, video_start + frame / 2);
    for (guint i = 0; i < subs->len; i++) {
        GstBuffer *b = subs->pdata[i];
        g_assert_true(GST_BUFFER_PTS_IS_VALID(b));
        if (GST_CLOCK_TIME_IS_VALID(end)) {
            g_assert_cmpuint(GST_BUFFER_PTS(b), >=, end - frame / 2); /* forward only */
            g_assert_cmpuint(GST_BUFFER_PTS(b), <=, end + frame / 2); /* no hole */
        }
        end = GST_BUFFER_PTS(b) + GST_BUFFER_DURATION(b);
    }
    /* to the end of the video, not shifted (within mp4's millisecond rounding) */
    g_test_message("subtitles to %" GST_TIME_FORMAT, GST_TIME_ARGS(end));
    g_assert_cmpuint(end + frame / 2, >=, video_end);
    g_assert_cmpuint(end, <=, video_end + frame / 2);
    for (guint k = 0; k < answers->len; k++) {
        const char *want = gst_structure_get_string(answers->pdata[k], "text");
        gboolean found = FALSE;
        for (guint i = 0; i < subs->len && !found; i++) {
            char *got = buffer_text(subs->pdata[i]);
            found = g_str_equal(g_strstrip(got), want);
            g_free(got);
        }
        /* (async: the answer in progress at EOS has no frame left to be shown on) */
        if (!found && !(c->async && k == answers->len - 1))
            g_test_fail_printf("answer %u (\"%s\") is not in the subtitles", k, want);
    }
    g_ptr_array_unref(subs);
    g_hash_table_unref(results);
    gst_object_unref(p);
    remove_dir(dir);
    g_free(src);
    g_free(desc);
    g_free(clip);
    g_free(out);
    g_free(dir);
}

/* The usual way to update a model, `cp new.gguf model.gguf` (truncate, then write), while
 * pipelines use it: they go on answering (the weights were read into memory); the next start
 * loads the new file. It used to kill the process with SIGBUS. */
static void test_model_rewritten(void)
{
    char *dir = g_dir_make_tmp("cobravlm-cp-XXXXXX", NULL);
    char *path = g_build_filename(dir, "model.gguf", NULL);
    char *other = test_model_path("q8_0"), *contents, *desc;
    gsize len;

    g_assert_true(g_file_get_contents(model_file, &contents, &len, NULL));
    g_assert_true(g_file_set_contents(path, contents, (gssize)len, NULL));
    g_free(contents);
    desc = g_strdup_printf("videotestsrc is-live=true pattern=ball ! video/x-raw,width=64,height=48,"
                           "framerate=30/1 ! cobravlm name=vlm model-file=%s n-threads=%d "
                           "interval=0 max-tokens=%d ! fakesink", path, N_THREADS, MAX_TOKENS);
    GstElement *p = launch(desc);
    GstBus *bus = gst_element_get_bus(p);
    g_assert_cmpint(gst_element_set_state(p, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
    GstStructure *s = next_result(bus, 30 * GST_SECOND);
    g_assert_nonnull(s);
    gst_structure_free(s);
    /* cp: O_TRUNC, then the new bytes in pieces */
    g_assert_true(g_file_get_contents(other, &contents, &len, NULL));
    int fd = open(path, O_WRONLY | O_TRUNC);
    g_assert_cmpint(fd, >=, 0);
    for (gsize off = 0; off < len; off += 65536) {
        g_assert_cmpint(write(fd, contents + off, MIN(65536, len - off)), >, 0);
        g_usleep(1000);
    }
    close(fd);
    g_free(contents);
    for (guint i = 0; i < 5; i++) {
        s = next_result(bus, 30 * GST_SECOND);
        g_assert_nonnull(s);
        gst_structure_free(s);
    }
    GstMessage *err = gst_bus_pop_filtered(bus, GST_MESSAGE_ERROR);
    g_assert_null(err);
    gst_element_set_state(p, GST_STATE_NULL);
    /* the next start reads the new file */
    g_assert_cmpint(gst_element_set_state(p, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
    s = next_result(bus, 30 * GST_SECOND);
    g_assert_nonnull(s);
    gst_structure_free(s);
    gst_element_set_state(p, GST_STATE_NULL);
    gst_object_unref(bus);
    gst_object_unref(p);
    remove_dir(dir);
    g_free(desc);
    g_free(other);
    g_free(path);
    g_free(dir);
}

/* A bad model file fails NULL -> READY with an element error naming the file. */
static void expect_load_error(const char *path)
{
    GstElement *vlm = gst_element_factory_make("cobravlm", NULL);
    GstBus *bus = gst_bus_new();
    GstMessage *msg;
    GError *err = NULL;
    char *debug = NULL;

    gst_object_ref_sink(vlm);
    gst_element_set_bus(vlm, bus);
    if (path)
        g_object_set(vlm, "model-file", path, NULL);
    g_assert_cmpint(gst_element_set_state(vlm, GST_STATE_READY), ==, GST_STATE_CHANGE_FAILURE);
    msg = gst_bus_pop_filtered(bus, GST_MESSAGE_ERROR);
    g_assert_nonnull(msg);
    g_assert_true(GST_MESSAGE_SRC(msg) == GST_OBJECT(vlm));
    gst_message_parse_error(msg, &err, &debug);
    g_test_message("%s: %s (%s)", path ? path : "(none)", err->message, debug);
    g_assert_true(strstr(err->message, path ? path : "model") != NULL);
    g_error_free(err);
    g_free(debug);
    gst_message_unref(msg);
    gst_element_set_state(vlm, GST_STATE_NULL);
    gst_element_set_bus(vlm, NULL);
    gst_object_unref(bus);
    gst_object_unref(vlm);
}

static void test_bad_models(void)
{
    char *dir = g_dir_make_tmp("cobravlm-XXXXXX", NULL);
    char *missing = g_build_filename(dir, "missing.gguf", NULL);
    char *truncated = g_build_filename(dir, "truncated.gguf", NULL);
    char *empty = g_build_filename(dir, "empty.gguf", NULL);
    char *fifo = g_build_filename(dir, "fifo.gguf", NULL);
    char *contents;
    gsize len;

    g_assert_true(g_file_get_contents(model_file, &contents, &len, NULL));
    g_assert_true(g_file_set_contents(truncated, contents, (gssize)len / 2, NULL));
    g_assert_true(g_file_set_contents(empty, "", 0, NULL));
    g_assert_cmpint(mkfifo(fifo, 0600), ==, 0);
    expect_load_error(fifo); /* refused at once: nothing writes to it */
    expect_load_error(dir);
    expect_load_error(missing);
    expect_load_error(truncated);
    expect_load_error(empty);
    expect_load_error(NULL);

    remove_dir(dir);
    g_free(contents);
    g_free(missing);
    g_free(truncated);
    g_free(empty);
    g_free(fifo);
    g_free(dir);
}

/* Each pipelines/ script runs as-is on the test model and prints or writes captions. */
static void test_pipeline_script(gconstpointer data)
{
    const char *script = data;
    char *root = g_path_get_dirname(g_getenv("COBRA_TEST_DATA"));
    char *src = g_path_get_dirname(root);
    char *path = g_build_filename(src, "pipelines", script, NULL);
    char *dir = g_dir_make_tmp("cobravlm-pipe-XXXXXX", NULL);
    char *argv[] = {path, NULL};
    char **env = g_get_environ();
    char *out = NULL, *err = NULL;
    int status;

    env = g_environ_setenv(env, "COBRA_MODEL", model_file, TRUE);
    env = g_environ_setenv(env, "OUT_DIR", dir, TRUE);
    env = g_environ_setenv(env, "COBRA_THREADS", G_STRINGIFY(N_THREADS), TRUE);
    g_assert_true(g_spawn_sync(dir, argv, env, G_SPAWN_DEFAULT, NULL, NULL, &out, &err, &status,
                               NULL));
    g_test_message("%s stdout:\n%s\nstderr:\n%s", script, out, err);
    g_assert_true(g_spawn_check_wait_status(status, NULL));
    /* JSON lines (captions.py's, or text_src's), or the .srt file */
    g_assert_true(g_str_has_prefix(out, "{\"element\": ") || g_str_has_prefix(out, "{\"element\":\"") ||
                  strstr(out, " --> ") != NULL);
    remove_dir(dir);

    g_free(root);
    g_free(src);
    g_free(path);
    g_free(dir);
    g_free(out);
    g_free(err);
    g_strfreev(env);
}

int main(int argc, char **argv)
{
    gst_init(&argc, &argv);
    g_test_init(&argc, &argv, NULL);
    model_file = test_model_path("f32");

    g_test_add_func("/element/golden", test_golden);
    g_test_add_func("/element/engine-frames-and-caps", test_engine_frames_and_caps);
    g_test_add_func("/element/properties", test_properties);
    g_test_add_func("/element/sampling", test_sampling);
    g_test_add_func("/element/interval", test_interval);
    g_test_add_func("/element/async-skip-and-eos", test_async_skip_and_eos);
    g_test_add_func("/element/three-outputs", test_three_outputs);
    g_test_add_func("/element/prompt-and-ask", test_prompt_and_ask);
    g_test_add_func("/element/flush", test_flush);
    g_test_add_func("/element/seek-sync", test_seek_sync);
    g_test_add_func("/element/state-cycles", test_state_cycles);
    g_test_add_func("/element/concurrent-controls", test_concurrent_controls);
    g_test_add_func("/element/caps-churn", test_caps_churn);
    g_test_add_func("/element/long-run", test_long_run);
    g_test_add_func("/element/shared-model", test_shared_model);
    g_test_add_func("/element/scheduler", test_scheduler);
    g_test_add_func("/element/bad-models", test_bad_models);
    g_test_add_func("/element/model-rewritten", test_model_rewritten);
    g_test_add_func("/element/long-prompt", test_long_prompt);
    g_test_add_func("/element/ask-outcomes", test_ask_outcomes);
    g_test_add_func("/element/series-and-origin", test_series_and_origin);
    g_test_add_func("/element/sync-latency", test_sync_latency);
    g_test_add_func("/element/refusals", test_refusals);
    g_test_add_func("/element/stalled-text", test_stalled_text);
    g_test_add_func("/element/labels", test_labels);
    g_test_add_func("/element/regions", test_regions);
    g_test_add_func("/element/change-gating", test_change_gating);
    g_test_add_data_func("/element/textoverlay/sync", GINT_TO_POINTER(FALSE), test_textoverlay);
    g_test_add_data_func("/element/textoverlay/async", GINT_TO_POINTER(TRUE), test_textoverlay);
    static const MuxCase mux_cases[] = {
        {"matroskamux", "matroskademux", TRUE, TRUE}, {"matroskamux", "matroskademux", TRUE, FALSE},
        {"matroskamux", "matroskademux", FALSE, TRUE}, {"mp4mux", "qtdemux", FALSE, TRUE},
        {"mp4mux", "qtdemux", FALSE, FALSE}, {"mp4mux", "qtdemux", TRUE, TRUE},
    };
    for (guint i = 0; i < G_N_ELEMENTS(mux_cases); i++) {
        char *name = g_strdup_printf("/element/mux/%s/%s/%s", mux_cases[i].mux,
                                     mux_cases[i].live ? "live" : "file",
                                     mux_cases[i].async ? "async" : "sync");
        g_test_add_data_func(name, &mux_cases[i], test_mux);
        g_free(name);
    }
    static const char *scripts[] = {"camera-captions.sh", "file-to-srt.sh", "network-stream.sh",
                                    "captions-json.sh", "multi-stream.sh", "alarm.sh",
                                    "regions.py"};
    for (guint i = 0; i < G_N_ELEMENTS(scripts); i++) {
        char *name = g_strconcat("/element/pipelines/", scripts[i], NULL);
        g_test_add_data_func(name, scripts[i], test_pipeline_script);
        g_free(name);
    }
    int ret = g_test_run();
    g_free(model_file);
    return ret;
}
