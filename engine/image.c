/* image.c - frames to tower input: pixel formats to packed RGB, Pillow's BICUBIC resize
 * (bit-exact port of the fixed-point path of Pillow's src/libImaging/Resample.c), and the
 * torchvision ToTensor + Normalize arithmetic. */
#include "image.h"

#include <math.h>
#include <string.h>

/* ---- formats ---------------------------------------------------------------------------------- */

/* Packed RGB formats: bytes per pixel and the byte offsets of R, G, B (GStreamer names memory
 * order). GRAY8's one byte is R, G and B, as videoconvert shows it. */
typedef struct {
    int bpp, r, g, b;
} PackedLayout;

/* The n-th sample of a component in a row of its plane is the byte at offset + n * step. */
typedef struct {
    int plane, offset, step;
} Sample;

/* YUV formats: chroma is halved horizontally, and vertically too where chroma_rows_halved
 * (4:2:0; 4:2:2 otherwise). interpolated: how videoconvert upsamples the chroma (see below). */
typedef struct {
    Sample y, u, v;
    gboolean chroma_rows_halved, interpolated;
} YuvLayout;

typedef struct {
    const char *name;
    gboolean is_yuv;
    PackedLayout packed;
    YuvLayout yuv;
} Layout;

/* Y, U, V as { plane, offset, step }, chroma_rows_halved, interpolated */
#define YUV(name, ...) { name, TRUE, .yuv = { __VA_ARGS__ } }

static const Layout layouts[] = {
    [COBRA_FORMAT_RGB] = { "RGB", .packed = { 3, 0, 1, 2 } },
    [COBRA_FORMAT_RGBA] = { "RGBA", .packed = { 4, 0, 1, 2 } },
    [COBRA_FORMAT_RGBx] = { "RGBx", .packed = { 4, 0, 1, 2 } },
    [COBRA_FORMAT_BGR] = { "BGR", .packed = { 3, 2, 1, 0 } },
    [COBRA_FORMAT_BGRA] = { "BGRA", .packed = { 4, 2, 1, 0 } },
    [COBRA_FORMAT_BGRx] = { "BGRx", .packed = { 4, 2, 1, 0 } },
    [COBRA_FORMAT_ARGB] = { "ARGB", .packed = { 4, 1, 2, 3 } },
    [COBRA_FORMAT_xRGB] = { "xRGB", .packed = { 4, 1, 2, 3 } },
    [COBRA_FORMAT_ABGR] = { "ABGR", .packed = { 4, 3, 2, 1 } },
    [COBRA_FORMAT_xBGR] = { "xBGR", .packed = { 4, 3, 2, 1 } },
    [COBRA_FORMAT_GRAY8] = { "GRAY8", .packed = { 1, 0, 0, 0 } },
    [COBRA_FORMAT_I420] = YUV("I420", { 0, 0, 1 }, { 1, 0, 1 }, { 2, 0, 1 }, TRUE, FALSE),
    [COBRA_FORMAT_YV12] = YUV("YV12", { 0, 0, 1 }, { 2, 0, 1 }, { 1, 0, 1 }, TRUE, FALSE),
    [COBRA_FORMAT_NV12] = YUV("NV12", { 0, 0, 1 }, { 1, 0, 2 }, { 1, 1, 2 }, TRUE, TRUE),
    [COBRA_FORMAT_NV21] = YUV("NV21", { 0, 0, 1 }, { 1, 1, 2 }, { 1, 0, 2 }, TRUE, TRUE),
    [COBRA_FORMAT_YUY2] = YUV("YUY2", { 0, 0, 2 }, { 0, 1, 4 }, { 0, 3, 4 }, FALSE, TRUE),
    [COBRA_FORMAT_UYVY] = YUV("UYVY", { 0, 1, 2 }, { 0, 0, 4 }, { 0, 2, 4 }, FALSE, TRUE),
};

/* Planes of a format and the least bytes per row of each (whole 2-pixel groups for 4:2:2, as
 * GStreamer lays them out). */
static int plane_rows(const CobraImage *img, int min_stride[3])
{
    int cw = (img->width + 1) / 2;
    switch (img->format) {
    case COBRA_FORMAT_I420:
    case COBRA_FORMAT_YV12:
        min_stride[0] = img->width;
        min_stride[1] = min_stride[2] = cw;
        return 3;
    case COBRA_FORMAT_NV12:
    case COBRA_FORMAT_NV21:
        min_stride[0] = img->width;
        min_stride[1] = 2 * cw;
        return 2;
    case COBRA_FORMAT_YUY2:
    case COBRA_FORMAT_UYVY:
        min_stride[0] = 4 * cw;
        return 1;
    default:
        min_stride[0] = img->width * layouts[img->format].packed.bpp;
        return 1;
    }
}

