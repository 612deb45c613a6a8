/* test_ops.c - every kernel of ops.c against a float64 reference computed here. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "attention.h"
#include "ops.h"
#include "support.h"

static GRand *rng;

static void fill_uniform(float *x, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)g_rand_double_range(rng, lo, hi);
}

/* ---- fp16 --------------------------------------------------------------------------------------- */

/* IEEE binary16 decoded with ldexp, independent of the bit tricks in ops.c. */
static double ref_half(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0)
        v = ldexp(mant, -24);
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexp(1024 + mant, exp - 25);
    return sign ? -v : v;
}

/* Round |f| to the nearest half (ties to even) in double. */
static double ref_round_half(float f)
{
    double a = fabs((double)f);
    if (a >= 65520.0)
        return copysign(INFINITY, f);
    int e;
    frexp(a, &e);                             /* a = m * 2^e, m in [0.5, 1) */
    int ulp_exp = MAX(e - 1, -14) - 10;       /* half spacing at this magnitude */
    double q = nearbyint(ldexp(a, -ulp_exp)); /* the default rounding mode is to even */
    return copysign(ldexp(q, ulp_exp), f);
}

static void test_fp16_all_halves(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fp16_to_fp32((uint16_t)h);
        double ref = ref_half((uint16_t)h);
        if (isnan(ref)) {
            if (!isnan(f) || !isnan(fp16_to_fp32(fp32_to_fp16(f))))
                g_test_fail_printf("half 0x%04x: NaN not kept (%g)", h, f);
            continue;
        }
        if ((double)f != ref || !signbit(f) != !signbit(ref))
            g_test_fail_printf("half 0x%04x: decoded %.10g, expected %.10g", h, f, ref);
        if (fp32_to_fp16(f) != h)
            g_test_fail_printf("half 0x%04x: round trip gives 0x%04x", h, fp32_to_fp16(f));
    }
}

static void check_round(float f)
{
    double ref = ref_round_half(f);
    uint16_t h = fp32_to_fp16(f);
    double got = ref_half(h);
    if (got != ref || !signbit(got) != !signbit(ref))
        g_test_fail_printf("fp32_to_fp16(%.10g) = 0x%04x (%.10g), expected %.10g", f, h, got, ref);
}

static void test_fp16_rounding(void)
{
    const float special[] = { 0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65519.99f, 65520.0f, -65520.0f,
                              1e10f, -1e10f, 0x1p-24f, 0x1p-25f, 0x1.0002p-25f, 0x1.8p-24f,
                              0x1p-26f, 0x1p-14f, 0x1.ffcp-15f, 0x1.ffep-15f, 1e-30f, 3.14159265f,
                              INFINITY, -INFINITY };
    for (size_t i = 0; i < G_N_ELEMENTS(special); i++)
        check_round(special[i]);
    uint16_t qnan = fp32_to_fp16(NAN);
    g_assert_true(isnan(ref_half(qnan)));
    /* Every midpoint between neighbouring finite halves (exact in float): ties to even. */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        double mid = (ref_half((uint16_t)h) + ref_half((uint16_t)(h + 1))) / 2;
        check_round((float)mid);
        check_round(-(float)mid);
        check_round(nextafterf((float)mid, 0));
        check_round(nextafterf((float)mid, INFINITY));
    }
    for (int i = 0; i < 100000; i++) {
        float f = (float)ldexp(g_rand_double_range(rng, -1, 1), g_rand_int_range(rng, -30, 18));
        check_round(f);
    }
}

/* ---- weights built in the test ------------------------------------------------------------- */

typedef struct {
    Mat W;
    void *data;
    double *ref; /* the weights W holds, decoded in double */
} TestMat;

