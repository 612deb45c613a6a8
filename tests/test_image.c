/* test_image.c - pixel formats, Pillow's BICUBIC resize and normalisation against the reference
 * fixtures, and YUV input against GStreamer's own videoconvert. */
#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <gst/video/video.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "image.h"
#include "support.h"

/* A packed RGB picture owned by the test. */
typedef struct {
    int width, height;
    uint8_t *rgb;
} Rgb;

static void rgb_free(Rgb *p)
{
    g_free(p->rgb);
    p->rgb = NULL;
}

/* Copy a mapped RGB frame into a packed array (GStreamer pads rows to 4 bytes). */
static Rgb rgb_from_frame(GstVideoFrame *frame)
{
    int w = GST_VIDEO_FRAME_WIDTH(frame), h = GST_VIDEO_FRAME_HEIGHT(frame);
    Rgb p = { w, h, g_malloc((size_t)w * h * 3) };
    const uint8_t *s = GST_VIDEO_FRAME_PLANE_DATA(frame, 0);
    int stride = GST_VIDEO_FRAME_PLANE_STRIDE(frame, 0);
    for (int y = 0; y < p.height; y++)
        memcpy(p.rgb + (size_t)y * p.width * 3, s + (size_t)y * stride, (size_t)p.width * 3);
    return p;
}

static Rgb rgb_from_sample(GstSample *sample)
{
    GstVideoInfo info;
    GstVideoFrame frame;
    g_assert_true(gst_video_info_from_caps(&info, gst_sample_get_caps(sample)));
    g_assert_cmpint(GST_VIDEO_INFO_FORMAT(&info), ==, GST_VIDEO_FORMAT_RGB);
    g_assert_true(gst_video_frame_map(&frame, &info, gst_sample_get_buffer(sample), GST_MAP_READ));
    Rgb p = rgb_from_frame(&frame);
    gst_video_frame_unmap(&frame);
    return p;
}

/* filesrc ! pngdec ! videoconvert ! RGB ! appsink */
static Rgb decode_png(const char *rel)
{
    char *path = test_data_path(rel);
    char *desc = g_strdup_printf("filesrc location=\"%s\" ! pngdec ! videoconvert ! "
                                 "video/x-raw,format=RGB ! appsink name=sink",
                                 path);
    GError *err = NULL;
    GstElement *pipeline = gst_parse_launch(desc, &err);
    g_assert_no_error(err);
    GstElement *sink = gst_bin_get_by_name(GST_BIN(pipeline), "sink");
    gst_element_set_state(pipeline, GST_STATE_PLAYING);
    GstSample *sample = gst_app_sink_pull_sample(GST_APP_SINK(sink));
    if (!sample)
        g_error("could not decode %s", path);
    Rgb p = rgb_from_sample(sample);
    gst_sample_unref(sample);
    gst_element_set_state(pipeline, GST_STATE_NULL);
    gst_object_unref(sink);
    gst_object_unref(pipeline);
    g_free(desc);
    g_free(path);
    return p;
}

static Rgb load_rgb_npy(const char *rel)
{
    Npy a;
    test_load_npy(rel, &a);
    g_assert_cmpstr(a.dtype, ==, "u1");
    g_assert_cmpint(a.n_dims, ==, 3);
    g_assert_cmpint(a.shape[2], ==, 3);
    Rgb p = { (int)a.shape[1], (int)a.shape[0], a.data };
    return p;
}

/* Identical pixels, or a failure naming the first differing one. */
static void assert_same_rgb(const char *what, const uint8_t *got, const uint8_t *ref, int w, int h)
{
    for (size_t i = 0; i < (size_t)w * h * 3; i++)
        if (got[i] != ref[i]) {
            size_t px = i / 3;
            g_test_fail_printf("%s: pixel (%zu, %zu) channel %zu is %d, expected %d (%d x %d)", what,
                               px % w, px / w, i % 3, got[i], ref[i], w, h);
            return;
        }
}

static uint8_t *resize(const Rgb *src, int dw, int dh)
{
    uint8_t *dst = g_malloc((size_t)dw * dh * 3), *tmp = g_malloc((size_t)src->height * dw * 3);
    resize_bicubic_rgb(src->rgb, src->width, src->height, dst, dw, dh, tmp);
    g_free(tmp);
    return dst;
}

/* ---- resize ---------------------------------------------------------------------------------- */

