/* projector.h - Cobra's fused GELU MLP from the concatenated tower features to image tokens. */
#ifndef COBRA_PROJECTOR_H
#define COBRA_PROJECTOR_H

#include <glib.h>

#include "gguf.h"
#include "ops.h"

typedef struct {
    int in_dim;          /* Fv = C_dino + C_siglip */
    int hidden_dim;      /* 4 Fv */
    int out_dim;         /* d_model */
    Mat w0;              /* [4Fv][Fv] */
    const float *b0;     /* [4Fv] */
    Mat w2;              /* [d][4Fv] */
    const float *b2;     /* [d] */
    Mat w4;              /* [d][d] */
    const float *b4;     /* [d] */
} Projector;

gboolean projector_load(Projector *p, const GgufFile *f, int in_dim, int out_dim, GError **error);

/* out[n][d] = W4 GELU(W2 GELU(W0 in + b0) + b2) + b4; hidden must hold n * (4Fv + d) floats. */
void projector_forward(const Projector *p, const float *in, int n, float *out, float *hidden,
                       Workspace *ws);

#endif