/* Q8_0 as ggml quantises: scale amax / 127 stored as f16, values round(w / scale). */
static void ref_quantize_q8_0(const float *w, BlockQ8_0 *out, int n)
{
    for (int b = 0; b < n / QK8_0; b++) {
        double amax = 0;
        for (int i = 0; i < QK8_0; i++)
            amax = MAX(amax, fabs(w[b * QK8_0 + i]));
        double d = amax / 127;
        out[b].d = fp32_to_fp16((float)d);
        for (int i = 0; i < QK8_0; i++)
            out[b].qs[i] = (int8_t)(d > 0 ? lround(w[b * QK8_0 + i] / d) : 0);
    }
}

/* Q4_0 as ggml quantises: d = -(the value of largest magnitude) / 8, q = w / d + 8 rounded
 * half up and clamped to 0..15; low nibbles hold elements 0..15, high nibbles 16..31. */
static void ref_quantize_q4_0(const float *w, BlockQ4_0 *out, int n)
{
    for (int b = 0; b < n / QK4_0; b++) {
        const float *wb = w + b * QK4_0;
        double max = 0;
        for (int i = 0; i < QK4_0; i++)
            if (fabs(wb[i]) > fabs(max))
                max = wb[i];
        double d = max / -8;
        int q[QK4_0];
        for (int i = 0; i < QK4_0; i++)
            q[i] = d != 0 ? (int)CLAMP(floor(wb[i] / d + 8.5), 0, 15) : 8;
        out[b].d = fp32_to_fp16((float)d);
        for (int i = 0; i < QK4_0 / 2; i++)
            out[b].qs[i] = (uint8_t)(q[i] | q[QK4_0 / 2 + i] << 4);
    }
}

static TestMat make_mat(GgmlType type, int rows, int cols)
{
    TestMat m = { .W = { .type = type, .rows = rows, .cols = cols } };
    size_t n = (size_t)rows * cols;
    float *w = g_new(float, n);
    fill_uniform(w, n, -1, 1);
    m.ref = g_new(double, n);
    switch (type) {
    case GGML_TYPE_F32:
        m.data = w;
        for (size_t i = 0; i < n; i++)
            m.ref[i] = w[i];
        break;
    case GGML_TYPE_F16: {
        uint16_t *h = g_new(uint16_t, n);
        for (size_t i = 0; i < n; i++) {
            h[i] = fp32_to_fp16(w[i]);
            m.ref[i] = ref_half(h[i]);
        }
        m.data = h;
        g_free(w);
        break;
    }
    case GGML_TYPE_Q8_0: {
        BlockQ8_0 *q = g_new(BlockQ8_0, n / QK8_0);
        for (int r = 0; r < rows; r++)
            ref_quantize_q8_0(w + (size_t)r * cols, q + (size_t)r * (cols / QK8_0), cols);
        /* ggml never writes -128, but a file may hold it: |-128| does not fit int8. */
        for (size_t b = 0; b < n / QK8_0; b += 7)
            q[b].qs[b % QK8_0] = -128;
        for (size_t b = 0; b < n / QK8_0; b++)
            for (int i = 0; i < QK8_0; i++)
                m.ref[b * QK8_0 + i] = ref_half(q[b].d) * q[b].qs[i];
        m.data = q;
        g_free(w);
        break;
    }
    case GGML_TYPE_Q4_0: {
        BlockQ4_0 *q = g_new(BlockQ4_0, n / QK4_0);
        for (int r = 0; r < rows; r++)
            ref_quantize_q4_0(w + (size_t)r * cols, q + (size_t)r * (cols / QK4_0), cols);
        /* Both extremes in both halves of a byte: values 7 and -8, -8 and 7. */
        for (size_t b = 0; b < n / QK4_0; b += 5) {
            q[b].qs[b % 16] = 0x0f;
            q[b].qs[(b + 7) % 16] = 0xf0;
        }
        for (size_t b = 0; b < n / QK4_0; b++)
            for (int i = 0; i < QK4_0 / 2; i++) {
                m.ref[b * QK4_0 + i] = ref_half(q[b].d) * ((q[b].qs[i] & 15) - 8);
                m.ref[b * QK4_0 + 16 + i] = ref_half(q[b].d) * ((q[b].qs[i] >> 4) - 8);
            }
        m.data = q;
        g_free(w);
        break;
    }
    }
    m.W.data = m.data;
    return m;
}

