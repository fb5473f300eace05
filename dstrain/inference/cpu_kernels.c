// CPU kernels of the convex BP engine.  For flat.py: the start and the read-out of a pair group,
// where numpy needs several passes over the batch's pair tables (a max, an exp into a block, a
// copy into the slots; outer products, a multiply, a copy out) and these make one.  For
// dense.py (one dense binary graph): its start, sweep, pair read-out and messages, each one call.
// Each pair's entries are contiguous wherever they lie, so a pair is given by the offset
// of its first entry (in entries), whatever the layout: views of the potentials, slot-major
// tables (FlatBP._view_tables), rows reordered (FlatBP._storage).  Every pair is computed on
// its own: its bits do not depend on which pairs a call is given, nor on the order it takes
// them in (`order`, a permutation of the pairs, or NULL: in the given order).
//
// Built on first use by cpu_kernels.py (C11, -O3); each kernel is cloned for AVX-512, AVX2 and
// the baseline, picked at load time.
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__)
#define CLONED __attribute__((target_clones("avx512f", "avx2", "default")))
#define VECTOR_MATH 1
#else
#define CLONED
#define VECTOR_MATH 0
#endif

// the largest of n > 0 entries (NaN-free inputs: the compiler may then use vector max)
CLONED __attribute__((optimize("finite-math-only", "no-signed-zeros")))
static double largest_of(const double *x, int64_t n) {
    double m = x[0];
    for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

// exp((x - shift) * factor), or with `divide` exp((x - shift) / factor), of n entries of x into
// y, and expm1, log1p and log of n entries in place.  libmvec's vector functions (glibc's, one
// per instruction set) may differ from the scalar ones in the last bits, so a vectorised loop's
// scalar tail or alignment peel would give an entry bits that depend on where it sits, and so
// on how a batch is split over threads.  These call one vector function for every entry, whole
// vectors and a last one padded: an entry's bits depend on its value alone.  Elsewhere (or
// expm1 and log1p with glibc older than 2.35) every entry takes the scalar function.
typedef void (*ScaledExp)(const double *, double *, int64_t, double, double, int);
typedef void (*Elementwise)(double *, int64_t);

static void exp_scalar(const double *x, double *y, int64_t n, double shift, double factor,
                       int divide) {
    for (int64_t i = 0; i < n; ++i) y[i] = exp(divide ? (x[i] - shift) / factor
                                                      : (x[i] - shift) * factor);
}
#define SCALAR_RUN(function)                                                                 \
    static void function##_scalar(double *x, int64_t n) {                                     \
        for (int64_t i = 0; i < n; ++i) x[i] = function(x[i]);                                \
    }
SCALAR_RUN(expm1)
SCALAR_RUN(log1p)
SCALAR_RUN(log)

