// CPU kernels of the convex BP engine (dstrain/inference/flat.py): the start and the read-out of
// a pair group, where numpy needs several passes over the batch's pair tables (a max, an exp
// into a block, a copy into the slots; outer products, a multiply, a copy out) and these make
// one.  Each pair's entries are contiguous wherever they lie, so a pair is given by the offset
// of its first entry (in entries), whatever the layout: views of the potentials, slot-major
// tables (FlatBP._view_tables), rows reordered (FlatBP._storage).  Every pair is computed on
// its own: its bits do not depend on which pairs a call is given.
//
// Built on first use by cpu_kernels.py (C11, -O3): on x86-64 glibc the exp loops call libmvec's
// vector exp, and each kernel is cloned for AVX-512, AVX2 and the baseline, picked at load time.
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((simd("notinbranch"))) double exp(double);   // libmvec has the vector variants
#define CLONED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONED
#endif

// the largest of n > 0 entries (NaN-free inputs: the compiler may then use vector max)
CLONED __attribute__((optimize("finite-math-only", "no-signed-zeros")))
static double largest(const double *x, int64_t n) {
    double m = x[0];
    for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

// tables + table_at[k] = exp(f / c) for each pair k, f its `size` potentials at potentials +
// potential_at[k], c = scale[k], where the pair's largest f / c lies in [-below, above] (then
// top[k] = 0), else exp((f - max f) / c) (top[k] = max f).  With one_scale every c is the same
// and the division is a multiplication by inverse = 1 / c (as numpy's path does).
CLONED void pair_tables(const double *potentials, const int64_t *potential_at, double *tables,
                        const int64_t *table_at, int64_t pairs, int64_t size, const double *scale,
                        int one_scale, double inverse, double above, double below, double *top) {
    for (int64_t k = 0; k < pairs; ++k) {
        const double *f = potentials + potential_at[k];
        double *t = tables + table_at[k];
        const double c = scale[k];
        const double m = largest(f, size);
        if (m > above * c || m < -below * c) {
            top[k] = m;
            for (int64_t i = 0; i < size; ++i) t[i] = exp((f[i] - m) / c);
        } else {
            top[k] = 0.0;
            if (one_scale)
                for (int64_t i = 0; i < size; ++i) t[i] = exp(f[i] * inverse);
            else
                for (int64_t i = 0; i < size; ++i) t[i] = exp(f[i] / c);
        }
    }
}

// beliefs + belief_at[k] = t * (w_a / sum) w_b^T for each pair k: t its n_a x n_b table at
// tables + table_at[k], w_a[k] (n_a), w_b[k] (n_b) its weights, sums[k] its sum; each entry
// t * ((w_a / sum) * w_b), the products in the order numpy's path makes them (the same bits).
CLONED void pair_beliefs(const double *tables, const int64_t *table_at, double *beliefs,
                         const int64_t *belief_at, int64_t pairs, int64_t n_a, int64_t n_b,
                         const double *w_a, const double *w_b, const double *sums) {
    for (int64_t k = 0; k < pairs; ++k) {
        const double *t = tables + table_at[k];
        const double *a = w_a + k * n_a, *b = w_b + k * n_b;
        double *out = beliefs + belief_at[k];
        for (int64_t i = 0; i < n_a; ++i) {
            const double scaled = a[i] / sums[k];
            for (int64_t j = 0; j < n_b; ++j) out[i * n_b + j] = t[i * n_b + j] * (scaled * b[j]);
        }
    }
}