static void free_mat(TestMat *m)
{
    g_free(m->data);
    g_free(m->ref);
}

/* x as matmul quantises it to meet Q4_0 and Q8_0 weights (ggml's quantize_row_q8_0, float scale
 * max|x| / 127, ties away from zero), decoded in double. */
static void ref_quantize_x(const float *x, double *out, int cols)
{
    for (int b = 0; b < cols / QK8_0; b++) {
        const float *xb = x + b * QK8_0;
        float amax = 0;
        for (int j = 0; j < QK8_0; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        for (int j = 0; j < QK8_0; j++)
            out[b * QK8_0 + j] = (double)d * roundf(xb[j] * id);
    }
}

/* out[i][r] must lie within a rigorous bound of the float64 product of the weights and the
 * activations as they meet them (quantised for Q4_0 and Q8_0): float rounding of any summation order,
 * cols + 2 roundings of Σ|w x|. */
static void check_matmul(const char *what, const float *out, const float *x, int n,
                         const TestMat *m, const float *bias, double *bounds)
{
    int rows = m->W.rows, cols = m->W.cols;
    double gamma = (cols + 2) * 0x1p-24;
    double *xd = g_new(double, cols);
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * cols;
        if (m->W.type == GGML_TYPE_Q8_0 || m->W.type == GGML_TYPE_Q4_0)
            ref_quantize_x(xi, xd, cols);
        else
            for (int j = 0; j < cols; j++)
                xd[j] = xi[j];
        for (int r = 0; r < rows; r++) {
            const double *w = m->ref + (size_t)r * cols;
            double ref = bias ? bias[r] : 0, abs_sum = bias ? fabs(bias[r]) : 0;
            for (int j = 0; j < cols; j++) {
                ref += w[j] * xd[j];
                abs_sum += fabs(w[j] * xd[j]);
            }
            double bound = gamma * abs_sum + 1e-30;
            double err = fabs(out[(size_t)i * rows + r] - ref);
            if (bounds)
                bounds[(size_t)i * rows + r] = bound;
            worst = MAX(worst, err / bound);
            if (!(err <= bound) && bad++ < 3)
                g_test_fail_printf("%s: out[%d][%d] = %.9g, reference %.9g, error %.3g > bound %.3g",
                                   what, i, r, out[(size_t)i * rows + r], ref, err, bound);
        }
    }
    g_free(xd);
    g_test_message("%s: worst error / bound %.3g", what, worst);
}

static const char *type_name(GgmlType t)
{
    return t == GGML_TYPE_F32 ? "F32" : t == GGML_TYPE_F16 ? "F16" : t == GGML_TYPE_Q4_0 ? "Q4_0" : "Q8_0";
}

static void run_matmul_case(GgmlType type, int rows, int cols, int n, gboolean with_bias)
{
    TestMat m = make_mat(type, rows, cols);
    float *x = g_new(float, (size_t)n * cols), *out = g_new(float, (size_t)n * rows);
    float *bias = with_bias ? g_new(float, rows) : NULL;
    float *one = g_new(float, rows);
    double *bound_n = g_new(double, (size_t)n * rows), *bound_1 = g_new(double, rows);
    fill_uniform(x, (size_t)n * cols, -1, 1);
    if (bias)
        fill_uniform(bias, rows, -2, 2);
    Workspace ws;
    workspace_init(&ws, cols, n);
    char *what = g_strdup_printf("%s rows %d cols %d n %d bias %d", type_name(type), rows, cols,
                                 n, with_bias);
    for (size_t i = 0; i < (size_t)n * rows; i++)
        out[i] = NAN; /* every element must be written */
    matmul(out, x, n, &m.W, bias, &ws);
    check_matmul(what, out, x, n, &m, bias, bound_n);

    /* Decoding one row of x gives the batch's row, within the sum of both bounds. */
    int i = n / 2;
    matmul(one, x + (size_t)i * cols, 1, &m.W, bias, &ws);
    check_matmul(what, one, x + (size_t)i * cols, 1, &m, bias, bound_1);
    for (int r = 0; r < rows; r++) {
        double gap = fabs(one[r] - out[(size_t)i * rows + r]);
        if (!(gap <= bound_1[r] + bound_n[(size_t)i * rows + r]))
            g_test_fail_printf("%s: row %d: n == 1 gives %.9g, n > 1 %.9g", what, r, one[r],
                               out[(size_t)i * rows + r]);
    }

    g_free(what);
    workspace_free(&ws);
    g_free(x);
    g_free(out);
    g_free(one);
    g_free(bound_n);
    g_free(bound_1);
    g_free(bias);
    free_mat(&m);
}