gboolean image_validate(const CobraImage *img, GError **error)
{
    if (!img) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "image is NULL");
        return FALSE;
    }
    if ((unsigned)img->format >= G_N_ELEMENTS(layouts)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "image format %d is not supported",
                    (int)img->format);
        return FALSE;
    }
    const char *name = layouts[img->format].name;
    if (img->width < 1 || img->width > COBRA_MAX_IMAGE_SIDE || img->height < 1 ||
        img->height > COBRA_MAX_IMAGE_SIDE) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID,
                    "%s image size %d x %d is outside 1..%d", name, img->width, img->height,
                    COBRA_MAX_IMAGE_SIDE);
        return FALSE;
    }
    if (layouts[img->format].is_yuv && ((unsigned)img->yuv_matrix > COBRA_YUV_BT709_FULL)) {
        g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "YUV matrix %d is not supported",
                    (int)img->yuv_matrix);
        return FALSE;
    }
    int min_stride[3];
    int n = plane_rows(img, min_stride);
    for (int p = 0; p < n; p++) {
        if (!img->planes[p]) {
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID, "%s image plane %d is NULL",
                        name, p);
            return FALSE;
        }
        if (img->strides[p] < min_stride[p]) {
            g_set_error(error, COBRA_ERROR, COBRA_ERROR_INVALID,
                        "%s image plane %d stride %d is less than its row of %d bytes (width %d)",
                        name, p, img->strides[p], min_stride[p], img->width);
            return FALSE;
        }
    }
    return TRUE;
}