static void test_resize_cases(void)
{
    char *json = test_read_text("resize/cases.json");
    int n_cases = 0;
    /* Each case object starts at its "source" key. */
    for (const char *p = strstr(json, "\"source\""); p; p = strstr(p + 1, "\"source\"")) {
        char *source = test_json_string(p, "source"), *expected = test_json_string(p, "expected");
        const char *t = strstr(p, "\"target\"");
        int tw = 0, th = 0;
        g_assert_nonnull(t);
        t = strchr(t, '[');
        g_assert_true(t && sscanf(t, "[ %d , %d ]", &tw, &th) == 2);

        char *src_rel = g_build_filename("resize", source, NULL);
        char *exp_rel = g_build_filename("resize", expected, NULL);
        Rgb src = decode_png(src_rel), ref = load_rgb_npy(exp_rel);
        /* target is Pillow's (width, height) */
        g_assert_cmpint(ref.width, ==, tw);
        g_assert_cmpint(ref.height, ==, th);
        uint8_t *got = resize(&src, tw, th);
        char *what = g_strdup_printf("%s -> %d x %d", source, tw, th);
        assert_same_rgb(what, got, ref.rgb, tw, th);
        g_test_message("%s: identical", what);

        g_free(what);
        g_free(got);
        rgb_free(&src);
        rgb_free(&ref);
        g_free(src_rel);
        g_free(exp_rel);
        g_free(source);
        g_free(expected);
        n_cases++;
    }
    g_assert_cmpint(n_cases, >, 0);
    g_free(json);
}

static void test_resize_tiny_golden(void)
{
    Rgb src = load_rgb_npy("tiny/golden/image_rgb.npy");
    Rgb ref = load_rgb_npy("tiny/golden/resized_rgb.npy");
    /* the PNG the reference started from decodes to the same pixels */
    Rgb png = decode_png("tiny/golden/image.png");
    g_assert_cmpint(png.width, ==, src.width);
    g_assert_cmpint(png.height, ==, src.height);
    assert_same_rgb("image.png vs image_rgb.npy", png.rgb, src.rgb, src.width, src.height);
    uint8_t *got = resize(&src, ref.width, ref.height);
    assert_same_rgb("tiny resized_rgb", got, ref.rgb, ref.width, ref.height);
    g_free(got);
    rgb_free(&src);
    rgb_free(&ref);
    rgb_free(&png);
}

/* Sizes that keep one direction (Pillow then skips that pass), identity, 1-pixel images and
 * extreme ratios: checked against a float64 evaluation of the same separable filter, which a
 * fixed-point port may differ from by one level after each of the two passes. */
static double ref_bicubic(double x)
{
    x = fabs(x);
    if (x < 1)
        return (1.5 * x - 2.5) * x * x + 1;
    if (x < 2)
        return ((-0.5 * x + 2.5) * x - 4) * x + 2;
    return 0;
}

static void ref_resample_1d(const double *in, int n_in, double *out, int n_out, int stride)
{
    double scale = (double)n_in / n_out, fs = MAX(scale, 1.0);
    for (int o = 0; o < n_out; o++) {
        double center = (o + 0.5) * scale, sum = 0, wsum = 0;
        for (int i = 0; i < n_in; i++) {
            double w = ref_bicubic((i + 0.5 - center) / fs);
            sum += w * in[(size_t)i * stride];
            wsum += w;
        }
        out[(size_t)o * stride] = sum / wsum;
    }
}