static void test_matmul_type(gconstpointer data)
{
    GgmlType type = GPOINTER_TO_INT(data);
    /* 3, 5, 13 and 160 blocks: the quantised dots take 8 blocks at a time, then the rest. */
    const int cols[] = { 96, 160, 416, 5120 }, ns[] = { 1, 3, 300 };
    for (size_t c = 0; c < G_N_ELEMENTS(cols); c++)
        for (size_t k = 0; k < G_N_ELEMENTS(ns); k++)
            run_matmul_case(type, 37, cols[c], ns[k], (c + k) % 2);
    /* Several GEMM tiles, the last one partial; and a single row. */
    run_matmul_case(type, 600, 96, 5, TRUE);
    run_matmul_case(type, 600, 160, 1, FALSE);
    run_matmul_case(type, 1, 64, 4, TRUE);
}

/* Runs the calling test again in a child process with `env_var` set (the kernel choice is made
 * once per process): COBRA_NO_SIMD switches to the portable C, COBRA_NO_AVX512 to AVX-VNNI or
 * AVX2 on an AVX-512 machine, COBRA_NO_AMX to the AVX-512 VNNI GEMM on an AMX machine (elsewhere
 * they change nothing). */
static void run_in_child_with(const char *env_var)
{
    g_setenv(env_var, "1", TRUE);
    g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_INHERIT_STDERR);
    g_unsetenv(env_var);
    g_test_trap_assert_passed();
}

/* The matmul checks on the narrower kernels. */
static void test_matmul_narrower(gconstpointer data)
{
    if (g_test_subprocess()) {
        for (int t = 0; t < 4; t++) {
            GgmlType type = (GgmlType[]){ GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0,
                                          GGML_TYPE_Q4_0 }[t];
            run_matmul_case(type, 37, 160, 1, TRUE);
            run_matmul_case(type, 37, 96, 3, FALSE);
        }
        run_matmul_case(GGML_TYPE_Q8_0, 45, 160, 13, TRUE);
        run_matmul_case(GGML_TYPE_Q4_0, 45, 160, 13, TRUE);
        return;
    }
    run_in_child_with(data);
}

static void test_workspace_grows(void)
{
    /* A workspace sized for narrower matrices must still give correct results. */
    TestMat m = make_mat(GGML_TYPE_Q8_0, 300, 512);
    float x[3 * 512], out[3 * 300];
    fill_uniform(x, G_N_ELEMENTS(x), -1, 1);
    Workspace ws;
    workspace_init(&ws, 32, 1);
    matmul(out, x, 3, &m.W, NULL, &ws);
    check_matmul("grown workspace, n 3", out, x, 3, &m, NULL, NULL);
    matmul(out, x, 1, &m.W, NULL, &ws);
    check_matmul("grown workspace, n 1", out, x, 1, &m, NULL, NULL);
    workspace_free(&ws);
    free_mat(&m);
}

