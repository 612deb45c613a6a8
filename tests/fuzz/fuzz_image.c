/* fuzz_image.c - frames of any size, stride, format and YUV matrix through the image path as
 * cobra_session_set_image drives it: image_validate, then image_to_rgb, resize_bicubic_rgb and
 * normalize_rgb on what it accepts.
 *
 * Input: a 12-byte header, then pixel bytes (repeated to fill the planes):
 *   0     format (mod 19: the 17 formats and 2 invalid values)
 *   1     YUV matrix (mod 6: the 4 matrices and 2 invalid values)
 *   2..3  width, 4..5 height: signed 16-bit little-endian, so 0, negatives and sizes past the
 *         16384 limit occur
 *   6..8  per plane, stride = the least valid stride + byte - 4 (a few too small)
 *   9     bits 0..2: plane p is NULL
 *   10,11 output width and height: 1 + byte % 128
 * Each plane is its own allocation of exactly the bytes the image may touch (the last row only as
 * long as the least stride), so any read outside the frame trips AddressSanitizer. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "image.h"

#define HEADER 12
/* Frames above this many pixels are only validated, and outputs are at most this wide and high:
 * bugs live in shapes (odd sizes, extreme ratios, tight strides), not in sheer size, and small
 * frames keep runs fast. */
#define MAX_CONVERTED_PIXELS (1 << 15)
#define MAX_OUTPUT_SIDE 128

typedef struct {
    CobraImage img;
    uint8_t *planes[3];
    size_t plane_size[3];
} Frame;

static int16_t le16(const uint8_t *p)
{
    return (int16_t)(p[0] | p[1] << 8);
}

/* Rows and least stride of each plane; the number of planes. Restated rather than shared with
 * image.c: these sizes are the test's own statement of what a frame may touch. */
static int plane_layout(const CobraImage *img, int rows[3], int min_stride[3])
{
    int cw = (img->width + 1) / 2, ch = (img->height + 1) / 2;
    static const int bpp[] = { 3, 4, 4, 3, 4, 4, 4, 4, 4, 4, [COBRA_FORMAT_GRAY8] = 1 };
    rows[0] = img->height;
    min_stride[0] = img->width;
    switch (img->format) {
    case COBRA_FORMAT_I420:
    case COBRA_FORMAT_YV12:
        rows[1] = rows[2] = ch;
        min_stride[1] = min_stride[2] = cw;
        return 3;
    case COBRA_FORMAT_NV12:
    case COBRA_FORMAT_NV21:
        rows[1] = ch;
        min_stride[1] = 2 * cw;
        return 2;
    case COBRA_FORMAT_YUY2: /* Y0 U Y1 V per two pixels */
    case COBRA_FORMAT_UYVY:
        min_stride[0] = 4 * cw;
        return 1;
    default:
        if ((unsigned)img->format < G_N_ELEMENTS(bpp))
            min_stride[0] *= bpp[img->format];
        return 1;
    }
}

static void fill(uint8_t *dst, size_t n, const uint8_t *src, size_t src_n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src_n ? src[i % src_n] : (uint8_t)i;
}

/* The frame the header describes; FALSE when it is too big to convert (then no plane is made). */
static gboolean frame_new(Frame *f, const uint8_t *data, size_t size)
{
    memset(f, 0, sizeof *f);
    f->img.format = (CobraPixelFormat)(data[0] % 19);
    f->img.yuv_matrix = (CobraYuvMatrix)(data[1] % 6);
    f->img.width = le16(data + 2);
    f->img.height = le16(data + 4);
    int rows[3] = { 0 }, min_stride[3] = { 0 };
    int n = plane_layout(&f->img, rows, min_stride);
    if ((int64_t)f->img.width * f->img.height > MAX_CONVERTED_PIXELS)
        return FALSE;
    for (int p = 0; p < n; p++) {
        f->img.strides[p] = min_stride[p] + data[6 + p] - 4;
        if (data[9] & (1 << p) || rows[p] < 1 || f->img.strides[p] < 1)
            continue;
        f->plane_size[p] = (size_t)(rows[p] - 1) * f->img.strides[p] + MAX(min_stride[p], 0);
        f->planes[p] = malloc(MAX(f->plane_size[p], 1));
        fill(f->planes[p], f->plane_size[p], data + HEADER, size - HEADER);
        f->img.planes[p] = f->planes[p];
    }
    return TRUE;
}

static void frame_free(Frame *f)
{
    for (int p = 0; p < 3; p++)
        free(f->planes[p]);
}

static void convert(const CobraImage *img, int dw, int dh)
{
    size_t w = (size_t)img->width, h = (size_t)img->height;
    uint8_t *rgb = malloc(w * h * 3);
    uint8_t *tmp = malloc(h * dw * 3);
    uint8_t *out = malloc((size_t)dw * dh * 3);
    image_to_rgb(img, rgb);
    resize_bicubic_rgb(rgb, img->width, img->height, out, dw, dh, tmp);
    if (dw == dh) {
        static const float mean[3] = { 0.485f, 0.456f, 0.406f };
        static const float std[3] = { 0.229f, 0.224f, 0.225f };
        float *pixels = malloc(sizeof(float) * 3 * dw * dh);
        normalize_rgb(out, dw, mean, std, pixels);
        free(pixels);
    }
    free(rgb);
    free(tmp);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HEADER)
        return 0;
    Frame f;
    gboolean convertible = frame_new(&f, data, size);
    GError *error = NULL;
    gboolean valid = image_validate(&f.img, &error);
    if (!valid && (!error || !error->message[0]))
        abort(); /* a refusal must say why */
    g_clear_error(&error);
    if (valid && convertible)
        convert(&f.img, data[10] % MAX_OUTPUT_SIDE + 1, data[11] % MAX_OUTPUT_SIDE + 1);
    frame_free(&f);
    return 0;
}
