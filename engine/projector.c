/* projector.c - Cobra's "fused-gelu-mlp": Linear(Fv, 4Fv) -> GELU -> Linear(4Fv, d) -> GELU ->
 * Linear(d, d), applied to each image token. */
#include "projector.h"

/* The Linear layer mm.{index}: weight [rows][cols] (any matrix type) and F32 bias [rows]. */
static gboolean require_linear(const GgufFile *f, int index, int rows, int cols, Mat *w,
                               const float **b, GError **error)
{
    char name[32];
    g_snprintf(name, sizeof name, "mm.%d.weight", index);
    if (!mat_require(f, name, rows, cols, GGUF_TYPES_MATRIX, w, error))
        return FALSE;
    g_snprintf(name, sizeof name, "mm.%d.bias", index);
    const int64_t nb = rows;
    const GgufTensor *tb = gguf_require_tensor(f, name, 1, &nb, GGUF_TYPES_F32, error);
    if (!tb)
        return FALSE;
    *b = tb->data;
    return TRUE;
}

gboolean projector_load(Projector *p, const GgufFile *f, int in_dim, int out_dim, GError **error)
{
    p->in_dim = in_dim;
    p->hidden_dim = 4 * in_dim;
    p->out_dim = out_dim;
    return require_linear(f, 0, p->hidden_dim, in_dim, &p->w0, &p->b0, error) &&
           require_linear(f, 2, out_dim, p->hidden_dim, &p->w2, &p->b2, error) &&
           require_linear(f, 4, out_dim, out_dim, &p->w4, &p->b4, error);
}

void projector_forward(const Projector *p, const float *in, int n, float *out, float *hidden,
                       Workspace *ws)
{
    float *h0 = hidden;                             /* [n][4Fv] */
    float *h2 = hidden + (size_t)n * p->hidden_dim; /* [n][d] */
    matmul(h0, in, n, &p->w0, p->b0, ws);
    gelu(h0, (size_t)n * p->hidden_dim);
    matmul(h2, h0, n, &p->w2, p->b2, ws);
    gelu(h2, (size_t)n * p->out_dim);
    matmul(out, h2, n, &p->w4, p->b4, ws);
}