static void test_mat_rows(void)
{
    for (int t = 0; t < 4; t++) {
        GgmlType type =
            (GgmlType[]){ GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0 }[t];
        TestMat m = make_mat(type, 5, 96);
        GgufTensor tensor = { .name = "w", .n_dims = 2, .ne = { 96, 5, 1, 1 }, .type = type,
                              .data = m.data };
        Mat W = mat_from_tensor(&tensor);
        g_assert_cmpint(W.rows, ==, 5);
        g_assert_cmpint(W.cols, ==, 96);
        g_assert_true(W.data == m.data && W.type == type);
        float row[96];
        for (int r = 0; r < 5; r++) {
            mat_get_row(&W, r, row);
            for (int j = 0; j < 96; j++)
                if ((double)row[j] != m.ref[r * 96 + j])
                    g_test_fail_printf("%s row %d col %d: %g, expected %g", type_name(type), r, j,
                                       row[j], m.ref[r * 96 + j]);
        }
        free_mat(&m);
    }
}

/* ---- norms and element-wise kernels ------------------------------------------------------- */

static void ref_norm(double *out, const float *x, const float *w, const float *b, int n, int dim,
                     double eps, gboolean rms)
{
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        double mean = 0, var = 0;
        if (!rms) {
            for (int j = 0; j < dim; j++)
                mean += xi[j];
            mean /= dim;
        }
        for (int j = 0; j < dim; j++)
            var += (xi[j] - mean) * (xi[j] - mean);
        double inv = 1 / sqrt(var / dim + eps);
        for (int j = 0; j < dim; j++)
            out[(size_t)i * dim + j] = (xi[j] - mean) * inv * w[j] + (b ? b[j] : 0);
    }
}

static void check_rel(const char *what, const float *got, const double *ref, size_t n, double tol)
{
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        max_err = MAX(max_err, isnan(got[i]) ? INFINITY : fabs(got[i] - ref[i]));
        max_ref = MAX(max_ref, fabs(ref[i]));
    }
    double e = max_ref > 0 ? max_err / max_ref : max_err;
    g_test_message("%s: relative error %.3g (bound %.3g)", what, e, tol);
    if (!(e <= tol))
        g_test_fail_printf("%s: relative error %.3g exceeds %.3g", what, e, tol);
}

static void test_norms(void)
{
    const int dims[] = { 96, 160, 5120 }, ns[] = { 1, 3, 37 };
    for (size_t d = 0; d < G_N_ELEMENTS(dims); d++)
        for (size_t k = 0; k < G_N_ELEMENTS(ns); k++) {
            int n = ns[k], dim = dims[d];
            size_t len = (size_t)n * dim;
            float *x = g_new(float, len), *out = g_new(float, len), w[5120], b[5120];
            double *ref = g_new(double, len);
            /* An offset makes the mean large next to the spread, which float statistics miss. */
            fill_uniform(x, len, 90, 110);
            fill_uniform(w, dim, -2, 2);
            fill_uniform(b, dim, -1, 1);
            char *what = g_strdup_printf("layernorm %d x %d", n, dim);
            layernorm(out, x, w, b, n, dim, 1e-6f);
            ref_norm(ref, x, w, b, n, dim, 1e-6f, FALSE);
            check_rel(what, out, ref, len, 1e-6);
            g_free(what);
            what = g_strdup_printf("rmsnorm %d x %d", n, dim);
            rmsnorm(out, x, w, n, dim, 1e-5f);
            ref_norm(ref, x, w, NULL, n, dim, 1e-5f, TRUE);
            check_rel(what, out, ref, len, 1e-6);
            /* in place */
            rmsnorm(x, x, w, n, dim, 1e-5f);
            check_rel(what, x, ref, len, 1e-6);
            g_free(what);
            g_free(x);
            g_free(out);
            g_free(ref);
        }
    /* eps sits inside the square root: a zero row gives 0, not NaN. */
    float z[8] = { 0 }, w[8] = { 1, 1, 1, 1, 1, 1, 1, 1 }, o[8];
    rmsnorm(o, z, w, 1, 8, 1e-5f);
    for (int j = 0; j < 8; j++)
        g_assert_cmpfloat(o[j], ==, 0.0f);
}

