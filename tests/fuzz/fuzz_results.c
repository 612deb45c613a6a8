/* fuzz_results.c - the element's two new input surfaces that need no model: region-of-interest
 * boxes from upstream (frame_regions clamps them, frame_crop points into the frame, the engine
 * converts the crop) and results as JSON (result_to_json over strings of any bytes and any
 * doubles).
 *
 * Input: a 6-byte header, then boxes, then the rest as JSON material:
 *   0     format (one of FORMATS)
 *   1, 2  width and height: 1 + byte % 64
 *   3     roi-margin: byte / 128 (0..2, past the property's 1 on purpose)
 *   4     max-rois: 1 + byte % 8
 *   5     boxes: byte % 8, each 17 bytes: x, y, w, h as 32-bit little-endian (any value: the meta
 *         holds unsigned ints), and a type byte (even = wanted "car", odd = "dog")
 * Frames are one exact allocation each, so a crop that reaches past the frame trips
 * AddressSanitizer when the engine reads it; the JSON must be valid UTF-8 with no raw control
 * character and parse as one object. */
#include <string.h>

#include <gst/gst.h>
#include <gst/video/video.h>

#include "fuzz.h"
#include "gstcobravlm-private.h"
#include "image.h"

#define HEADER 6
#define BOX_BYTES 17

static const struct {
    GstVideoFormat video;
    CobraPixelFormat cobra;
} FORMATS[] = {
    {GST_VIDEO_FORMAT_I420, COBRA_FORMAT_I420}, {GST_VIDEO_FORMAT_YV12, COBRA_FORMAT_YV12},
    {GST_VIDEO_FORMAT_NV12, COBRA_FORMAT_NV12}, {GST_VIDEO_FORMAT_NV21, COBRA_FORMAT_NV21},
    {GST_VIDEO_FORMAT_YUY2, COBRA_FORMAT_YUY2}, {GST_VIDEO_FORMAT_UYVY, COBRA_FORMAT_UYVY},
    {GST_VIDEO_FORMAT_GRAY8, COBRA_FORMAT_GRAY8}, {GST_VIDEO_FORMAT_RGB, COBRA_FORMAT_RGB},
    {GST_VIDEO_FORMAT_BGRx, COBRA_FORMAT_BGRx}, {GST_VIDEO_FORMAT_ARGB, COBRA_FORMAT_ARGB},
};

static guint32 le32(const uint8_t *p)
{
    return (guint32)p[0] | (guint32)p[1] << 8 | (guint32)p[2] << 16 | (guint32)p[3] << 24;
}

static void regions(const uint8_t *data, size_t size)
{
    guint f = data[0] % G_N_ELEMENTS(FORMATS), n_boxes = data[5] % 8, skipped;
    gint w = 1 + data[1] % 64, h = 1 + data[2] % 64;
    gchar *types[] = {"car", NULL};
    GstVideoInfo info;
    GstVideoFrame frame;
    CobraImage full = {0};

    gst_video_info_set_format(&info, FORMATS[f].video, (guint)w, (guint)h);
    GstBuffer *buf = gst_buffer_new_wrapped(g_malloc0(info.size), info.size);
    for (guint i = 0; i < n_boxes && HEADER + (i + 1) * BOX_BYTES <= size; i++) {
        const uint8_t *b = data + HEADER + i * BOX_BYTES;
        gst_buffer_add_video_region_of_interest_meta(buf, b[16] % 2 ? "dog" : "car", le32(b),
                                                     le32(b + 4), le32(b + 8), le32(b + 12))->id = (gint)i;
    }
    GArray *found = frame_regions(buf, &info, types, 1 + data[4] % 8, data[3] / 128.0, &skipped);
    if (!gst_video_frame_map(&frame, &info, buf, GST_MAP_READ))
        abort();
    full.format = FORMATS[f].cobra;
    full.width = w;
    full.height = h;
    for (guint p = 0; p < GST_VIDEO_FRAME_N_PLANES(&frame); p++) {
        full.planes[p] = GST_VIDEO_FRAME_PLANE_DATA(&frame, p);
        full.strides[p] = GST_VIDEO_FRAME_PLANE_STRIDE(&frame, p);
    }
    for (guint i = 0; i < found->len; i++) {
        const Region *r = &g_array_index(found, Region, i);
        CobraImage crop;
        if (r->x < 0 || r->y < 0 || r->w < 1 || r->h < 1 || r->x + r->w > w || r->y + r->h > h)
            abort(); /* a region must lie inside the frame */
        frame_crop(&frame, &full, r, &crop);
        if (!image_validate(&crop, NULL))
            abort();
        uint8_t *rgb = g_malloc((size_t)crop.width * crop.height * 3);
        image_to_rgb(&crop, rgb); /* reads every pixel of the crop */
        g_free(rgb);
    }
    if (found->len + skipped > n_boxes)
        abort();
    gst_video_frame_unmap(&frame);
    g_array_unref(found);
    gst_buffer_unref(buf);
}

