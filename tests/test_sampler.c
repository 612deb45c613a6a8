/* test_sampler.c - greedy, repetition penalty, temperature / top-k / top-p draws and their
 * frequencies, seeding, and degenerate logits. */
#include <math.h>
#include <string.h>

#include "sampler.h"
#include "support.h"

#define N_VOCAB 50280

static CobraParams params_with(float temperature, int top_k, float top_p, float penalty,
                               uint64_t seed)
{
    CobraParams p;
    cobra_params_init(&p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.repeat_penalty = penalty;
    p.seed = seed;
    return p;
}

static float *random_logits(int n, guint32 seed)
{
    GRand *rand = g_rand_new_with_seed(seed);
    float *logits = g_new(float, n);
    for (int i = 0; i < n; i++)
        logits[i] = (float)g_rand_double_range(rand, -10, 10);
    g_rand_free(rand);
    return logits;
}

/* One choice from a copy of logits (the sampler modifies its input). */
static int sample_copy(Sampler *s, const float *logits, const int32_t *history, int n_history)
{
    float *copy = g_memdup2(logits, (gsize)s->n_vocab * sizeof(float));
    int id = sampler_sample(s, copy, history, n_history);
    g_free(copy);
    return id;
}

/* Empirical frequency of each id over n_draws draws. */
static double *frequencies(const CobraParams *p, const float *logits, int n_vocab, int n_draws)
{
    Sampler s;
    sampler_init(&s, p, n_vocab);
    double *freq = g_new0(double, n_vocab);
    for (int i = 0; i < n_draws; i++) {
        int id = sample_copy(&s, logits, NULL, 0);
        g_assert_cmpint(id, >=, 0);
        g_assert_cmpint(id, <, n_vocab);
        freq[id] += 1.0 / n_draws;
    }
    sampler_free(&s);
    return freq;
}

static void softmax(const float *logits, int n, double temperature, double *out)
{
    double max = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++)
        max = fmax(max, logits[i]);
    for (int i = 0; i < n; i++)
        sum += out[i] = exp((logits[i] - max) / temperature);
    for (int i = 0; i < n; i++)
        out[i] /= sum;
}

static void assert_frequencies(const char *what, const double *freq, const double *want, int n)
{
    for (int i = 0; i < n; i++) {
        g_test_message("%s: id %d frequency %.4f, expected %.4f", what, i, freq[i], want[i]);
        if (fabs(freq[i] - want[i]) > 0.015)
            g_test_fail_printf("%s: id %d drawn with frequency %.4f, expected %.4f", what, i,
                               freq[i], want[i]);
    }
}

static void test_params_defaults(void)
{
    CobraParams p;
    memset(&p, 0xA5, sizeof p);
    cobra_params_init(&p);
    g_assert_cmpint(p.max_tokens, ==, 64);
    g_assert_cmpfloat(p.temperature, ==, 0);
    g_assert_cmpint(p.top_k, ==, 0);
    g_assert_cmpfloat(p.top_p, ==, 1);
    g_assert_cmpfloat(p.repeat_penalty, ==, 1);
    g_assert_cmpuint(p.seed, ==, 0);
}

static void test_greedy(void)
{
    CobraParams p = params_with(0, 0, 1, 1, 0);
    Sampler s;
    sampler_init(&s, &p, N_VOCAB);
    for (guint32 seed = 1; seed <= 5; seed++) {
        float *logits = random_logits(N_VOCAB, seed);
        int best = 0;
        for (int i = 1; i < N_VOCAB; i++)
            if (logits[i] > logits[best])
                best = i;
        g_assert_cmpint(sample_copy(&s, logits, NULL, 0), ==, best);
        logits[N_VOCAB - 1] = logits[3 + seed] = logits[best] + 1; /* a tie: the lower id */
        g_assert_cmpint(sample_copy(&s, logits, NULL, 0), ==, 3 + seed);
        g_free(logits);
    }
    sampler_free(&s);
}

/* CTRL penalty: positive logits divided, negative multiplied, each id once however often it
 * was generated; it applies before greedy choice too. */