static void test_activations(void)
{
    size_t len = 100003;
    float *x = g_new(float, len), *y = g_new(float, len);
    double *ref = g_new(double, len);
    fill_uniform(x, len, -12, 12);
    x[0] = 0;
    x[1] = -30;
    x[2] = 30;

    memcpy(y, x, len * sizeof(float));
    gelu(y, len);
    for (size_t i = 0; i < len; i++)
        ref[i] = 0.5 * x[i] * (1 + erf(x[i] / sqrt(2.0)));
    check_rel("gelu", y, ref, len, 1e-6);
    /* gelu is exact-erf, not the tanh approximation: they differ by ~1e-4 at 1.5 */
    float g = 1.5f;
    gelu(&g, 1);
    g_assert_cmpfloat(fabs(g - 0.5 * 1.5 * (1 + erf(1.5 / sqrt(2.0)))), <, 1e-6);

    memcpy(y, x, len * sizeof(float));
    silu(y, len);
    for (size_t i = 0; i < len; i++)
        ref[i] = x[i] / (1 + exp(-(double)x[i]));
    check_rel("silu", y, ref, len, 1e-6);

    float v[3] = { -30, 0, 30 };
    for (int i = 0; i < 3; i++)
        g_assert_cmpfloat(fabs(softplus(v[i]) - log1p(exp((double)v[i]))), <=,
                          1e-6 * MAX(1, fabs(v[i])));
    g_free(x);
    g_free(y);
    g_free(ref);
}

static void test_softmax(void)
{
    const int lens[] = { 1, 7, 577, 50280 };
    for (size_t k = 0; k < G_N_ELEMENTS(lens); k++) {
        int len = lens[k];
        float *x = g_new(float, len), *y = g_new(float, len);
        double *ref = g_new(double, len);
        /* large logits: exp overflows in float unless the max is subtracted */
        fill_uniform(x, len, 80, 120);
        memcpy(y, x, len * sizeof(float));
        softmax(y, len);
        double max = -INFINITY, sum = 0;
        for (int i = 0; i < len; i++)
            max = MAX(max, x[i]);
        for (int i = 0; i < len; i++)
            sum += ref[i] = exp(x[i] - max);
        for (int i = 0; i < len; i++)
            ref[i] /= sum;
        char *what = g_strdup_printf("softmax %d", len);
        check_rel(what, y, ref, len, 1e-5);
        g_free(what);
        g_free(x);
        g_free(y);
        g_free(ref);
    }
}

/* attention() against softmax(scale q kᵀ) v in float64, head by head, with T tokens of n_heads
 * heads of hd, into rows wider than the heads (the extra columns must stay untouched); and the
 * same bits with 1 and 2 threads. */
