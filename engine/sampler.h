/* sampler.h - next-token choice: greedy, or temperature / top-k / top-p sampling with a seeded
 * generator, and a repetition penalty. */
#ifndef COBRA_SAMPLER_H
#define COBRA_SAMPLER_H

#include <stdint.h>

#include "cobra.h"

typedef struct {
    CobraParams params;
    uint64_t rng;             /* xorshift state from params.seed */
    int n_vocab;
    float *probs;             /* [n_vocab] */
    int *idx;                 /* [n_vocab] */
} Sampler;

void sampler_init(Sampler *s, const CobraParams *params, int n_vocab);
void sampler_free(Sampler *s);
/* Choose the next id from logits[n_vocab] (modified in place), given the ids generated so far. */
int sampler_sample(Sampler *s, float *logits, const int32_t *history, int n_history);

#endif
