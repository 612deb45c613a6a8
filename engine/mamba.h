/* mamba.h - the Mamba-1 language model: chunked prefill over input embeddings and the
 * recurrent single-token step, with constant-size state. */
#ifndef COBRA_MAMBA_H
#define COBRA_MAMBA_H

#include <glib.h>

#include "gguf.h"
#include "ops.h"

typedef struct {
    const float *norm;        /* [d] RMSNorm weight */
    Mat in_proj;              /* [2di][d]: x rows then z rows */
    const float *conv_w;      /* [di][dc]: tap dc-1 hits the current token */
    const float *conv_b;      /* [di] */
    Mat x_proj;               /* [r+2ds][di]: dt, B, C rows */
    Mat dt_proj;              /* [di][r] */
    const float *dt_b;        /* [di] */
    const float *A;           /* [di][ds] = -exp(A_log) */
    const float *D;           /* [di] */
    Mat out_proj;             /* [d][di] */
} MambaLayer;

typedef struct {
    int d_model, d_inner, d_state, d_conv, dt_rank, n_layer;
    int n_vocab;              /* rows of the embedding / LM head */
    float eps;
    Mat embed;                /* [V][d] */
    Mat lm_head;              /* [V][d]: the embedding unless the file has output.weight */
    const float *norm_f;      /* [d] */
    MambaLayer *layers;       /* [n_layer] */
} Mamba;

gboolean mamba_load(Mamba *m, const GgufFile *f, GError **error);
void mamba_free(Mamba *m);

/* Recurrent state of one sequence. */
typedef struct {
    float *conv;              /* [n_layer][di][dc]: last dc pre-conv inputs, newest last */
    float *ssm;               /* [n_layer][di][ds] */
} MambaState;

void mamba_state_init(MambaState *s, const Mamba *m);   /* allocates, zeroed */
void mamba_state_reset(MambaState *s, const Mamba *m);  /* zero */
void mamba_state_copy(MambaState *dst, const MambaState *src, const Mamba *m);
void mamba_state_free(MambaState *s);

/* Activations, allocated once per session; prefill runs in chunks of at most max_chunk tokens
 * (memory ~ max_chunk * 7 d_inner floats; a few hundred keeps the GEMMs efficient). The Workspace
 * given to mamba_forward must be sized for mamba_max_cols(m) columns and max_chunk rows. */
typedef struct MambaBuffers MambaBuffers;
MambaBuffers *mamba_buffers_new(const Mamba *m, int max_chunk);
void mamba_buffers_free(MambaBuffers *b);
int mamba_max_cols(const Mamba *m);

/* out[n][d] = embedding rows of ids (ids already checked to be < n_vocab). */
void mamba_embed(const Mamba *m, const int32_t *ids, int n, float *out);

/* Run n input embeddings x[n][d] through the model, continuing from state s and updating it.
 * hidden_out (optional, [n][d]) gets the output of norm_f at every position; logits (optional,
 * [V]) the logits after the last position. n == 1 is the recurrent step. cancel (optional) is a
 * flag another thread may set: checked before every layer, it makes the forward stop and return
 * FALSE, leaving s half-updated (the caller restores a saved state before using it again). */
gboolean mamba_forward(const Mamba *m, MambaState *s, const float *x, int n, float *hidden_out,
                       float *logits, MambaBuffers *b, Workspace *ws, const gint *cancel);

#endif