static void run_attention_case(int T, int n_heads, int hd)
{
    const int C = n_heads * hd, ldo = C + 3;
    const float scale = 1.0f / sqrtf((float)hd);
    float *qkv = g_new(float, (size_t)T * 3 * C), *out[2];
    float *scratch = g_new0(float, attention_scratch_floats(T, n_heads, hd, 2));
    double *ref = g_new(double, (size_t)T * C), *p = g_new(double, T);
    /* wide logits, so the softmax is far from uniform */
    fill_uniform(qkv, (size_t)T * 3 * C, -2, 2);
    int saved = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        out[t] = g_new(float, (size_t)T * ldo);
        for (size_t i = 0; i < (size_t)T * ldo; i++)
            out[t][i] = 1234.5f;
        omp_set_num_threads(t + 1);
        attention(out[t], ldo, qkv, T, n_heads, hd, scale, scratch);
    }
    omp_set_num_threads(saved);
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < T; i++) {
            const float *q = qkv + (size_t)i * 3 * C + h * hd;
            double max = -INFINITY, sum = 0;
            for (int j = 0; j < T; j++) {
                const float *k = qkv + (size_t)j * 3 * C + C + h * hd;
                double s = 0;
                for (int d = 0; d < hd; d++)
                    s += (double)q[d] * k[d];
                p[j] = s * scale;
                max = MAX(max, p[j]);
            }
            for (int j = 0; j < T; j++)
                sum += p[j] = exp(p[j] - max);
            for (int d = 0; d < hd; d++) {
                double o = 0;
                for (int j = 0; j < T; j++)
                    o += p[j] / sum * qkv[(size_t)j * 3 * C + 2 * C + h * hd + d];
                ref[(size_t)i * C + h * hd + d] = o;
            }
        }
    float *got = g_new(float, (size_t)T * C);
    gboolean untouched = TRUE;
    for (int i = 0; i < T; i++) {
        memcpy(got + (size_t)i * C, out[0] + (size_t)i * ldo, C * sizeof(float));
        for (int c = C; c < ldo; c++)
            untouched &= out[0][(size_t)i * ldo + c] == 1234.5f;
    }
    char *what = g_strdup_printf("attention T %d, %d heads of %d", T, n_heads, hd);
    check_rel(what, got, ref, (size_t)T * C, 1e-5);
    if (!untouched)
        g_test_fail_printf("%s: wrote past the heads' columns", what);
    if (memcmp(out[0], out[1], (size_t)T * ldo * sizeof(float)) != 0)
        g_test_fail_printf("%s: 1 and 2 threads differ", what);
    g_free(what);
    g_free(got);
    g_free(out[0]);
    g_free(out[1]);
    g_free(p);
    g_free(ref);
    g_free(scratch);
    g_free(qkv);
}

/* Shapes that leave partial row tiles and partial panels on every path (tiles of 4, 6 or 12
 * rows; panels of 8, 16 or 32 columns), the two real head sizes (64, 72) and a lone token. */
static void run_attention_cases(void)
{
    const int shapes[][3] = { { 37, 3, 72 }, { 50, 2, 64 }, { 13, 2, 5 }, { 1, 2, 8 },
                              { 130, 1, 40 } };
    for (size_t i = 0; i < G_N_ELEMENTS(shapes); i++)
        run_attention_case(shapes[i][0], shapes[i][1], shapes[i][2]);
}

static void test_attention(gconstpointer data)
{
    if (!data || g_test_subprocess())
        run_attention_cases();
    else
        run_in_child_with(data);
}

static void test_rows_and_add(void)
{
    int n = 37, dim = 160;
    size_t len = (size_t)n * dim;
    float *x = g_new(float, len), *y = g_new(float, len), *z = g_new(float, len), gamma[160];
    double *ref = g_new(double, len);
    fill_uniform(x, len, -3, 3);
    fill_uniform(y, len, -3, 3);
    fill_uniform(gamma, dim, -1, 1);

    memcpy(z, x, len * sizeof(float));
    add(z, y, len);
    for (size_t i = 0; i < len; i++)
        ref[i] = (double)x[i] + y[i];
    check_rel("add", z, ref, len, 1e-7);

    memcpy(z, x, len * sizeof(float));
    scale_rows(z, gamma, n, dim);
    for (size_t i = 0; i < len; i++)
        ref[i] = (double)x[i] * gamma[i % dim];
    check_rel("scale_rows", z, ref, len, 1e-7);

    memcpy(z, x, len * sizeof(float));
    add_scaled_rows(z, y, gamma, n, dim);
    for (size_t i = 0; i < len; i++)
        ref[i] = x[i] + (double)gamma[i % dim] * y[i];
    check_rel("add_scaled_rows", z, ref, len, 1e-6);
    g_free(x);
    g_free(y);
    g_free(z);
    g_free(ref);
}

/* ---- threads ------------------------------------------------------------------------------------ */