static void check_resize_against_float(int sw, int sh, int dw, int dh)
{
    Rgb src = { .width = sw, .height = sh, .rgb = g_malloc((size_t)sw * sh * 3) };
    for (size_t i = 0; i < (size_t)sw * sh * 3; i++) /* smooth content, away from clipping */
        src.rgb[i] = (uint8_t)(128 + 60 * sin(0.05 * (i / 3 % sw) + 0.07 * (i / 3 / sw) + i % 3));
    uint8_t *got = resize(&src, dw, dh);
    double *a = g_new(double, (size_t)sw * sh), *b = g_new(double, (size_t)dw * sh),
           *c = g_new(double, (size_t)dw * dh);
    int worst = 0;
    for (int ch = 0; ch < 3; ch++) {
        for (size_t i = 0; i < (size_t)sw * sh; i++)
            a[i] = src.rgb[i * 3 + ch];
        for (int y = 0; y < sh; y++) {
            if (dw == sw)
                memcpy(b + (size_t)y * dw, a + (size_t)y * sw, sizeof(double) * sw);
            else
                ref_resample_1d(a + (size_t)y * sw, sw, b + (size_t)y * dw, dw, 1);
        }
        for (int x = 0; x < dw; x++) {
            if (dh == sh)
                for (int y = 0; y < dh; y++)
                    c[(size_t)y * dw + x] = b[(size_t)y * dw + x];
            else
                ref_resample_1d(b + x, sh, c + x, dh, dw);
        }
        for (size_t i = 0; i < (size_t)dw * dh; i++)
            worst = MAX(worst, abs(got[i * 3 + ch] - (int)lround(CLAMP(c[i], 0, 255))));
    }
    g_test_message("%d x %d -> %d x %d: at most %d levels from float64", sw, sh, dw, dh, worst);
    if (worst > 2)
        g_test_fail_printf("%d x %d -> %d x %d: %d levels from the float64 filter", sw, sh, dw, dh,
                           worst);
    if (dw == sw && dh == sh && memcmp(got, src.rgb, (size_t)sw * sh * 3) != 0)
        g_test_fail_printf("same-size resize changed pixels");
    g_free(a);
    g_free(b);
    g_free(c);
    g_free(got);
    rgb_free(&src);
}

static void test_resize_shapes(void)
{
    const int cases[][4] = { { 97, 53, 97, 31 },  { 97, 53, 40, 53 }, { 97, 53, 97, 53 },
                             { 31, 29, 200, 7 },  { 1, 1, 5, 3 },     { 7, 1, 3, 1 },
                             { 640, 3, 23, 23 }, { 3, 300, 384, 384 } };
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++)
        check_resize_against_float(cases[i][0], cases[i][1], cases[i][2], cases[i][3]);
}

/* ---- normalisation ---------------------------------------------------------------------------- */

static void check_pixel_values(const char *golden, const float mean[3], const float std[3])
{
    Rgb rgb = load_rgb_npy("tiny/golden/resized_rgb.npy");
    g_assert_cmpint(rgb.width, ==, rgb.height);
    int s = rgb.width;
    Npy ref;
    test_load_npy(golden, &ref);
    g_assert_cmpstr(ref.dtype, ==, "f4");
    g_assert_cmpint(ref.n_elems, ==, (size_t)3 * s * s);
    float *got = g_new(float, (size_t)3 * s * s);
    normalize_rgb(rgb.rgb, s, mean, std, got);
    assert_rel_error(golden, got, ref.data, ref.n_elems, 1e-6);
    g_free(got);
    npy_free(&ref);
    rgb_free(&rgb);
}

static void test_normalize(void)
{
    const float dino_mean[3] = { 0.485f, 0.456f, 0.406f }, dino_std[3] = { 0.229f, 0.224f, 0.225f };
    const float half[3] = { 0.5f, 0.5f, 0.5f };
    check_pixel_values("tiny/golden/pixel_values_dino.npy", dino_mean, dino_std);
    check_pixel_values("tiny/golden/pixel_values_siglip.npy", half, half);
}

/* ---- packed formats --------------------------------------------------------------------------- */

static void test_packed_formats(void)
{
    static const struct {
        CobraPixelFormat format;
        const char *order; /* memory byte order; 'A'/'x' = filler */
    } cases[] = {
        { COBRA_FORMAT_RGB, "RGB" },   { COBRA_FORMAT_RGBA, "RGBA" }, { COBRA_FORMAT_RGBx, "RGBx" },
        { COBRA_FORMAT_BGR, "BGR" },   { COBRA_FORMAT_BGRA, "BGRA" }, { COBRA_FORMAT_BGRx, "BGRx" },
        { COBRA_FORMAT_ARGB, "ARGB" }, { COBRA_FORMAT_xRGB, "xRGB" }, { COBRA_FORMAT_ABGR, "ABGR" },
        { COBRA_FORMAT_xBGR, "xBGR" },
    };
    Rgb src = load_rgb_npy("tiny/golden/image_rgb.npy");
    int w = src.width, h = src.height;
    uint8_t *out = g_malloc((size_t)w * h * 3);
    for (size_t c = 0; c < G_N_ELEMENTS(cases); c++) {
        int bpp = (int)strlen(cases[c].order);
        for (int pad = 0; pad <= 13; pad += 13) {
            int stride = w * bpp + pad;
            uint8_t *buf = g_malloc((size_t)stride * h);
            memset(buf, 0xa5, (size_t)stride * h);
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int b = 0; b < bpp; b++) {
                        const char *rgb = strchr("RGB", cases[c].order[b]);
                        buf[(size_t)y * stride + x * bpp + b] =
                            rgb ? src.rgb[((size_t)y * w + x) * 3 + (rgb - "RGB")] : 0x5a;
                    }
            CobraImage img = { .format = cases[c].format, .width = w, .height = h, .planes = { buf },
                                .strides = { stride } };
            GError *err = NULL;
            g_assert_true(image_validate(&img, &err));
            g_assert_no_error(err);
            memset(out, 0, (size_t)w * h * 3);
            image_to_rgb(&img, out);
            char *what = g_strdup_printf("%s stride %d", cases[c].order, stride);
            assert_same_rgb(what, out, src.rgb, w, h);
            g_free(what);
            g_free(buf);
        }
    }
    g_free(out);
    rgb_free(&src);
}

