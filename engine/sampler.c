/* sampler.c - next-token choice as mamba_ssm's generate() makes it: repetition penalty, then
 * greedy argmax, or temperature, top-k, top-p and a draw from a seeded xorshift64*. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void cobra_params_init(CobraParams *p)
{
    p->max_tokens = 64;
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->repeat_penalty = 1.0f;
    p->seed = 0;
}

/* splitmix64 spreads any seed (0 included) over the state; xorshift needs it non-zero. */
static uint64_t rng_seed(uint64_t seed)
{
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z ? z : 0x2545F4914F6CDD1Dull;
}

/* xorshift64*: a uniform double in [0, 1). */
static double rng_uniform(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (double)((x * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
}

void sampler_init(Sampler *s, const CobraParams *params, int n_vocab)
{
    s->params = *params;
    s->rng = rng_seed(params->seed);
    s->n_vocab = n_vocab;
    s->probs = g_new(float, n_vocab);
    s->idx = g_new(int, n_vocab);
}

void sampler_free(Sampler *s)
{
    g_clear_pointer(&s->probs, g_free);
    g_clear_pointer(&s->idx, g_free);
}

static int compare_ids(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* CTRL: each id generated so far (once, however often it occurs) has its logit divided by the
 * penalty when positive and multiplied by it when negative. */
static void apply_repeat_penalty(float *logits, int n_vocab, const int32_t *history,
                                 int n_history, float penalty)
{
    if (penalty == 1.0f || n_history <= 0)
        return;
    int32_t *ids = g_memdup2(history, (gsize)n_history * sizeof *ids);
    qsort(ids, n_history, sizeof *ids, compare_ids);
    for (int i = 0; i < n_history; i++) {
        int32_t id = ids[i];
        if ((i > 0 && id == ids[i - 1]) || id < 0 || id >= n_vocab)
            continue;
        logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
    }
    g_free(ids);
}

/* Highest logit first; the lower id among equals. NaN counts as -inf (callers clear it). */
static int argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

static gboolean ranks_before(const float *logits, int a, int b)
{
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

static void swap_int(int *a, int *b)
{
    int t = *a;
    *a = *b;
    *b = t;
}

/* Reorder idx[0..n) so that its first k entries are the k best by logit (in no order). */
static void select_top_k(const float *logits, int *idx, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int pivot = idx[lo + (hi - lo) / 2], i = lo, j = hi;
        while (i <= j) {
            while (ranks_before(logits, idx[i], pivot))
                i++;
            while (ranks_before(logits, pivot, idx[j]))
                j--;
            if (i <= j)
                swap_int(&idx[i++], &idx[j--]);
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* Candidates (probs[i], idx[i]) by probability, the lower id first among equals. */
static gboolean prob_before(const Sampler *s, int a, int b)
{
    return s->probs[a] > s->probs[b] || (s->probs[a] == s->probs[b] && s->idx[a] < s->idx[b]);
}

static void swap_candidates(Sampler *s, int a, int b)
{
    float p = s->probs[a];
    s->probs[a] = s->probs[b];
    s->probs[b] = p;
    swap_int(&s->idx[a], &s->idx[b]);
}

/* Move the candidates of [lo, hi) that rank before the middle one to the front, then it;
 * returns its new position. */
static int partition_by_prob(Sampler *s, int lo, int hi)
{
    swap_candidates(s, lo + (hi - lo) / 2, hi - 1);
    int q = lo;
    for (int i = lo; i < hi - 1; i++)
        if (prob_before(s, i, hi - 1))
            swap_candidates(s, i, q++);
    swap_candidates(s, q, hi - 1);
    return q;
}

static double mass_of(const Sampler *s, int lo, int hi)
{
    double m = 0;
    for (int i = lo; i < hi; i++)
        m += s->probs[i];
    return m;
}

/* Top-p over the n candidates of total mass `total`: moves the smallest most probable set whose
 * mass reaches top_p * total (at least one candidate) to the front and returns its size.
 * Quickselect on the cumulative mass: expected linear time, no sort of the vocabulary. */
static int keep_top_p(Sampler *s, int n, double total, double top_p)
{
    double need = top_p * total;
    int lo = 0, hi = n;
    while (lo < hi) {
        int q = partition_by_prob(s, lo, hi);
        double left = mass_of(s, lo, q);
        if (q > lo && left >= need) {
            hi = q; /* the set ends inside the left part */
        } else if (left + s->probs[q] >= need) {
            return q + 1; /* it ends at the pivot */
        } else {
            need -= left + s->probs[q]; /* it takes all of [lo, q] and more */
            lo = q + 1;
        }
    }
    return lo; /* rounding left `need` just above the whole mass: keep everything */
}

/* A draw from candidates idx[0..n) in proportion to their weights probs[], of sum `mass`. */
static int draw(Sampler *s, int n, double mass)
{
    double r = rng_uniform(&s->rng) * mass, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += s->probs[i];
        if (r < acc)
            return s->idx[i];
    }
    return s->idx[n - 1]; /* rounding left r just past the sum */
}

static int sample_temperature(Sampler *s, const float *logits)
{
    const CobraParams *p = &s->params;
    int n = s->n_vocab;
    for (int i = 0; i < n; i++)
        s->idx[i] = i;
    if (p->top_k > 0 && p->top_k < n) {
        select_top_k(logits, s->idx, n, p->top_k);
        n = p->top_k;
    }
    float max = logits[s->idx[0]];
    for (int i = 1; i < n; i++)
        max = fmaxf(max, logits[s->idx[i]]);
    if (!isfinite(max)) /* every candidate is -inf, or one is +inf: nothing to weigh */
        return argmax(logits, s->n_vocab);
    for (int i = 0; i < n; i++)
        s->probs[i] = expf((logits[s->idx[i]] - max) / p->temperature);
    double total = mass_of(s, 0, n);
    if (p->top_p < 1.0f) {
        n = keep_top_p(s, n, total, p->top_p);
        total = mass_of(s, 0, n);
    }
    return draw(s, n, total);
}

int sampler_sample(Sampler *s, float *logits, const int32_t *history, int n_history)
{
    for (int i = 0; i < s->n_vocab; i++)
        if (isnan(logits[i]))
            logits[i] = -INFINITY;
    apply_repeat_penalty(logits, s->n_vocab, history, n_history, s->params.repeat_penalty);
    if (!(s->params.temperature > 0))
        return argmax(logits, s->n_vocab);
    return sample_temperature(s, logits);
}
