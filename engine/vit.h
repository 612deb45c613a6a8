/* vit.h - the timm VisionTransformer forward shared by the DINOv2 and SigLIP towers, up to the
 * feature block (the blocks after it are never computed). */
#ifndef COBRA_VIT_H
#define COBRA_VIT_H

#include <glib.h>

#include "gguf.h"
#include "ops.h"

typedef struct {
    const float *ln1_w, *ln1_b;   /* [C] */
    Mat qkv;                      /* [3C][C]: q, k, v rows */
    const float *qkv_b;           /* [3C] */
    Mat attn_out;                 /* [C][C] */
    const float *attn_out_b;      /* [C] */
    const float *ls1;             /* [C] LayerScale, or NULL */
    const float *ln2_w, *ln2_b;   /* [C] */
    Mat ffn_up;                   /* [F][C] */
    const float *ffn_up_b;        /* [F] */
    Mat ffn_down;                 /* [C][F] */
    const float *ffn_down_b;      /* [C] */
    const float *ls2;             /* [C] LayerScale, or NULL */
} VitBlock;

typedef struct {
    char prefix[16];              /* "dino" / "siglip" */
    int image_size;               /* S */
    int patch;                    /* P */
    int grid;                     /* G = S / P */
    int dim;                      /* C */
    int ffn_dim;                  /* F */
    int n_heads, head_dim;
    int n_blocks;                 /* blocks computed = feature_layer + 1 */
    int n_prefix;                 /* class token + register tokens */
    float eps;
    float mean[3], std[3];
    Mat patch_embd;               /* [C][3*P*P], (channel, y, x) order, F32 */
    const float *patch_embd_b;    /* [C] */
    const float *pos_embd;        /* [G*G][C] */
    const float *cls;             /* [C] or NULL */
    const float *reg;             /* [n_reg][C] or NULL */
    VitBlock *blocks;             /* [n_blocks] */
} Vit;

/* Bind the tower `prefix` of f (see docs/model-format.md), checking every shape. */
gboolean vit_load(Vit *vit, const GgufFile *f, const char *prefix, GError **error);
void vit_free(Vit *vit);

/* Activations of one forward, allocated once per session. */
typedef struct VitBuffers VitBuffers;
VitBuffers *vit_buffers_new(const Vit *vit);
void vit_buffers_free(VitBuffers *b);
/* Widest matrix input and largest row count the tower gives matmul (for workspace_init). */
int vit_max_cols(const Vit *vit);
int vit_max_rows(const Vit *vit);

/* pixels[3][S][S] (normalised) -> out[G*G][C]: output of the feature block, prefix dropped.
 * cancel (optional) is a flag another thread may set: checked between blocks, it makes the
 * forward stop early and return FALSE (out is then not written). */
gboolean vit_forward(const Vit *vit, const float *pixels, float *out, VitBuffers *b, Workspace *ws,
                     const gint *cancel);

#endif
