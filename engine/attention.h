/* attention.h - multi-head self-attention's two products, softmax(q kᵀ · scale) v, in the
 * engine's own float kernels (no BLAS). */
#ifndef COBRA_ATTENTION_H
#define COBRA_ATTENTION_H

#include <stddef.h>

/* Floats of the `scratch` attention() needs for T tokens and n_heads heads of head_dim, run by
 * up to `threads` threads: every head's k and v packed, and each thread's rows of q and scores.
 * Allocated once (zeroed), so that a session allocates nothing per frame. */
size_t attention_scratch_floats(int T, int n_heads, int head_dim, int threads);

/* out[t][h*hd + d] (rows ldo apart) = Σ_j softmax_j(scale · q_h[t] · k_h[j]) v_h[j][d] for every
 * head h < n_heads, where q_h[t], k_h[t], v_h[t] are the hd floats at columns h*hd, C + h*hd and
 * 2C + h*hd of row t of qkv[T][3C], C = n_heads * hd. `scratch` holds
 * attention_scratch_floats(T, n_heads, hd, threads) floats, threads >= the calling thread's
 * OpenMP thread count. Float32 throughout; every output is one thread's fixed-order sum, so
 * results do not depend on the thread count. */
void attention(float *out, int ldo, const float *qkv, int T, int n_heads, int hd, float scale,
               float *scratch);

#endif