static void test_repeat_penalty(void)
{
    float logits[] = { 2.0f, 1.9f, -1.0f, 0.5f };
    int32_t history[] = { 0, 2, 0, 0 };
    CobraParams p = params_with(0, 0, 1, 1.25f, 0);
    Sampler s;
    sampler_init(&s, &p, 4);
    g_assert_cmpint(sampler_sample(&s, logits, history, 4), ==, 1);
    g_assert_cmpfloat_with_epsilon(logits[0], 1.6f, 1e-6);
    g_assert_cmpfloat_with_epsilon(logits[1], 1.9f, 1e-6);
    g_assert_cmpfloat_with_epsilon(logits[2], -1.25f, 1e-6);
    sampler_free(&s);

    float plain[] = { 2.0f, 1.9f, -1.0f, 0.5f };
    p.repeat_penalty = 1.0f;
    sampler_init(&s, &p, 4);
    g_assert_cmpint(sampler_sample(&s, plain, history, 4), ==, 0);
    sampler_free(&s);

    /* when sampling, a penalised token is drawn less often */
    int32_t seen[] = { 3 };
    p = params_with(1.0f, 0, 1, 2.0f, 5);
    float neg[] = { -1, -1, -1, -1 };
    sampler_init(&s, &p, 4);
    int count3 = 0;
    for (int i = 0; i < 20000; i++)
        count3 += sample_copy(&s, neg, seen, 1) == 3;
    sampler_free(&s);
    double w = exp(-2.0), want = w / (3 * exp(-1.0) + w);
    g_test_message("penalised id drawn %.4f, expected %.4f", count3 / 20000.0, want);
    g_assert_cmpfloat(fabs(count3 / 20000.0 - want), <, 0.015);
}

static void test_top_k_1_is_greedy(void)
{
    float *logits = random_logits(N_VOCAB, 11);
    CobraParams greedy = params_with(0, 0, 1, 1, 0);
    Sampler g;
    sampler_init(&g, &greedy, N_VOCAB);
    int want = sample_copy(&g, logits, NULL, 0);
    sampler_free(&g);
    for (uint64_t seed = 0; seed < 20; seed++) {
        CobraParams p = params_with(1.5f, 1, 1, 1, seed);
        Sampler s;
        sampler_init(&s, &p, N_VOCAB);
        g_assert_cmpint(sample_copy(&s, logits, NULL, 0), ==, want);
        sampler_free(&s);
    }
    g_free(logits);
}

static void draw_sequence(uint64_t seed, const float *logits, int *out, int n)
{
    CobraParams p = params_with(1.0f, 0, 1, 1, seed);
    Sampler s;
    sampler_init(&s, &p, 1000);
    for (int i = 0; i < n; i++)
        out[i] = sample_copy(&s, logits, NULL, 0);
    sampler_free(&s);
}

static void test_seed(void)
{
    float *logits = g_new0(float, 1000); /* uniform: every draw is the generator's */
    int a[64], b[64], c[64], zero[64], one[64];
    draw_sequence(42, logits, a, 64);
    draw_sequence(42, logits, b, 64);
    draw_sequence(43, logits, c, 64);
    draw_sequence(0, logits, zero, 64);
    draw_sequence(1, logits, one, 64);
    g_assert_cmpmem(a, sizeof a, b, sizeof b);
    g_assert_true(memcmp(a, c, sizeof a) != 0);
    g_assert_true(memcmp(zero, one, sizeof a) != 0);
    int distinct = 0;
    for (int i = 0; i < 64; i++)
        distinct += a[i] != a[(i + 1) % 64];
    g_assert_cmpint(distinct, >, 50);
    g_free(logits);
}

/* 20k draws follow the softmax at temperature T. */
static void test_frequencies(void)
{
    float logits[] = { 1.0f, 2.0f, 0.5f, -1.0f, 3.0f };
    double want[5];
    const float temps[] = { 0.7f, 1.0f, 2.5f };
    for (int t = 0; t < 3; t++) {
        CobraParams p = params_with(temps[t], 0, 1, 1, 1234 + t);
        double *freq = frequencies(&p, logits, 5, 20000);
        softmax(logits, 5, temps[t], want);
        char *what = g_strdup_printf("T=%.1f", temps[t]);
        assert_frequencies(what, freq, want, 5);
        g_free(what);
        g_free(freq);
    }
}

/* top-k keeps the k highest logits and renormalises. */
static void test_top_k(void)
{
    float logits[] = { 1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.0f };
    CobraParams p = params_with(1.0f, 3, 1, 1, 9);
    double *freq = frequencies(&p, logits, 6, 20000);
    double want[6] = { 0 };
    float kept[] = { 2.0f, 3.0f, 2.0f };
    double w[3];
    softmax(kept, 3, 1.0, w);
    want[1] = w[0], want[4] = w[1], want[5] = w[2];
    assert_frequencies("top_k=3", freq, want, 6);
    g_free(freq);
}