/* ---- YUV against videoconvert ----------------------------------------------------------------- */

static GstSample *sample_from_rgb(const Rgb *p)
{
    GstVideoInfo info;
    GstVideoFrame frame;
    gst_video_info_set_format(&info, GST_VIDEO_FORMAT_RGB, p->width, p->height);
    GstBuffer *buf = gst_buffer_new_allocate(NULL, GST_VIDEO_INFO_SIZE(&info), NULL);
    g_assert_true(gst_video_frame_map(&frame, &info, buf, GST_MAP_WRITE));
    uint8_t *d = GST_VIDEO_FRAME_PLANE_DATA(&frame, 0);
    for (int y = 0; y < p->height; y++)
        memcpy(d + (size_t)y * GST_VIDEO_FRAME_PLANE_STRIDE(&frame, 0),
               p->rgb + (size_t)y * p->width * 3, (size_t)p->width * 3);
    gst_video_frame_unmap(&frame);
    GstCaps *caps = gst_video_info_to_caps(&info);
    GstSample *s = gst_sample_new(buf, caps, NULL, NULL);
    gst_caps_unref(caps);
    gst_buffer_unref(buf);
    return s;
}

/* videoconvert with its default settings, through gst_video_convert_sample(). */
static GstSample *convert(GstSample *in, const char *caps_str)
{
    GstCaps *caps = gst_caps_from_string(caps_str);
    GError *err = NULL;
    GstSample *out = gst_video_convert_sample(in, caps, GST_CLOCK_TIME_NONE, &err);
    g_assert_no_error(err);
    gst_caps_unref(caps);
    return out;
}

/* The formats that go through videoconvert here, by GStreamer's name. */
static const struct {
    const char *name;
    CobraPixelFormat format;
} converted_formats[] = {
    { "I420", COBRA_FORMAT_I420 }, { "YV12", COBRA_FORMAT_YV12 }, { "NV12", COBRA_FORMAT_NV12 },
    { "NV21", COBRA_FORMAT_NV21 }, { "YUY2", COBRA_FORMAT_YUY2 }, { "UYVY", COBRA_FORMAT_UYVY },
    { "GRAY8", COBRA_FORMAT_GRAY8 },
};

static CobraPixelFormat format_from_name(const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(converted_formats); i++)
        if (strcmp(converted_formats[i].name, name) == 0)
            return converted_formats[i].format;
    g_error("no CobraPixelFormat for %s", name);
}

/* RGB -> format (videoconvert) -> RGB twice: by videoconvert (the reference) and by image.c.
 * colorimetry NULL: the format's default. */