/* ---- a strict JSON reader for one object: enough to say the output parses ---- */

static const char *json_value(const char *p);

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\r')
        p++;
    return p;
}

static const char *json_string_end(const char *p)
{
    if (*p++ != '"')
        return NULL;
    for (; *p != '"'; p++) {
        if ((unsigned char)*p < 0x20)
            return NULL;
        if (*p == '\\') {
            p++;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!g_ascii_isxdigit(p[i]))
                        return NULL;
                p += 4;
            } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
                return NULL;
            }
        }
    }
    return p + 1;
}

static const char *json_number_end(const char *p)
{
    char *end;
    g_ascii_strtod(p, &end);
    return end == p || *p == '+' || *p == '.' ? NULL : end;
}

static const char *json_list(const char *p, char close, gboolean object)
{
    p = skip_ws(p + 1);
    if (*p == close)
        return p + 1;
    for (;;) {
        if (object) {
            if (!(p = json_string_end(skip_ws(p))) || *(p = skip_ws(p)) != ':')
                return NULL;
            p++;
        }
        if (!(p = json_value(p)))
            return NULL;
        p = skip_ws(p);
        if (*p == close)
            return p + 1;
        if (*p++ != ',')
            return NULL;
    }
}

static const char *json_value(const char *p)
{
    p = skip_ws(p);
    if (*p == '{')
        return json_list(p, '}', TRUE);
    if (*p == '[')
        return json_list(p, ']', FALSE);
    if (*p == '"')
        return json_string_end(p);
    for (const char *word = "true\0false\0null\0"; *word; word += strlen(word) + 1)
        if (g_str_has_prefix(p, word))
            return p + strlen(word);
    return json_number_end(p);
}

static void json(const uint8_t *data, size_t size)
{
    size_t half = size / 2;
    gchar *a = g_strndup((const gchar *)data, half), *b = g_strndup((const gchar *)data + half,
                                                                      size - half);
    gdouble x = 0;
    GValue arr = G_VALUE_INIT, v = G_VALUE_INIT;

    memcpy(&x, data, MIN(size, sizeof x));
    GstStructure *s = gst_structure_new("cobravlm", "text", G_TYPE_STRING, a, "prompt",
                                        G_TYPE_STRING, b, "confidence", G_TYPE_DOUBLE, x,
                                        "n-tokens", G_TYPE_UINT, (guint)size, NULL);
    gst_value_array_init(&arr, 2);
    g_value_init(&v, G_TYPE_STRING);
    g_value_set_string(&v, b);
    gst_value_array_append_and_take_value(&arr, &v);
    g_value_init(&v, G_TYPE_DOUBLE);
    g_value_set_double(&v, -x);
    gst_value_array_append_and_take_value(&arr, &v);
    gst_structure_take_value(s, "labels", &arr);

    gchar *out = result_to_json(s);
    size_t len = strlen(out);
    if (!g_utf8_validate(out, -1, NULL) || len < 3 || out[len - 1] != '\n')
        abort();
    out[len - 1] = '\0';
    const char *end = out[0] == '{' ? json_value(out) : NULL;
    if (!end || *skip_ws(end))
        abort();
    g_free(out);
    gst_structure_free(s);
    g_free(a);
    g_free(b);
}

/* LeakSanitizer (libFuzzer runs, the ASan replay): GLib allocates its first quark array in its
 * library constructor and leaks it on purpose when GStreamer's init outgrows it (lock-free readers
 * may still hold it). Nothing of ours runs in a library constructor. The suppression needs whole
 * allocation stacks: GLib has no frame pointers, so the fast unwinder stops inside g_malloc. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:_dl_init\n";
}

const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static gboolean ready;
    if (!ready) {
        /* core types only: no plugin is needed, and loading them all (as a registry scan in
         * this process does) drags in fontconfig and its leaks */
        g_setenv("GST_PLUGIN_SYSTEM_PATH_1_0", "", TRUE);
        g_setenv("GST_PLUGIN_PATH_1_0", "", TRUE);
        g_setenv("GST_REGISTRY_1_0", "/nonexistent/cobra-fuzz-registry.bin", TRUE);
        gst_init(NULL, NULL);
        ready = TRUE;
    }
    if (size >= HEADER)
        regions(data, size);
    json(data, size);
    return 0;
}