static inline uint8_t clamp_u8(int v)
{
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

static void packed_to_rgb(const CobraImage *img, uint8_t *rgb)
{
    const PackedLayout *l = &layouts[img->format].packed;
#pragma omp parallel for schedule(static) if ((size_t)img->width * img->height >= 65536)
    for (int y = 0; y < img->height; y++) {
        const uint8_t *s = img->planes[0] + (size_t)y * img->strides[0];
        uint8_t *d = rgb + (size_t)y * img->width * 3;
        for (int x = 0; x < img->width; x++, s += l->bpp, d += 3) {
            d[0] = s[l->r];
            d[1] = s[l->g];
            d[2] = s[l->b];
        }
    }
}

/* Y'CbCr -> R'G'B' in 16-bit fixed point: R = Y' + crv V', G = Y' - cgu U' - cgv V',
 * B = Y' + cbu U', with Y' = (Y - y0) * cy and U', V' centred on 128, rounded to nearest. */
typedef struct {
    int y0, cy, crv, cgu, cgv, cbu;
} YuvCoeffs;

static YuvCoeffs yuv_coeffs(CobraYuvMatrix m)
{
    gboolean bt709 = m == COBRA_YUV_BT709_LIMITED || m == COBRA_YUV_BT709_FULL;
    gboolean full = m == COBRA_YUV_BT601_FULL || m == COBRA_YUV_BT709_FULL;
    double kr = bt709 ? 0.2126 : 0.299, kb = bt709 ? 0.0722 : 0.114, kg = 1 - kr - kb;
    /* limited range: luma 16..235, chroma 16..240 map to 0..255 and -127.5..127.5 */
    double sy = full ? 1.0 : 255.0 / 219.0, sc = full ? 1.0 : 255.0 / 224.0;
    double one = 65536;
    return (YuvCoeffs){
        .y0 = full ? 0 : 16,
        .cy = (int)lround(sy * one),
        .crv = (int)lround(2 * (1 - kr) * sc * one),
        .cgu = (int)lround(2 * kb * (1 - kb) / kg * sc * one),
        .cgv = (int)lround(2 * kr * (1 - kr) / kg * sc * one),
        .cbu = (int)lround(2 * (1 - kb) * sc * one),
    };
}

static inline void yuv_pixel(const YuvCoeffs *c, int y, int u, int v, uint8_t *d)
{
    int yy = (y - c->y0) * c->cy + 32768;
    u -= 128;
    v -= 128;
    d[0] = clamp_u8((yy + c->crv * v) >> 16);
    d[1] = clamp_u8((yy - c->cgu * u - c->cgv * v) >> 16);
    d[2] = clamp_u8((yy + c->cbu * u) >> 16);
}

/* Chroma as GStreamer 1.22's videoconvert (default settings) upsamples it, so a frame gives the
 * RGB a videoconvert in front of us would give (checked empirically in test_image.c):
 * - I420 and YV12 take its fast path, which repeats each chroma sample over its 2 x 2 luma block;
 * - NV12, NV21, YUY2 and UYVY take the generic path, which interpolates centred chroma with 3:1
 *   taps, horizontally then (4:2:0) vertically, each pass rounded, the edge sample repeated.
 * Odd sizes: the last chroma column/row covers a single luma column/row. The matrix arithmetic is
 * the standard one, rounded (yuv_pixel); videoconvert's 8-bit fast path truncates and drops the
 * luma offset, so its limited-range output is about 2 levels darker (at most 6 here). */
static inline int chroma_3_1(int near, int far)
{
    return (3 * near + far + 2) >> 2;
}

static inline const uint8_t *sample_row(const CobraImage *img, const Sample *s, int row)
{
    return img->planes[s->plane] + (size_t)row * img->strides[s->plane] + s->offset;
}

/* Chroma sample i of rows r0 (nearest) and r1 (the other side), interpolated towards in. */
static inline int chroma_interpolated(const uint8_t *r0, const uint8_t *r1, int step, int i, int in)
{
    return chroma_3_1(chroma_3_1(r0[i * step], r0[in * step]),
                      chroma_3_1(r1[i * step], r1[in * step]));
}

static void yuv_row(const CobraImage *img, const YuvLayout *l, const YuvCoeffs *c, int y,
                    uint8_t *d)
{
    int cw = (img->width + 1) / 2, ch = (img->height + 1) / 2;
    int j = l->chroma_rows_halved ? y / 2 : y;
    const uint8_t *py = sample_row(img, &l->y, y);
    const uint8_t *u0 = sample_row(img, &l->u, j), *v0 = sample_row(img, &l->v, j);
    if (!l->interpolated) {
        for (int x = 0; x < img->width; x++)
            yuv_pixel(c, py[x * l->y.step], u0[x / 2 * l->u.step], v0[x / 2 * l->v.step], d + 3 * x);
        return;
    }
    /* the chroma row nearest to this luma row, and the one on its other side (4:2:0 only: a
     * 4:2:2 row interpolates with itself, which leaves it as it is) */
    int jn = l->chroma_rows_halved ? CLAMP(y % 2 ? j + 1 : j - 1, 0, ch - 1) : j;
    const uint8_t *u1 = sample_row(img, &l->u, jn), *v1 = sample_row(img, &l->v, jn);
    for (int x = 0; x < img->width; x++) {
        int i = x / 2, in = CLAMP(x % 2 ? i + 1 : i - 1, 0, cw - 1);
        yuv_pixel(c, py[x * l->y.step], chroma_interpolated(u0, u1, l->u.step, i, in),
                  chroma_interpolated(v0, v1, l->v.step, i, in), d + 3 * x);
    }
}

static void yuv_to_rgb(const CobraImage *img, uint8_t *rgb)
{
    YuvCoeffs c = yuv_coeffs(img->yuv_matrix);
    const YuvLayout *l = &layouts[img->format].yuv;
#pragma omp parallel for schedule(static) if ((size_t)img->width * img->height >= 65536)
    for (int y = 0; y < img->height; y++)
        yuv_row(img, l, &c, y, rgb + (size_t)y * img->width * 3);
}

void image_to_rgb(const CobraImage *img, uint8_t *rgb)
{
    if (layouts[img->format].is_yuv)
        yuv_to_rgb(img, rgb);
    else
        packed_to_rgb(img, rgb);
}

/* ---- Pillow BICUBIC resize ------------------------------------------------------------------ */

/* Pillow's fixed point: 8-bit result, two bits of headroom for negative lobes and overshoot. */
#define PRECISION_BITS (32 - 8 - 2)

/* Keys' cubic convolution kernel with a = -0.5 (Pillow's bicubic_filter). */
static double bicubic_filter(double x)
{
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* For each output pixel: the first input pixel, how many are used, and their fixed-point weights
 * (ksize per output pixel). */
typedef struct {
    int ksize;
    int *first, *count;
    int32_t *k;
} Coeffs;

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for the box [0, in_size). */
static Coeffs precompute_coeffs(int in_size, int out_size)
{
    double scale = (double)in_size / out_size;
    double filterscale = MAX(scale, 1.0); /* widen the kernel when shrinking: antialiasing */
    double support = 2.0 * filterscale;
    Coeffs c = { .ksize = (int)ceil(support) * 2 + 1 };
    c.first = g_new(int, out_size);
    c.count = g_new(int, out_size);
    c.k = g_new0(int32_t, (size_t)out_size * c.ksize);
    double *w = g_new(double, c.ksize);
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        /* (int) truncates towards zero, as in Pillow */
        int xmin = MAX((int)(center - support + 0.5), 0);
        int xmax = MIN((int)(center + support + 0.5), in_size) - xmin;
        double sum = 0, ss = 1.0 / filterscale;
        for (int x = 0; x < xmax; x++) {
            w[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
            sum += w[x];
        }
        for (int x = 0; x < xmax; x++) {
            double v = sum != 0.0 ? w[x] / sum : w[x];
            /* round half away from zero, truncating conversion like Pillow */
            c.k[(size_t)xx * c.ksize + x] =
                (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS)
                                : 0.5 + v * (1 << PRECISION_BITS));
        }
        c.first[xx] = xmin;
        c.count[xx] = xmax;
    }
    g_free(w);
    return c;
}

static void coeffs_free(Coeffs *c)
{
    g_free(c->first);
    g_free(c->count);
    g_free(c->k);
}

/* Sum of weights plus one half, back to 8 bits with clipping. */
static inline uint8_t clip8(int ss)
{
    return clamp_u8(ss >> PRECISION_BITS);
}

/* dst[y][dw] = horizontal resample of src rows row0 .. row0 + n_rows - 1. */
static void resample_horizontal(const uint8_t *src, int sw, int row0, int n_rows, uint8_t *dst,
                                int dw, const Coeffs *c)
{
#pragma omp parallel for schedule(static) if ((size_t)n_rows * dw * c->ksize >= 65536)
    for (int y = 0; y < n_rows; y++) {
        const uint8_t *s = src + (size_t)(row0 + y) * sw * 3;
        uint8_t *d = dst + (size_t)y * dw * 3;
        for (int xx = 0; xx < dw; xx++) {
            const int32_t *k = c->k + (size_t)xx * c->ksize;
            const uint8_t *p = s + (size_t)c->first[xx] * 3;
            int ss0 = 1 << (PRECISION_BITS - 1), ss1 = ss0, ss2 = ss0;
            for (int x = 0; x < c->count[xx]; x++) {
                ss0 += p[3 * x + 0] * k[x];
                ss1 += p[3 * x + 1] * k[x];
                ss2 += p[3 * x + 2] * k[x];
            }
            d[3 * xx + 0] = clip8(ss0);
            d[3 * xx + 1] = clip8(ss1);
            d[3 * xx + 2] = clip8(ss2);
        }
    }
}

/* dst[dh][w] = vertical resample of src[..][w]; c->first is relative to src's first row. */
static void resample_vertical(const uint8_t *src, int w, uint8_t *dst, int dh, const Coeffs *c)
{
    size_t row = (size_t)w * 3;
#pragma omp parallel for schedule(static) if ((size_t)dh * w * c->ksize >= 65536)
    for (int yy = 0; yy < dh; yy++) {
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        const uint8_t *s = src + (size_t)c->first[yy] * row;
        uint8_t *d = dst + (size_t)yy * row;
        for (size_t i = 0; i < row; i++) {
            int ss = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < c->count[yy]; y++)
                ss += s[(size_t)y * row + i] * k[y];
            d[i] = clip8(ss);
        }
    }
}