#if VECTOR_MATH
#include <immintrin.h>
// one function of one instruction set, in place (pad: a value it is defined at, for the lanes
// past the end)
#define IN_PLACE(isa, T, W, load, store, set1, P, function, pad)                              \
    T P##function(T);                                                                         \
    __attribute__((target(isa))) static void function##_##W(double *x, int64_t n) {          \
        int64_t i = 0;                                                                        \
        for (; i + W <= n; i += W) store(x + i, P##function(load(x + i)));                   \
        if (i < n) {                                                                          \
            double last[W];                                                                   \
            store(last, set1(pad));                                                           \
            memcpy(last, x + i, (size_t)(n - i) * sizeof(double));                            \
            store(last, P##function(load(last)));                                             \
            memcpy(x + i, last, (size_t)(n - i) * sizeof(double));                            \
        }                                                                                     \
    }
// (one instruction set: its vector type, width, load, store, set1, sub, mul, div, name prefix)
#define VECTOR_RUNS(isa, T, W, load, store, set1, sub, mul, div, P)                           \
    T P##exp(T);                                                                              \
    __attribute__((target(isa))) static void exp_##W(const double *x, double *y, int64_t n,  \
                                                     double shift, double factor,             \
                                                     int divide) {                            \
        const T s = set1(shift), f = set1(factor);                                            \
        double last[W];                                                                       \
        for (int64_t i = 0; i < n; i += W) {                                                  \
            const int64_t m = n - i < W ? n - i : W;                                          \
            const double *from = x + i;                                                       \
            if (m < W) {                                                                      \
                store(last, set1(0.0));                                                       \
                from = memcpy(last, x + i, (size_t)m * sizeof(double));                       \
            }                                                                                 \
            const T z = divide ? div(sub(load(from), s), f) : mul(sub(load(from), s), f);     \
            if (m == W) store(y + i, P##exp(z));                                              \
            else { store(last, P##exp(z)); memcpy(y + i, last, (size_t)m * sizeof(double)); } \
        }                                                                                     \
    }                                                                                         \
    IN_PLACE(isa, T, W, load, store, set1, P, log, 1.0)                                       \
    VECTOR_RUNS_2_35(isa, T, W, load, store, set1, P)
#if __GLIBC_PREREQ(2, 35)
#define VECTOR_RUNS_2_35(isa, T, W, load, store, set1, P)                                     \
    IN_PLACE(isa, T, W, load, store, set1, P, expm1, 0.0)                                     \
    IN_PLACE(isa, T, W, load, store, set1, P, log1p, 0.0)
#else
#define VECTOR_RUNS_2_35(isa, T, W, load, store, set1, P)
#endif
VECTOR_RUNS("avx512f", __m512d, 8, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd,
            _mm512_sub_pd, _mm512_mul_pd, _mm512_div_pd, _ZGVeN8v_)
VECTOR_RUNS("avx2", __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
            _mm256_sub_pd, _mm256_mul_pd, _mm256_div_pd, _ZGVdN4v_)
VECTOR_RUNS("sse2", __m128d, 2, _mm_loadu_pd, _mm_storeu_pd, _mm_set1_pd, _mm_sub_pd,
            _mm_mul_pd, _mm_div_pd, _ZGVbN2v_)
#endif

static ScaledExp exp_run = exp_scalar;
static Elementwise expm1_run = expm1_scalar, log1p_run = log1p_scalar, log_run = log_scalar;

__attribute__((constructor)) static void pick_runs(void) {
#if VECTOR_MATH
    __builtin_cpu_init();
    const int wide = __builtin_cpu_supports("avx512f"), middle = __builtin_cpu_supports("avx2");
    exp_run = wide ? exp_8 : middle ? exp_4 : exp_2;
    log_run = wide ? log_8 : middle ? log_4 : log_2;
#if __GLIBC_PREREQ(2, 35)
    expm1_run = wide ? expm1_8 : middle ? expm1_4 : expm1_2;
    log1p_run = wide ? log1p_8 : middle ? log1p_4 : log1p_2;
#endif
#endif
}

// tables + table_at[k] = exp(f / c) for each pair k, f its `size` potentials at potentials +
// potential_at[k], c = scale[k], where the pair's largest f / c lies in [-below, above] (then
// top[k] = 0), else exp((f - max f) / c) (top[k] = max f).  With one_scale every c is the same
// and the division is a multiplication by inverse = 1 / c (as numpy's path does).
CLONED void pair_tables(const double *potentials, const int64_t *potential_at, double *tables,
                        const int64_t *table_at, int64_t pairs, int64_t size, const double *scale,
                        int one_scale, double inverse, double above, double below, double *top,
                        const int64_t *order) {
    for (int64_t i = 0; i < pairs; ++i) {
        const int64_t k = order ? order[i] : i;
        const double *f = potentials + potential_at[k];
        double *t = tables + table_at[k];
        const double c = scale[k];
        const double m = largest_of(f, size);
        // (x - 0 is x: the unshifted pairs' bits are those of exp(f * inverse), exp(f / c))
        if (m > above * c || m < -below * c) {
            top[k] = m;
            exp_run(f, t, size, m, c, 1);
        } else {
            top[k] = 0.0;
            exp_run(f, t, size, 0.0, one_scale ? inverse : c, !one_scale);
        }
    }
}

// beliefs + belief_at[k] = t * (w_a / sum) w_b^T for each pair k: t its n_a x n_b table at
// tables + table_at[k], w_a[k] (n_a), w_b[k] (n_b) its weights, sums[k] its sum; each entry
// t * ((w_a / sum) * w_b), the products in the order numpy's path makes them (the same bits).
CLONED void pair_beliefs(const double *tables, const int64_t *table_at, double *beliefs,
                         const int64_t *belief_at, int64_t pairs, int64_t n_a, int64_t n_b,
                         const double *w_a, const double *w_b, const double *sums,
                         const int64_t *order) {
    for (int64_t i = 0; i < pairs; ++i) {
        const int64_t k = order ? order[i] : i;
        const double *t = tables + table_at[k];
        const double *a = w_a + k * n_a, *b = w_b + k * n_b;
        double *out = beliefs + belief_at[k];
        for (int64_t r = 0; r < n_a; ++r) {
            const double scaled = a[r] / sums[k];
            for (int64_t j = 0; j < n_b; ++j) out[r * n_b + j] = t[r * n_b + j] * (scaled * b[j]);
        }
    }
}

// --- batches of one dense binary pairwise graph (dstrain/inference/dense.py) ------------------
// Arrays are samples last, `width` columns (the samples, then padding columns whose potentials
// count as 0); a pair p joins variables u < v, sitting at dense positions at_u[p] = u V + v and
// at_v[p] = v V + u; `inverse` and `scale` are 1 / (eps c_p) and eps c_p, or NULL where all are 1.
// Each number is formed by the operations numpy's path uses, in its order.

// start: w (P, width) the pairs' interactions (f10 + f01 - f00 - f11) / s (f: 4 width entries
// of scratch); pair_constant (width) sum_p f10 + f01 - f11; at both of a pair's positions of the
// (3, V V, width) stack WEC: max(w, 0), expm1(|w|), sign(w) s; minus_k (V V, width): f11 - f01
// at u's position, f11 - f10 at v's (the rows no pair sits at, `empty`, are zeroed); inner (V,
// width): f_i(1) - f_i(0) + sum_j minus_k[i V + j].  Each sample's potentials are one row of
// `row_length` entries: 2 V unaries, then 4 per pair.
CLONED void dense_start(const double *restrict potentials, int64_t samples, int64_t row_length,
                        int64_t width, int64_t V, int64_t P, const int64_t *restrict at_u,
                        const int64_t *restrict at_v, const int64_t *restrict empty,
                        int64_t empties, const double *restrict inverse,
                        const double *restrict scale, double *restrict f, double *restrict w,
                        double *restrict pair_constant, double *restrict WEC,
                        double *restrict minus_k, double *restrict inner) {
    const int64_t plane = V * V * width;
    double *restrict W = WEC, *restrict E = WEC + plane, *restrict C = WEC + 2 * plane;
    for (int64_t s = 0; s < width; ++s) pair_constant[s] = -0.0;
    for (int64_t e = 0; e < empties; ++e)
        for (int64_t s = 0; s < width; ++s) {
            const int64_t k = empty[e] * width + s;
            W[k] = E[k] = C[k] = minus_k[k] = 0.0;
        }
    for (int64_t p = 0; p < P; ++p) {
        double *restrict f00 = f, *restrict f01 = f + width;   // (scratch, pair by pair)
        double *restrict f10 = f + 2 * width, *restrict f11 = f + 3 * width;
        for (int64_t s = 0; s < samples; ++s) {   // (a gather: one row per sample)
            const double *x = potentials + s * row_length + 2 * V + 4 * p;
            f00[s] = x[0], f01[s] = x[1], f10[s] = x[2], f11[s] = x[3];
        }
        for (int64_t s = samples; s < width; ++s) f00[s] = f01[s] = f10[s] = f11[s] = 0.0;
        const int64_t u = at_u[p] * width, v = at_v[p] * width;   // (rows u != v)
        double *restrict W_u = W + u, *restrict W_v = W + v, *restrict E_u = E + u;
        double *restrict E_v = E + v, *restrict C_u = C + u, *restrict C_v = C + v;
        double *restrict minus_k_u = minus_k + u, *restrict minus_k_v = minus_k + v;
        // (times 1 where all scales are 1: exact, the same bits as no multiplication)
        const double factor = inverse ? inverse[p] : 1.0, size = scale ? scale[p] : 1.0;
        double *restrict interaction = w + p * width;
        for (int64_t s = 0; s < width; ++s) {   // (short loops: each one vectorised)
            double x = f10[s] + f01[s];
            x -= f00[s];
            x -= f11[s];
            interaction[s] = x * factor;
        }
        for (int64_t s = 0; s < width; ++s) {
            minus_k_u[s] = f11[s] - f01[s];
            minus_k_v[s] = f11[s] - f10[s];
            pair_constant[s] += f10[s] - minus_k_u[s];   // (from -0: the first term's bits)
        }
        for (int64_t s = 0; s < width; ++s) {
            const double x = interaction[s];
            W_u[s] = W_v[s] = x < 0.0 ? 0.0 : x;   // np.maximum(x, 0): NaN stays
            C_u[s] = C_v[s] = copysign(1.0, x) * size;
        }
        for (int64_t s = 0; s < width; ++s) E_u[s] = fabs(interaction[s]);
        expm1_run(E_u, width);
        for (int64_t s = 0; s < width; ++s) E_v[s] = E_u[s];
    }
    for (int64_t i = 0; i < V; ++i) {
        double *restrict row = inner + i * width;
        const double *restrict column = minus_k + i * V * width;
        for (int64_t s = 0; s < width; ++s) row[s] = column[s];
        for (int64_t j = 1; j < V; ++j)
            for (int64_t s = 0; s < width; ++s) row[s] += column[j * width + s];
        for (int64_t s = 0; s < samples; ++s)
            row[s] = (potentials[s * row_length + 2 * i + 1] - potentials[s * row_length + 2 * i])
                     + row[s];
        for (int64_t s = samples; s < width; ++s) row[s] = 0.0 + row[s];
    }
}

// read-out of the pairs from the shifted gaps H (V V, width): per pair and column the terms
// e^-w, e^h_v, e^h_u (h over s) and their product, total their sum; beliefs (the samples' rows
// of `belief_row` entries, a pair's four from 4 p) = terms / total; log_sum (width) += the sum
// over each block of `block` pairs of s log(total).  `work`: 6 width entries of scratch.
// Returns 1, having stopped, if some total is not finite (then the peaked read-out is needed).
CLONED int dense_pairs(const double *restrict H, const double *restrict w, int64_t samples,
                       int64_t width, int64_t P, const int64_t *restrict at_u,
                       const int64_t *restrict at_v, const double *restrict inverse,
                       const double *restrict scale, double *restrict beliefs,
                       int64_t belief_row, double *restrict log_sum, double *restrict work,
                       int64_t block) {
    double *restrict z0 = work, *restrict z1 = work + width, *restrict z2 = work + 2 * width;
    double *restrict z3 = work + 3 * width, *restrict total = work + 4 * width;
    double *restrict block_sums = work + 5 * width;
    for (int64_t p = 0; p < P; ++p) {
        const double *restrict h_u = H + at_u[p] * width, *restrict h_v = H + at_v[p] * width;
        const double *restrict x = w + p * width;
        const double factor = inverse ? inverse[p] : 1.0, size = scale ? scale[p] : 1.0;
        // (0 - x is -x, x * 1 is x: the same bits as numpy's negative and unscaled h)
        exp_run(x, z0, width, 0.0, -1.0, 0);
        exp_run(h_v, z1, width, 0.0, factor, 0);
        exp_run(h_u, z2, width, 0.0, factor, 0);
        int finite = 1;
        for (int64_t s = 0; s < width; ++s) {
            z3[s] = z1[s] * z2[s];
            double sum = z0[s] + z1[s];
            sum += z2[s];
            sum += z3[s];
            total[s] = sum;
            finite &= sum - sum == 0.0;   // (false for inf and NaN)
        }
        if (!finite) return 1;
        for (int64_t s = 0; s < samples; ++s) {
            double *out = beliefs + s * belief_row + 4 * p;
            out[0] = z0[s] / total[s], out[1] = z1[s] / total[s];
            out[2] = z2[s] / total[s], out[3] = z3[s] / total[s];
        }
        if (p % block == 0)   // (from -0: the block's first term's own bits)
            for (int64_t s = 0; s < width; ++s) block_sums[s] = -0.0;
        log_run(total, width);
        for (int64_t s = 0; s < width; ++s) block_sums[s] += total[s] * size;
        if (p % block == block - 1 || p == P - 1)
            for (int64_t s = 0; s < width; ++s) log_sum[s] += block_sums[s];
    }
    return 0;
}

// the messages, samples first (samples, edges, 2), from the gaps g (V V, width) at each edge's
// dense position: a max-0 binary message with gap g is (min(0, -g), min(0, g)).
CLONED void dense_messages(const double *restrict gaps, int64_t samples, int64_t width,
                           const int64_t *restrict edge_at, int64_t edges,
                           double *restrict messages) {
    for (int64_t s0 = 0; s0 < samples; s0 += 8) {   // (8 samples: one line of each gap row)
        const int64_t s1 = s0 + 8 < samples ? s0 + 8 : samples;
        for (int64_t e = 0; e < edges; ++e) {
            const double *restrict g = gaps + edge_at[e] * width;
            for (int64_t s = s0; s < s1; ++s) {
                const double one = 0.0 < g[s] ? 0.0 : g[s];   // np.minimum(g, 0): NaN stays
                messages[2 * (s * edges + e) + 1] = one;
                messages[2 * (s * edges + e)] = one - g[s];
            }
        }
    }
}

// one sweep's updates of the variables `order` (count of them, in turn) on the shifted gaps H
// (V, V, width), DenseBP._update's formulas in its order: with x = H[:, i] and, per neighbour j,
// t_j = C_ij log1p(E_ij / (1 + e^(x_j / s_ij + W_ij))), total = sum_j t_j + inner_i, and
// H[i, j] = R_ij total - t_j.  inverse (V V) 1 / s_ij (1 off the edges), or NULL where all are
// 1; ratio (V V) R_ij.  With `change`, returns the largest change of a message entry (min(0,
// -g), min(0, g)), g = H + K (minus_k = -K, (V V, width)), else 0.  work: 2 V + 1 rows of width.
CLONED double dense_sweep(double *restrict H, const double *restrict W,
                          const double *restrict E, const double *restrict C,
                          const double *restrict inner, const double *restrict minus_k,
                          const double *restrict inverse, const double *restrict ratio,
                          int64_t V, int64_t width, const int64_t *restrict order, int64_t count,
                          int change, double *restrict work) {
    double *restrict t = work, *restrict old = work + V * width;
    double *restrict total = work + 2 * V * width;
    double largest = 0.0;
    for (int64_t n = 0; n < count; ++n) {
        const int64_t i = order[n];
        const double *restrict W_i = W + i * V * width, *restrict E_i = E + i * V * width;
        const double *restrict C_i = C + i * V * width;
        for (int64_t j = 0; j < V; ++j) {   // x_j / s_ij + W_ij (x * 1 is x: numpy's unit sum)
            const double *restrict x = H + (j * V + i) * width;
            const double factor = inverse ? inverse[i * V + j] : 1.0;
            for (int64_t s = 0; s < width; ++s)
                t[j * width + s] = x[s] * factor + W_i[j * width + s];
        }
        exp_run(t, t, V * width, 0.0, 1.0, 0);
        for (int64_t k = 0; k < V * width; ++k) t[k] = E_i[k] / (t[k] + 1.0);
        log1p_run(t, V * width);
        for (int64_t k = 0; k < V * width; ++k) t[k] *= C_i[k];
        for (int64_t s = 0; s < width; ++s) total[s] = t[s];
        for (int64_t j = 1; j < V; ++j)
            for (int64_t s = 0; s < width; ++s) total[s] += t[j * width + s];
        for (int64_t s = 0; s < width; ++s) total[s] += inner[i * width + s];
        double *restrict row = H + i * V * width;
        if (change) memcpy(old, row, (size_t)(V * width) * sizeof(double));
        for (int64_t j = 0; j < V; ++j) {
            const double r = ratio[i * V + j];
            for (int64_t s = 0; s < width; ++s)
                row[j * width + s] = r * total[s] - t[j * width + s];
        }
        if (!change) continue;
        // min(|row - old|, max(|row - K|, |old - K|)) into t (free now), then its largest; a NaN
        // anywhere makes the change NaN (as numpy's minimum and maximum would): branch-free, so
        // that the loops are vectorised
        const double *restrict k_i = minus_k + i * V * width;
        int nan = 0;
        for (int64_t k = 0; k < V * width; ++k) {
            const double now = fabs(row[k] - old[k]);
            const double a = fabs(row[k] - k_i[k]), b = fabs(old[k] - k_i[k]);
            const double wider = a < b ? b : a;
            t[k] = wider < now ? wider : now;
            nan |= (now != now) | (a != a) | (b != b);
        }
        const double moved = nan ? NAN : largest_of(t, V * width);
        largest = (moved > largest || moved != moved) ? moved : largest;
    }
    return largest;
}