static void check_converted(const Rgb *src, const char *format, const char *colorimetry,
                            CobraYuvMatrix matrix, int tolerance)
{
    char *caps = colorimetry
                     ? g_strdup_printf("video/x-raw,format=%s,colorimetry=%s", format, colorimetry)
                     : g_strdup_printf("video/x-raw,format=%s", format);
    colorimetry = colorimetry ? colorimetry : "default";
    GstSample *rgb_in = sample_from_rgb(src);
    GstSample *yuv = convert(rgb_in, caps);
    GstSample *back = convert(yuv, "video/x-raw,format=RGB");
    Rgb ref = rgb_from_sample(back);

    GstVideoInfo info;
    GstVideoFrame frame;
    g_assert_true(gst_video_info_from_caps(&info, gst_sample_get_caps(yuv)));
    g_assert_true(gst_video_frame_map(&frame, &info, gst_sample_get_buffer(yuv), GST_MAP_READ));
    CobraImage img = { .format = format_from_name(format), .width = src->width,
                       .height = src->height };
    for (guint p = 0; p < GST_VIDEO_FRAME_N_PLANES(&frame); p++) {
        img.planes[p] = GST_VIDEO_FRAME_PLANE_DATA(&frame, p);
        img.strides[p] = GST_VIDEO_FRAME_PLANE_STRIDE(&frame, p);
    }
    img.yuv_matrix = matrix;
    GError *err = NULL;
    g_assert_true(image_validate(&img, &err));
    uint8_t *got = g_malloc((size_t)src->width * src->height * 3);
    image_to_rgb(&img, got);
    gst_video_frame_unmap(&frame);

    int worst = 0;
    double sum = 0;
    size_t n = (size_t)src->width * src->height * 3;
    for (size_t i = 0; i < n; i++) {
        int d = abs(got[i] - ref.rgb[i]);
        worst = MAX(worst, d);
        sum += d;
    }
    g_test_message("%s %s %d x %d: at most %d levels from videoconvert (mean %.3f)", format,
                   colorimetry, src->width, src->height, worst, sum / n);
    if (worst > tolerance)
        g_test_fail_printf("%s %s %d x %d: %d levels from videoconvert (tolerance %d)", format,
                           colorimetry, src->width, src->height, worst, tolerance);
    g_free(got);
    rgb_free(&ref);
    gst_sample_unref(back);
    gst_sample_unref(yuv);
    gst_sample_unref(rgb_in);
    g_free(caps);
}