void resize_bicubic_rgb(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh,
                        uint8_t *tmp)
{
    /* Like Pillow, a direction whose size does not change is not resampled at all. */
    gboolean need_h = dw != sw, need_v = dh != sh;
    if (!need_h && !need_v) {
        memcpy(dst, src, (size_t)sw * sh * 3);
        return;
    }
    if (!need_v) {
        Coeffs ch = precompute_coeffs(sw, dw);
        resample_horizontal(src, sw, 0, sh, dst, dw, &ch);
        coeffs_free(&ch);
        return;
    }
    Coeffs cv = precompute_coeffs(sh, dh);
    const uint8_t *in = src;
    if (need_h) {
        /* Only the source rows the vertical pass reads go through the horizontal pass. */
        int row0 = cv.first[0], row1 = cv.first[dh - 1] + cv.count[dh - 1];
        Coeffs ch = precompute_coeffs(sw, dw);
        resample_horizontal(src, sw, row0, row1 - row0, tmp, dw, &ch);
        coeffs_free(&ch);
        for (int i = 0; i < dh; i++)
            cv.first[i] -= row0;
        in = tmp;
    }
    resample_vertical(in, dw, dst, dh, &cv);
    coeffs_free(&cv);
}

/* ---- normalisation -------------------------------------------------------------------------- */

void normalize_rgb(const uint8_t *rgb, int size, const float mean[3], const float std[3],
                   float *out)
{
    size_t plane = (size_t)size * size;
    /* torchvision: ToTensor divides by 255 in float32, Normalize subtracts then divides. */
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++) {
            float v = (float)rgb[i * 3 + c] / 255.0f;
            out[c * plane + i] = (v - mean[c]) / std[c];
        }
}