static void test_thread_counts(void)
{
    int rows = 300, cols = 512, n = 3;
    size_t len = (size_t)rows * cols;
    float *x = g_new(float, (size_t)n * cols), *res[2][7];
    fill_uniform(x, (size_t)n * cols, -1, 1);
    TestMat mats[4] = { make_mat(GGML_TYPE_F32, rows, cols), make_mat(GGML_TYPE_F16, rows, cols),
                        make_mat(GGML_TYPE_Q8_0, rows, cols), make_mat(GGML_TYPE_Q4_0, rows, cols) };
    float *big = g_new(float, len), w[512], b[512];
    fill_uniform(big, len, -5, 5);
    fill_uniform(w, cols, -1, 1);
    fill_uniform(b, cols, -1, 1);
    Workspace ws;
    workspace_init(&ws, cols, n);
    int saved = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        g_assert_cmpint(ops_threads(), ==, t + 1);
        for (int k = 0; k < 3; k++) {
            res[t][k] = g_new(float, rows);
            matmul(res[t][k], x, 1, &mats[k].W, NULL, &ws);
        }
        res[t][3] = g_new(float, len);
        layernorm(res[t][3], big, w, b, rows, cols, 1e-6f);
        res[t][4] = g_new(float, (size_t)n * rows);
        matmul(res[t][4], x, n, &mats[2].W, NULL, &ws);
        res[t][5] = g_new(float, rows);
        matmul(res[t][5], x, 1, &mats[3].W, NULL, &ws);
        res[t][6] = g_new(float, (size_t)n * rows);
        matmul(res[t][6], x, n, &mats[3].W, NULL, &ws);
    }
    omp_set_num_threads(saved);
    /* Decoding, the int8 GEMM and norms split work by rows, so every thread count gives the same
     * bits. */
    for (int k = 0; k < 7; k++) {
        size_t m = k < 3 || k == 5 ? (size_t)rows : k == 3 ? len : (size_t)n * rows;
        if (memcmp(res[0][k], res[1][k], m * sizeof(float)) != 0)
            g_test_fail_printf("kernel %d: 1 and 2 threads give different results", k);
    }
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 7; k++)
            g_free(res[t][k]);
    for (int k = 0; k < 4; k++)
        free_mat(&mats[k]);
    workspace_free(&ws);
    g_free(x);
    g_free(big);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    rng = g_rand_new_with_seed(20240501);
    g_test_add_func("/ops/fp16/all-halves", test_fp16_all_halves);
    g_test_add_func("/ops/fp16/rounding", test_fp16_rounding);
    g_test_add_data_func("/ops/matmul/f32", GINT_TO_POINTER(GGML_TYPE_F32), test_matmul_type);
    g_test_add_data_func("/ops/matmul/f16", GINT_TO_POINTER(GGML_TYPE_F16), test_matmul_type);
    g_test_add_data_func("/ops/matmul/q8_0", GINT_TO_POINTER(GGML_TYPE_Q8_0), test_matmul_type);
    g_test_add_data_func("/ops/matmul/q4_0", GINT_TO_POINTER(GGML_TYPE_Q4_0), test_matmul_type);
    g_test_add_data_func("/ops/matmul/portable", "COBRA_NO_SIMD", test_matmul_narrower);
    g_test_add_data_func("/ops/matmul/no-avx512", "COBRA_NO_AVX512", test_matmul_narrower);
    g_test_add_data_func("/ops/matmul/no-amx", "COBRA_NO_AMX", test_matmul_narrower);
    g_test_add_func("/ops/matmul/workspace-grows", test_workspace_grows);
    g_test_add_func("/ops/mat-rows", test_mat_rows);
    g_test_add_func("/ops/norms", test_norms);
    g_test_add_func("/ops/activations", test_activations);
    g_test_add_func("/ops/softmax", test_softmax);
    g_test_add_data_func("/ops/attention", NULL, test_attention);
    g_test_add_data_func("/ops/attention/portable", "COBRA_NO_SIMD", test_attention);
    g_test_add_data_func("/ops/attention/no-avx512", "COBRA_NO_AVX512", test_attention);
    g_test_add_func("/ops/rows-and-add", test_rows_and_add);
    g_test_add_func("/ops/threads", test_thread_counts);
    int rc = g_test_run();
    g_rand_free(rng);
    return rc;
}