static void test_yuv(void)
{
    Rgb full = load_rgb_npy("tiny/golden/image_rgb.npy");
    /* an odd width too: crop one column */
    Rgb odd = { .width = full.width - 1, .height = full.height };
    odd.rgb = g_malloc((size_t)odd.width * odd.height * 3);
    for (int y = 0; y < full.height; y++)
        memcpy(odd.rgb + (size_t)y * odd.width * 3, full.rgb + (size_t)y * full.width * 3,
               (size_t)odd.width * 3);
    /* Tolerances: videoconvert's 8-bit YUV->RGB truncates its fixed-point products and, for
     * limited range, drops the luma offset term (about 2 levels dark, up to 6 with truncation);
     * image.c rounds the standard equations. Chroma is placed exactly as videoconvert does, so
     * sharp colour edges add nothing (nearest-sample chroma for NV12 would be ~50 levels off).
     * Each format in both orders of its chroma (I420/YV12, NV12/NV21, YUY2/UYVY), so a U and V
     * swapped in image.c's layout table fails. */
    static const struct {
        const char *colorimetry;
        CobraYuvMatrix matrix;
        int tolerance;
    } m[] = {
        { "bt601", COBRA_YUV_BT601_LIMITED, 6 },
        { "bt709", COBRA_YUV_BT709_LIMITED, 6 },
        { "1:4:5:4", COBRA_YUV_BT601_FULL, 3 }, /* range 0-255, BT.601 matrix */
        { "1:3:5:1", COBRA_YUV_BT709_FULL, 3 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(m); i++)
        for (size_t f = 0; f < G_N_ELEMENTS(converted_formats); f++) {
            const char *format = converted_formats[f].name;
            if (converted_formats[f].format == COBRA_FORMAT_GRAY8)
                continue; /* test_gray8 */
            check_converted(&full, format, m[i].colorimetry, m[i].matrix, m[i].tolerance);
            check_converted(&odd, format, m[i].colorimetry, m[i].matrix, m[i].tolerance);
        }
    rgb_free(&odd);
    rgb_free(&full);
}

/* GRAY8: videoconvert shows luma as R = G = B unchanged, whatever the range; so does image.c. */
static void test_gray8(void)
{
    Rgb full = load_rgb_npy("tiny/golden/image_rgb.npy");
    check_converted(&full, "GRAY8", NULL, COBRA_YUV_BT601_LIMITED, 0);
    rgb_free(&full);
}

/* ---- validation ------------------------------------------------------------------------------- */

static void expect_invalid(const CobraImage *img, const char *needle)
{
    GError *err = NULL;
    g_assert_false(image_validate(img, &err));
    g_assert_error(err, COBRA_ERROR, COBRA_ERROR_INVALID);
    if (!strstr(err->message, needle))
        g_test_fail_printf("error \"%s\" does not name \"%s\"", err->message, needle);
    g_error_free(err);
}

static void test_validate(void)
{
    static uint8_t pixels[64 * 64 * 4];
    CobraImage ok = { .format = COBRA_FORMAT_RGBA, .width = 10, .height = 7, .planes = { pixels },
                      .strides = { 40 } };
    GError *err = NULL;
    g_assert_true(image_validate(&ok, &err));
    g_assert_no_error(err);

    CobraImage img = ok;
    img.format = (CobraPixelFormat)99;
    expect_invalid(&img, "99");
    img = ok, img.width = 0;
    expect_invalid(&img, "0 x 7");
    img = ok, img.height = 16385;
    expect_invalid(&img, "16385");
    img = ok, img.width = -3;
    expect_invalid(&img, "-3");
    img = ok, img.planes[0] = NULL;
    expect_invalid(&img, "plane 0");
    img = ok, img.strides[0] = 39;
    expect_invalid(&img, "39");

    /* I420 with width 9: chroma rows of 5 bytes */
    CobraImage yuv = { .format = COBRA_FORMAT_I420, .width = 9, .height = 5,
                       .planes = { pixels, pixels, pixels }, .strides = { 9, 5, 5 } };
    g_assert_true(image_validate(&yuv, &err));
    img = yuv, img.strides[2] = 4;
    expect_invalid(&img, "plane 2 stride 4");
    img = yuv, img.planes[1] = NULL;
    expect_invalid(&img, "plane 1");
    img = yuv, img.strides[0] = 8;
    expect_invalid(&img, "stride 8");
    img = yuv, img.yuv_matrix = (CobraYuvMatrix)7;
    expect_invalid(&img, "7");
    /* NV12: the interleaved chroma row is 2 * 5 bytes; planes[2] is unused */
    CobraImage nv12 = { .format = COBRA_FORMAT_NV12, .width = 9, .height = 5,
                        .planes = { pixels, pixels }, .strides = { 9, 10 } };
    g_assert_true(image_validate(&nv12, &err));
    img = nv12, img.strides[1] = 9;
    expect_invalid(&img, "plane 1 stride 9");
    img = nv12, img.format = COBRA_FORMAT_NV21, img.strides[1] = 9;
    expect_invalid(&img, "NV21 image plane 1 stride 9");
    img = yuv, img.format = COBRA_FORMAT_YV12, img.strides[1] = 4;
    expect_invalid(&img, "YV12 image plane 1 stride 4");
    /* 4:2:2 packed: whole 4-byte groups of two pixels, 5 of them for width 9 */
    CobraImage yuy2 = { .format = COBRA_FORMAT_YUY2, .width = 9, .height = 5,
                        .planes = { pixels }, .strides = { 20 } };
    g_assert_true(image_validate(&yuy2, &err));
    img = yuy2, img.strides[0] = 19;
    expect_invalid(&img, "YUY2 image plane 0 stride 19");
    img = yuy2, img.format = COBRA_FORMAT_UYVY, img.strides[0] = 18;
    expect_invalid(&img, "UYVY image plane 0 stride 18");
    img = yuy2, img.yuv_matrix = (CobraYuvMatrix)5;
    expect_invalid(&img, "YUV matrix 5");
    CobraImage gray = { .format = COBRA_FORMAT_GRAY8, .width = 9, .height = 5,
                        .planes = { pixels }, .strides = { 9 } };
    g_assert_true(image_validate(&gray, &err));
    img = gray, img.strides[0] = 8;
    expect_invalid(&img, "GRAY8 image plane 0 stride 8");
    g_assert_no_error(err);
}

int main(int argc, char **argv)
{
    gst_init(&argc, &argv);
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/image/resize/cases", test_resize_cases);
    g_test_add_func("/image/resize/tiny-golden", test_resize_tiny_golden);
    g_test_add_func("/image/resize/shapes", test_resize_shapes);
    g_test_add_func("/image/normalize", test_normalize);
    g_test_add_func("/image/packed-formats", test_packed_formats);
    g_test_add_func("/image/yuv", test_yuv);
    g_test_add_func("/image/gray8", test_gray8);
    g_test_add_func("/image/validate", test_validate);
    return g_test_run();
}