/* top-p keeps the smallest head of the distribution whose mass reaches p. */
static void test_top_p(void)
{
    float logits[] = { logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f) };
    struct {
        float top_p;
        double want[4];
    } cases[] = {
        { 0.75f, { 0, 0.5 / 0.8, 0, 0.3 / 0.8 } },
        { 0.9f, { 0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95 } },
        { 0.3f, { 0, 1, 0, 0 } },
        { 1.0f, { 0.15, 0.5, 0.05, 0.3 } },
    };
    for (guint k = 0; k < G_N_ELEMENTS(cases); k++) {
        CobraParams p = params_with(1.0f, 0, cases[k].top_p, 1, 77 + k);
        double *freq = frequencies(&p, logits, 4, 20000);
        char *what = g_strdup_printf("top_p=%.2f", cases[k].top_p);
        assert_frequencies(what, freq, cases[k].want, 4);
        for (int i = 0; i < 4; i++)
            if (cases[k].want[i] == 0 && freq[i] != 0)
                g_test_fail_printf("%s: excluded id %d was drawn", what, i);
        g_free(what);
        g_free(freq);
    }
}

/* Only one finite logit: always that id, in every mode; all -inf still gives a valid id. */
static void test_neg_inf(void)
{
    float *logits = g_new(float, N_VOCAB);
    for (int i = 0; i < N_VOCAB; i++)
        logits[i] = -INFINITY;
    logits[31337] = -5.0f;
    logits[7] = NAN; /* treated as -inf */
    const CobraParams modes[] = {
        params_with(0, 0, 1, 1, 0),       params_with(1.0f, 0, 1, 1, 1),
        params_with(0.3f, 40, 0.9f, 1, 2), params_with(2.0f, 0, 0.5f, 1.3f, 3),
        params_with(1e-6f, 0, 1, 1, 4),
    };
    int32_t history[] = { 31337, 5 };
    for (guint m = 0; m < G_N_ELEMENTS(modes); m++) {
        Sampler s;
        sampler_init(&s, &modes[m], N_VOCAB);
        for (int i = 0; i < 50; i++)
            g_assert_cmpint(sample_copy(&s, logits, history, 2), ==, 31337);
        sampler_free(&s);
    }
    logits[31337] = -INFINITY;
    for (guint m = 0; m < G_N_ELEMENTS(modes); m++) {
        Sampler s;
        sampler_init(&s, &modes[m], N_VOCAB);
        g_assert_cmpint(sample_copy(&s, logits, NULL, 0), ==, 0);
        sampler_free(&s);
    }
    g_free(logits);
}

/* Sampling over the full vocabulary stays cheap: partial selection and a heap, no full sort. */
static void test_speed(void)
{
#ifdef __SANITIZE_ADDRESS__
    g_test_skip("timings mean nothing under AddressSanitizer");
    return;
#endif
    float *logits = random_logits(N_VOCAB, 3);
    for (int i = 0; i < N_VOCAB; i++)
        logits[i] *= 0.05f; /* nearly flat: top-p must keep most of the vocabulary */
    const CobraParams modes[] = {
        params_with(0.8f, 40, 0.95f, 1.1f, 1),
        params_with(1.0f, 0, 0.9f, 1.1f, 2),
        params_with(1.0f, 0, 1, 1, 3),
    };
    int32_t history[64];
    for (int i = 0; i < 64; i++)
        history[i] = i * 97;
    for (guint m = 0; m < G_N_ELEMENTS(modes); m++) {
        Sampler s;
        sampler_init(&s, &modes[m], N_VOCAB);
        GTimer *timer = g_timer_new();
        for (int i = 0; i < 100; i++)
            sample_copy(&s, logits, history, 64);
        double per_draw = g_timer_elapsed(timer, NULL) / 100;
        g_test_message("mode %u: %.3f ms per draw", m, per_draw * 1e3);
        g_assert_cmpfloat(per_draw, <, 5e-3);
        g_timer_destroy(timer);
        sampler_free(&s);
    }
    g_free(logits);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/sampler/params-defaults", test_params_defaults);
    g_test_add_func("/sampler/greedy", test_greedy);
    g_test_add_func("/sampler/repeat-penalty", test_repeat_penalty);
    g_test_add_func("/sampler/top-k-1-is-greedy", test_top_k_1_is_greedy);
    g_test_add_func("/sampler/seed", test_seed);
    g_test_add_func("/sampler/frequencies", test_frequencies);
    g_test_add_func("/sampler/top-k", test_top_k);
    g_test_add_func("/sampler/top-p", test_top_p);
    g_test_add_func("/sampler/neg-inf", test_neg_inf);
    g_test_add_func("/sampler/speed", test_speed);
    return g_test_run();
}
