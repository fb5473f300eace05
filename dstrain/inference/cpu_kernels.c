// CPU kernels of the convex BP engine.  For flat.py: the start and the read-out of a pair group,
// where numpy needs several passes over the batch's pair tables (a max, an exp into a block, a
// copy into the slots; outer products, a multiply, a copy out) and these make one; and a
// sweep's messages from the fast pairs (weights, table products and logs, one call) and the end
// of a colour's update (sums per region, new messages, their change), one call; and for the
// read-out the regions' values, softmax and beliefs, a pair group's weights, sums and beliefs.  For
// dense.py (one dense binary graph): its start, sweep, read-outs and messages, each one call.
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

// the largest of a row's n > 0 values as numpy's max gives it, but for which zero where +0 and
// -0 tie (no caller's output depends on it: x - 0 and x + 0 have the same bits for x != 0, and
// e^+-0 is 1): NaN where one is, else the largest, in vector compares
static double row_top(const double *x, int64_t n) {
    int nan = 0;
    for (int64_t j = 0; j < n; ++j) nan |= x[j] != x[j];
    if (!nan) return largest_of(x, n);
    double top = x[0];
    for (int64_t j = 1; j < n; ++j)
        if (top == top && !(x[j] <= top)) top = x[j];   // (the first NaN)
    return top;
}

// row_top for short rows, inline: one pass, the NaN check beside a plain max (the same result:
// NaN-free, the largest is the largest, but for which zero where +0 and -0 tie)
static inline __attribute__((always_inline)) double short_row_top(const double *x, int64_t n) {
    double top = x[0];
    int nan = x[0] != x[0];
    for (int64_t j = 1; j < n; ++j) {
        nan |= x[j] != x[j];
        top = x[j] > top ? x[j] : top;
    }
    return nan ? row_top(x, n) : top;
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

#if VECTOR_MATH
// the entries of a run from p before its first cache-line boundary (0 if p is on one): what a
// streaming writer stores through a masked store before its whole lines
static inline int64_t line_head(const double *p) {
    return (int64_t)(((64 - ((uintptr_t)p & 63)) & 63) / sizeof(double));
}

// exp_8 writing y with streaming (non-temporal) stores where a vector fills a cache line: for
// exp tables larger than the cache, the lines are not first read in for the write.  The same
// vector function for every entry (the head through a masked store, the tail by exp_8): exp_8's
// bits.
__attribute__((target("avx512f"))) static void exp_8_streamed(const double *x, double *y,
                                                            int64_t n, double shift,
                                                            double factor, int divide) {
    const __m512d s = _mm512_set1_pd(shift), f = _mm512_set1_pd(factor);
    int64_t i = 0;
    const int64_t head = line_head(y);
    for (int first = 1; i + 8 <= n; first = 0) {
        const __m512d z = _mm512_loadu_pd(x + i);
        const __m512d e = _ZGVeN8v_exp(divide ? _mm512_div_pd(_mm512_sub_pd(z, s), f)
                                              : _mm512_mul_pd(_mm512_sub_pd(z, s), f));
        if (first && head) {   // (up to the first cache line: y's alignment is a double's)
            _mm512_mask_storeu_pd(y, (__mmask8)((1u << head) - 1u), e);
            i = head;
        } else {
            if ((uintptr_t)(y + i) & 63) _mm512_storeu_pd(y + i, e);
            else _mm512_stream_pd(y + i, e);
            i += 8;
        }
    }
    if (i < n) exp_8(x + i, y + i, n - i, shift, factor, divide);
}

// n entries of `from` into `to` with streaming stores where a vector fills a cache line (the
// head and the tail through masked stores): for results larger than the cache, not first read in
__attribute__((target("avx512f"))) static void copy_8_streamed(const double *restrict from,
                                                             double *restrict to, int64_t n) {
    int64_t i = line_head(to) < n ? line_head(to) : n;
    if (i) _mm512_mask_storeu_pd(to, (__mmask8)((1u << i) - 1u), _mm512_maskz_loadu_pd(
                                     (__mmask8)((1u << i) - 1u), from));
    for (; i + 8 <= n; i += 8) _mm512_stream_pd(to + i, _mm512_loadu_pd(from + i));
    if (i < n) {
        const __mmask8 rest = (__mmask8)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_pd(to + i, rest, _mm512_maskz_loadu_pd(rest, from + i));
    }
}

// n zeros into `to` with streaming stores where a vector fills a cache line, then a fence (it
// is called on its own, not inside a kernel that fences at its end)
__attribute__((target("avx512f"))) static void zero_8_streamed(double *restrict to, int64_t n) {
    const __m512d zero = _mm512_setzero_pd();
    int64_t i = line_head(to) < n ? line_head(to) : n;
    if (i) _mm512_mask_storeu_pd(to, (__mmask8)((1u << i) - 1u), zero);
    for (; i + 8 <= n; i += 8) _mm512_stream_pd(to + i, zero);
    if (i < n) _mm512_mask_storeu_pd(to + i, (__mmask8)((1u << (n - i)) - 1u), zero);
    _mm_sfence();
}
#endif

static void zero_plain(double *restrict to, int64_t n) {
    memset(to, 0, (size_t)n * sizeof(double));
}
static void (*zero_run)(double *restrict, int64_t) = zero_plain;

// n zeros into `to`, with streaming stores where the CPU has them: for an array filled at
// start and read only later, not first read in from memory for the write
void zeros_streamed(double *to, int64_t n) { zero_run(to, n); }

static void copy_plain(const double *restrict from, double *restrict to, int64_t n) {
    memcpy(to, from, (size_t)n * sizeof(double));
}
typedef void (*Copy)(const double *restrict, double *restrict, int64_t);
static Copy streamed_copy = copy_plain;

static ScaledExp exp_run = exp_scalar, streamed_exp_run = exp_scalar;
static Elementwise expm1_run = expm1_scalar, log1p_run = log1p_scalar, log_run = log_scalar;

__attribute__((constructor)) static void pick_runs(void) {
#if VECTOR_MATH
    __builtin_cpu_init();
    const int wide = __builtin_cpu_supports("avx512f"), middle = __builtin_cpu_supports("avx2");
    exp_run = wide ? exp_8 : middle ? exp_4 : exp_2;
    streamed_exp_run = wide ? exp_8_streamed : exp_run;
    streamed_copy = wide ? copy_8_streamed : copy_plain;
    zero_run = wide ? zero_8_streamed : zero_plain;
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
// and the division is a multiplication by inverse = 1 / c (as numpy's path does).  With
// `streamed`, the tables are written with streaming stores where the CPU has them (the same
// bits; see exp_8_streamed).
CLONED void pair_tables(const double *potentials, const int64_t *potential_at, double *tables,
                        const int64_t *table_at, int64_t pairs, int64_t size, const double *scale,
                        int one_scale, double inverse, double above, double below, double *top,
                        const int64_t *order, int streamed) {
    const ScaledExp table_exp = streamed ? streamed_exp_run : exp_run;
    for (int64_t i = 0; i < pairs; ++i) {
        const int64_t k = order ? order[i] : i;
        const double *f = potentials + potential_at[k];
        double *t = tables + table_at[k];
        const double c = scale[k];
        if (i + 1 < pairs) {   // (the next pair's potentials, which come cold from memory)
            const double *next = potentials + potential_at[order ? order[i + 1] : i + 1];
            for (int64_t j = 0; j < size; j += 8) __builtin_prefetch(next + j);
        }
        const double m = largest_of(f, size);
        // (x - 0 is x: the unshifted pairs' bits are those of exp(f * inverse), exp(f / c))
        if (m > above * c || m < -below * c) {
            top[k] = m;
            table_exp(f, t, size, m, c, 1);
        } else {
            top[k] = 0.0;
            table_exp(f, t, size, 0.0, one_scale ? inverse : c, !one_scale);
        }
    }
#if VECTOR_MATH
    if (streamed) _mm_sfence();   // (streaming stores are ordered before the caller goes on)
#endif
}

// n entries of `from` into `to`, each divided by *scale unless scale is NULL (x / 1 is x)
static inline void take_run(const double *restrict from, const double *scale, int64_t n,
                            double *restrict to) {
    if (scale)
        for (int64_t j = 0; j < n; ++j) to[j] = from[j] / *scale;
    else
        for (int64_t j = 0; j < n; ++j) to[j] = from[j];
}

// x . y over n entries, left to right
static inline double dot_run(const double *restrict x, const double *restrict y, int64_t n) {
    double sum = x[0] * y[0];
    for (int64_t j = 1; j < n; ++j) sum += x[j] * y[j];
    return sum;
}

// one pair's beliefs: out = t * ((a / sum) b^T), t and out n_a x n_b, the products in the order
// numpy's path makes them
static inline void pair_belief(const double *restrict t, const double *restrict a,
                               const double *restrict b, double sum, int64_t n_a, int64_t n_b,
                               double *restrict out) {
    for (int64_t r = 0; r < n_a; ++r) {
        const double scaled = a[r] / sum;
        for (int64_t j = 0; j < n_b; ++j) out[r * n_b + j] = t[r * n_b + j] * (scaled * b[j]);
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
        pair_belief(tables + table_at[k], w_a + k * n_a, w_b + k * n_b, sums[k], n_a, n_b,
                    beliefs + belief_at[k]);
    }
}

// the messages mu_{p->r} of the edges of one fast group of a colour (FlatBP._fast_mu), up to
// their normalisation: for each edge e, weights w = exp(lam[other_at[e] + j] / s_e) (j < n_o,
// the other variable's message; max 0, so w in (0, 1]), total[e] (n_r) = T w where r is the
// pair's first variable (sum_b t[a, b] w[b]) or w T where it is its second (second[e]; sum_a
// w[a] t[a, b]), T the n_a x n_b table at tables + table_at[e]; mu[e] = s_e log(total[e]).  The
// sums over the table's rows run in lanes of 8 (a fixed order for every edge).  scale NULL: all
// s are 1.  `order`: the edges in the order to take them (a permutation; the results do not
// depend on it), or NULL.  work: chunk (n_a + n_b) entries.  Returns the smallest total (below
// 1e-250 some entries need the exact log-sum-exp: FlatBP._fast_mu).
enum { LANES = 8 };
CLONED double edge_products(const double *restrict lam, const int64_t *restrict other_at,
                            const double *restrict tables, const int64_t *restrict table_at,
                            const int64_t *restrict second, int64_t edges, int64_t n_a,
                            int64_t n_b, const double *restrict scale, double *restrict total,
                            double *restrict mu, const int64_t *restrict order, int64_t chunk,
                            double *restrict work) {
    double smallest = INFINITY;
    for (int64_t n0 = 0; n0 < edges; n0 += chunk) {
        const int64_t n1 = n0 + chunk < edges ? n0 + chunk : edges;
        // the chunk's weights, one run (n_o entries an edge; n_o the same for the whole group)
        const int64_t first = order ? order[n0] : n0;
        const int64_t n_o = second[first] ? n_a : n_b, n_r = second[first] ? n_b : n_a;
        double *restrict w = work, *restrict logs = work + chunk * n_o;
        for (int64_t n = n0; n < n1; ++n) {
            const int64_t e = order ? order[n] : n;
            double *restrict x = w + (n - n0) * n_o;
            memcpy(x, lam + other_at[e], (size_t)n_o * sizeof(double));
            if (scale)
                for (int64_t j = 0; j < n_o; ++j) x[j] /= scale[e];
        }
        exp_run(w, w, (n1 - n0) * n_o, 0.0, 1.0, 0);
        for (int64_t n = n0; n < n1; ++n) {
            const int64_t e = order ? order[n] : n;
            const double *restrict t = tables + table_at[e], *restrict x = w + (n - n0) * n_o;
            double *restrict out = logs + (n - n0) * n_r;
            if (second[e]) {   // out[b] = sum_a x[a] t[a, b]: rows added in turn
                for (int64_t b = 0; b < n_b; ++b) out[b] = x[0] * t[b];
                for (int64_t a = 1; a < n_a; ++a)
                    for (int64_t b = 0; b < n_b; ++b) out[b] += x[a] * t[a * n_b + b];
            } else {   // out[a] = sum_b t[a, b] x[b]: in LANES partial sums, then added in turn
                for (int64_t a = 0; a < n_a; ++a) {
                    const double *restrict row = t + a * n_b;
                    double lane[LANES] = {0.0};
                    int64_t b = 0;
                    for (; b + LANES <= n_b; b += LANES)
                        for (int k = 0; k < LANES; ++k) lane[k] += row[b + k] * x[b + k];
                    for (int k = 0; b + k < n_b; ++k) lane[k] += row[b + k] * x[b + k];
                    double sum = lane[0];
                    for (int k = 1; k < LANES; ++k) sum += lane[k];
                    out[a] = sum;
                }
            }
            for (int64_t a = 0; a < n_r; ++a) smallest = out[a] < smallest ? out[a] : smallest;
            memcpy(total + e * n_r, out, (size_t)n_r * sizeof(double));
        }
        log_run(logs, (n1 - n0) * n_r);
        for (int64_t n = n0; n < n1; ++n) {
            const int64_t e = order ? order[n] : n;
            const double size = scale ? scale[e] : 1.0;   // (x * 1 is x)
            for (int64_t a = 0; a < n_r; ++a) mu[e * n_r + a] = logs[(n - n0) * n_r + a] * size;
        }
    }
    return smallest;
}

// a pair group's weights for its read-out (FlatBP._pair_sums): w_a (pairs, n_a) = exp(lam[a_at[p]
// + j] / s_p) and w_b (pairs, n_b) = exp(lam[b_at[p] + j] / s_p), scale NULL: all s are 1.  The
// exponentials are one run over each of w_a and w_b.
CLONED void pair_weights(const double *restrict lam, const int64_t *restrict a_at,
                         const int64_t *restrict b_at, int64_t pairs, int64_t n_a, int64_t n_b,
                         const double *restrict scale, double *restrict w_a,
                         double *restrict w_b) {
    for (int64_t p = 0; p < pairs; ++p) {
        take_run(lam + a_at[p], scale ? scale + p : NULL, n_a, w_a + p * n_a);
        take_run(lam + b_at[p], scale ? scale + p : NULL, n_b, w_b + p * n_b);
    }
    exp_run(w_a, w_a, pairs * n_a, 0.0, 1.0, 0);
    exp_run(w_b, w_b, pairs * n_b, 0.0, 1.0, 0);
}

// total[at[m]] = sum_j products[edges[m]][j] w[at[m]][j] (rows of n, the sum left to right) for
// m < count: a pair's sum from the last sweep's product of its table with one endpoint's
// weights, times the other endpoint's (FlatBP._saved_sums).
CLONED void row_dots(const double *restrict products, const int64_t *restrict edges,
                     const double *restrict w, const int64_t *restrict at, int64_t count,
                     int64_t n, double *restrict total) {
    for (int64_t m = 0; m < count; ++m)
        total[at[m]] = dot_run(products + edges[m] * n, w + at[m] * n, n);
}

// the regions' fhat at the read-out entries (FlatBP.region_values): out (k) = (f + A) - B, f
// `readout`, A the sums of lam[parent_message[e]] over e with parent_at[e] = q (e < parents), B
// the sums of lam[e] over e with child_at[e] = q (e < messages), each from 0 in e's order (as
// np.bincount sums).  work: k entries.
CLONED void region_values(const double *restrict readout, int64_t k,
                          const int64_t *restrict parent_at,
                          const int64_t *restrict parent_message, int64_t parents,
                          const int64_t *restrict child_at, const double *restrict lam,
                          int64_t messages, double *restrict out, double *restrict work) {
    for (int64_t q = 0; q < k; ++q) out[q] = work[q] = 0.0;
    for (int64_t e = 0; e < parents; ++e) out[parent_at[e]] += lam[parent_message[e]];
    for (int64_t e = 0; e < messages; ++e) work[child_at[e]] += lam[e];
    for (int64_t q = 0; q < k; ++q) out[q] = (readout[q] + out[q]) - work[q];
}

// softmax of `rows` rows of n values (FlatBP.region_softmax): with s = scale[r] (NULL: all 1),
// z = x / s less its largest m, beliefs (rows, n) = e^z / sum e^z (sum left to right) and
// log_partition[r] = s (m + log(sum)).  One run of exps over the block, one of logs over the sums.
CLONED void row_softmax(const double *restrict values, int64_t rows, int64_t n,
                        const double *restrict scale, double *restrict beliefs,
                        double *restrict log_partition, double *restrict work) {
    double *restrict peak = work;
    for (int64_t r = 0; r < rows; ++r) {   // (x / 1 is x: no division where all s are 1)
        const double *restrict x = values + r * n;
        double *restrict z = beliefs + r * n;
        for (int64_t j = 0; j < n; ++j) z[j] = scale ? x[j] / scale[r] : x[j];
        const double top = row_top(z, n);
        for (int64_t j = 0; j < n; ++j) z[j] -= top;
        peak[r] = top;
    }
    exp_run(beliefs, beliefs, rows * n, 0.0, 1.0, 0);
    for (int64_t r = 0; r < rows; ++r) {
        double *restrict z = beliefs + r * n;
        double sum = z[0];
        for (int64_t j = 1; j < n; ++j) sum += z[j];
        for (int64_t j = 0; j < n; ++j) z[j] /= sum;
        log_partition[r] = sum;
    }
    log_run(log_partition, rows);
    for (int64_t r = 0; r < rows; ++r)
        log_partition[r] = (scale ? scale[r] : 1.0) * (peak[r] + log_partition[r]);
}

// the read-out of a block of read-out regions, `rows` regions of n entries all with eps c_r > 0
// and no parent messages (FlatBP.readout; region_values, row_softmax and the beliefs' copy in
// one pass, the same numbers): for entry j of region r, fhat = f - B with f readout[r n + j] and
// B the sum of lam[run[m] + j] over m in [start[r], start[r + 1]) from 0 in that order (the
// runs of its child messages' n entries, in np.bincount's order: its bits; region_values adds
// f and an empty sum of parents first, f + 0 is f); then row_softmax's beliefs, written to
// beliefs + belief_at[r] + j, and its log partitions.  A chunk of rows at a time, one run of
// exps and one of logs each; region sizes up to 8 take a copy of the loops with n fixed, unrolled
// (through the general loops a grid's rows of 5 spent most of their time setting loops up).
// work: chunk (n + 2) entries.
static inline __attribute__((always_inline)) void region_rows(
        const double *restrict readout, int64_t rows, const int64_t n,
        const int64_t *restrict start, const int64_t *restrict run, const double *restrict lam,
        const double *restrict scale, double *restrict beliefs,
        const int64_t *restrict belief_at, double *restrict log_partition, int64_t chunk,
        double *restrict work) {
    double *restrict z = work, *restrict peak = work + chunk * n, *restrict sums = peak + chunk;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t count = rows - r0 < chunk ? rows - r0 : chunk;
        for (int64_t i = 0; i < count; ++i) {
            const int64_t r = r0 + i;
            double *restrict x = z + i * n;   // (the children's sums, then fhat, in place)
            for (int64_t j = 0; j < n; ++j) x[j] = 0.0;
            for (int64_t m = start[r]; m < start[r + 1]; ++m) {
                const double *restrict from = lam + run[m];
                for (int64_t j = 0; j < n; ++j) x[j] += from[j];
            }
            const double *restrict f = readout + r * n;
            if (scale)
                for (int64_t j = 0; j < n; ++j) x[j] = (f[j] - x[j]) / scale[r];
            else
                for (int64_t j = 0; j < n; ++j) x[j] = f[j] - x[j];
            const double top = n <= 8 ? short_row_top(x, n) : row_top(x, n);
            for (int64_t j = 0; j < n; ++j) x[j] -= top;
            peak[i] = top;
        }
        exp_run(z, z, count * n, 0.0, 1.0, 0);
        for (int64_t i = 0; i < count; ++i) {
            const double *restrict e = z + i * n;
            double sum = e[0];
            for (int64_t j = 1; j < n; ++j) sum += e[j];
            double *restrict out = beliefs + belief_at[r0 + i];
            for (int64_t j = 0; j < n; ++j) out[j] = e[j] / sum;
            sums[i] = sum;
        }
        log_run(sums, count);
        for (int64_t i = 0; i < count; ++i)
            log_partition[r0 + i] = (scale ? scale[r0 + i] : 1.0) * (peak[i] + sums[i]);
    }
}

CLONED void region_readout(const double *restrict readout, int64_t rows, int64_t n,
                           const int64_t *restrict start, const int64_t *restrict run,
                           const double *restrict lam, const double *restrict scale,
                           double *restrict beliefs, const int64_t *restrict belief_at,
                           double *restrict log_partition, int64_t chunk,
                           double *restrict work) {
#define REGION_ROWS(size) region_rows(readout, rows, size, start, run, lam, scale, beliefs, \
                                      belief_at, log_partition, chunk, work)
    switch (n) {
        case 2: REGION_ROWS(2); break;
        case 3: REGION_ROWS(3); break;
        case 4: REGION_ROWS(4); break;
        case 5: REGION_ROWS(5); break;
        case 6: REGION_ROWS(6); break;
        case 7: REGION_ROWS(7); break;
        case 8: REGION_ROWS(8); break;
        default: REGION_ROWS(n);
    }
#undef REGION_ROWS
}

// the read-out of a pair group from the last sweep's products, one pass a chunk of pairs at a
// time (pair_weights, row_dots and pair_beliefs in one, the same numbers): for pair k, weights
// w_a (n_a) = exp(lam[a_at[k] + j] / s_k) and w_b (n_b) likewise from b_at (scale NULL: all s
// are 1; kept in `work` only), one run of exps over the chunk's weights; total[k] =
// products[source[k]][edge[k]] . (w_b if second[k], else w_a), left to right; beliefs +
// belief_at[k] = t * ((w_a / total[k]) w_b^T), t the n_a x n_b table at tables + table_at[k].
// `order`: the pairs in the order to take them (NULL: as given).  `streamed`: the beliefs
// written with streaming stores where the CPU has them (the same bits, for results larger than
// the cache).  work: chunk (n_a + n_b) + n_a n_b entries.
CLONED void pair_readout(const double *restrict lam, const int64_t *restrict a_at,
                         const int64_t *restrict b_at, const double *restrict scale,
                         int64_t pairs, int64_t n_a, int64_t n_b,
                         const double *const *products, const int64_t *restrict source,
                         const int64_t *restrict edge, const int64_t *restrict second,
                         const double *restrict tables, const int64_t *restrict table_at,
                         double *restrict beliefs, const int64_t *restrict belief_at,
                         const int64_t *restrict order, double *restrict total, int64_t chunk,
                         int streamed, double *restrict work) {
    double *restrict pair = work + chunk * (n_a + n_b);   // (streamed: a pair's, then copied)
    for (int64_t n0 = 0; n0 < pairs; n0 += chunk) {
        const int64_t n1 = n0 + chunk < pairs ? n0 + chunk : pairs, m = n1 - n0;
        double *restrict x = work, *restrict y = work + chunk * n_a;
        for (int64_t n = n0; n < n1; ++n) {
            const int64_t k = order ? order[n] : n;
            take_run(lam + a_at[k], scale ? scale + k : NULL, n_a, x + (n - n0) * n_a);
            take_run(lam + b_at[k], scale ? scale + k : NULL, n_b, y + (n - n0) * n_b);
        }
        exp_run(x, x, m * n_a, 0.0, 1.0, 0);
        exp_run(y, y, m * n_b, 0.0, 1.0, 0);
        for (int64_t n = n0; n < n1; ++n) {
            const int64_t k = order ? order[n] : n;
            const double *restrict a = x + (n - n0) * n_a, *restrict b = y + (n - n0) * n_b;
            const int64_t size = second[k] ? n_b : n_a;
            total[k] = dot_run(products[source[k]] + edge[k] * size, second[k] ? b : a, size);
            pair_belief(tables + table_at[k], a, b, total[k], n_a, n_b,
                        streamed ? pair : beliefs + belief_at[k]);
            if (streamed) streamed_copy(pair, beliefs + belief_at[k], n_a * n_b);
        }
    }
#if VECTOR_MATH
    if (streamed) _mm_sfence();
#endif
}

// the end of a colour's update (FlatBP.update_colour: one fast group, childless regions), on its
// K = rows n message entries in entry order: total_q = inner_q + the sum of mu over q's entries
// (from 0, in entry order: np.bincount's), new_e = ratio_e total_{q_e} - mu_e, each row of n
// entries (one message) less its largest, written into lam at message_at[e].  Returns the
// largest |new - old| over the entries if `change` (NaN if any is), else 0.  work: num_q + n.
CLONED double colour_update(const double *restrict mu, const int64_t *restrict q,
                            const double *restrict ratio, const int64_t *restrict message_at,
                            int64_t rows, int64_t n, const double *restrict inner, int64_t num_q,
                            double *restrict lam, int change, double *restrict work) {
    double *restrict total = work, *restrict row = work + num_q;
    for (int64_t r = 0; r < num_q; ++r) total[r] = 0.0;
    for (int64_t e = 0; e < rows * n; ++e) total[q[e]] += mu[e];
    for (int64_t r = 0; r < num_q; ++r) total[r] = inner[r] + total[r];
    double largest = 0.0;
    int nan = 0;
    for (int64_t m = 0; m < rows; ++m) {
        const int64_t e0 = m * n;
        double top = 0.0;
        for (int64_t j = 0; j < n; ++j) {
            const double x = ratio[e0 + j] * total[q[e0 + j]] - mu[e0 + j];
            row[j] = x;
            if (j == 0 || (top == top && !(x <= top))) top = x;   // (numpy's max: NaN stays)
        }
        for (int64_t j = 0; j < n; ++j) {
            const double x = row[j] - top;
            double *restrict out = lam + message_at[e0 + j];
            if (change) {
                const double moved = fabs(x - *out);
                nan |= moved != moved;
                largest = moved > largest ? moved : largest;
            }
            *out = x;
        }
    }
    return nan ? NAN : largest;
}

// --- batches of one dense binary pairwise graph (dstrain/inference/dense.py) ------------------
// Arrays are samples last, `width` columns (the samples, then padding columns whose potentials
// count as 0).  A pair p joins variables u < v and sits at dense positions at_u[p] = u V + v and
// at_v[p] = v V + u; pair_of (V V) gives a position's pair, P where there is none (the per-pair
// rows w and E end with a zero row P).  inverse and scale: 1 / (eps c_p) and eps c_p, P + 1 of
// them (1 at P), or NULL where all are 1.  What is samples first (potentials, beliefs,
// messages) is read or written `chunk` pairs (or edges) at a time: whole rows of the samples-last
// arrays, a run of each sample's row, and a (chunk, width) block of scratch in `work` between
// (chunk sized by the caller to stay in cache); the exponentials are taken over a block at once.
// Each number takes numpy's path's formula; the order of a few products and sums differs (the
// unaries' beliefs multiply by 1 / total), which the tests hold to within 1e-10 relative.

// pairs ahead whose output rows dense_start prefetches for writing: each row is a short run at
// its own place, and its lines are cold (untouched since the last run); an A/B of the tagging
// graph's start measured a small gain
#define WRITE_AHEAD 4

// start: w (P + 1, width) the interactions (f10 + f01 - f00 - f11) / s and E (P + 1, width)
// expm1(|w|), their rows P zero; pair_constant (width) sum_p f10 + f01 - f11; minus_k and H
// (V V, width) f11 - f01 at u's position, f11 - f10 at v's, 0 at the `empty` positions, and H
// then += lambda(1) - lambda(0) at each edge's position edge_at[e] from `messages` (samples,
// edges, 2) if given (a warm start); inner (V, width) f_i(1) - f_i(0) + the sum of minus_k over
// i's positions, summed from 0 in the pairs' order.  Each sample's potentials are a row of
// row_length entries: 2 V unaries, then 4 per pair.  work: 4 chunk width entries.  Returns the
// largest |w| of the samples (NaN ignored).
CLONED double dense_start(const double *restrict potentials, int64_t samples,
                          int64_t row_length, int64_t width, int64_t V, int64_t P,
                          const int64_t *restrict at_u, const int64_t *restrict at_v,
                          const int64_t *restrict empty, int64_t empties,
                          const double *restrict inverse, const double *restrict messages,
                          const int64_t *restrict edge_at, int64_t edges, double *restrict w,
                          double *restrict E, double *restrict pair_constant,
                          double *restrict minus_k, double *restrict H, double *restrict inner,
                          int64_t chunk, double *restrict work) {
    double largest = 0.0;
    for (int64_t s = 0; s < width; ++s) {
        w[P * width + s] = E[P * width + s] = 0.0;
        pair_constant[s] = -0.0;   // (from -0: the first term's bits)
    }
    for (int64_t e = 0; e < empties; ++e)
        for (int64_t s = 0; s < width; ++s)
            minus_k[empty[e] * width + s] = H[empty[e] * width + s] = 0.0;
    for (int64_t k = 0; k < V * width; ++k) inner[k] = 0.0;
    for (int64_t p0 = 0; p0 < P; p0 += chunk) {
        const int64_t p1 = p0 + chunk < P ? p0 + chunk : P, m = (p1 - p0) * width;
        double *restrict f00 = work, *restrict f01 = f00 + m, *restrict f10 = f01 + m;
        double *restrict f11 = f10 + m;
        for (int64_t s = 0; s < samples; ++s) {   // (a transposed copy: a run of each row)
            const double *x = potentials + s * row_length + 2 * V + 4 * p0;
            if (p1 < P)   // (the next chunk's run of this row: short runs escape the prefetcher)
                for (int64_t q = 0; q < 4 * (p1 - p0); q += 8)
                    __builtin_prefetch(x + 4 * (p1 - p0) + q);
            for (int64_t q = 0; q < p1 - p0; ++q) {
                const int64_t k = q * width + s;
                f00[k] = x[4 * q], f01[k] = x[4 * q + 1];
                f10[k] = x[4 * q + 2], f11[k] = x[4 * q + 3];
            }
        }
        for (int64_t q = 0; q < p1 - p0; ++q)
            for (int64_t s = samples; s < width; ++s)
                f00[q * width + s] = f01[q * width + s] = f10[q * width + s] = f11[q * width + s]
                    = 0.0;
        for (int64_t p = p0; p < p1; ++p) {
            // (times 1 where all scales are 1: exact, the same bits as no multiplication)
            const double factor = inverse ? inverse[p] : 1.0;
            const int64_t q = (p - p0) * width;
            double *restrict w_p = w + p * width, *restrict E_p = E + p * width;
            double *restrict k_u = minus_k + at_u[p] * width;
            double *restrict k_v = minus_k + at_v[p] * width;
            double *restrict h_u = H + at_u[p] * width, *restrict h_v = H + at_v[p] * width;
            double *restrict acc_u = inner + (at_u[p] / V) * width;
            double *restrict acc_v = inner + (at_v[p] / V) * width;
            if (p + WRITE_AHEAD < P) {
                const int64_t n = p + WRITE_AHEAD;
                double *rows[6] = {w + n * width, E + n * width, minus_k + at_u[n] * width,
                                   minus_k + at_v[n] * width, H + at_u[n] * width,
                                   H + at_v[n] * width};
                for (int r = 0; r < 6; ++r)
                    for (int64_t s = 0; s < width; s += 8) __builtin_prefetch(rows[r] + s, 1);
            }
            for (int64_t s = 0; s < width; ++s) {
                double x = f10[q + s] + f01[q + s];
                x -= f00[q + s];
                x -= f11[q + s];
                w_p[s] = x * factor;
                E_p[s] = fabs(w_p[s]);
                k_u[s] = h_u[s] = f11[q + s] - f01[q + s];   // (zero messages: h = -K)
                k_v[s] = h_v[s] = f11[q + s] - f10[q + s];
                pair_constant[s] += f10[q + s] - k_u[s];
                acc_u[s] += k_u[s];
                acc_v[s] += k_v[s];
            }
            for (int64_t s = 0; s < samples; ++s) largest = E_p[s] > largest ? E_p[s] : largest;
        }
        expm1_run(E + p0 * width, m);
    }
    for (int64_t s = 0; s < samples; ++s) {
        const double *unary = potentials + s * row_length;
        for (int64_t i = 0; i < V; ++i)
            inner[i * width + s] = (unary[2 * i + 1] - unary[2 * i]) + inner[i * width + s];
    }
    if (messages)
        for (int64_t e0 = 0; e0 < edges; e0 += chunk) {
            const int64_t e1 = e0 + chunk < edges ? e0 + chunk : edges;
            for (int64_t s = 0; s < samples; ++s) {
                const double *m = messages + 2 * (s * edges + e0);
                for (int64_t e = e0; e < e1; ++e)
                    H[edge_at[e] * width + s] += m[2 * (e - e0) + 1] - m[2 * (e - e0)];
            }
        }
    return largest;
}

// one sweep's updates of the variables `order` (count of them, in turn) on the shifted gaps H
// (V, V, width), DenseBP._update's formulas in its order: with x = H[:, i] and, per neighbour j
// (pair p = pair_of[i V + j]), t_j = C_p log1p(E_p / (1 + e^(x_j / s_p + max(w_p, 0)))), C_p =
// sign(w_p) s_p, total = sum_j t_j + inner_i, and H[i, j] = R_ij total - t_j; ratio (V V) R_ij.
// With `change`, returns the largest change of a message entry (min(0, -g), min(0, g)), g = H +
// K (minus_k = -K, (V V, width)), else 0.  work: 2 V + 1 rows of width.
CLONED double dense_sweep(double *restrict H, const double *restrict w,
                          const double *restrict E, const double *restrict inner,
                          const double *restrict minus_k, const int64_t *restrict pair_of,
                          const double *restrict inverse, const double *restrict scale,
                          const double *restrict ratio, int64_t V, int64_t width,
                          const int64_t *restrict order, int64_t count, int change,
                          double *restrict work) {
    double *restrict t = work, *restrict old = work + V * width;
    double *restrict total = work + 2 * V * width;
    double largest = 0.0;
    for (int64_t n = 0; n < count; ++n) {
        const int64_t i = order[n];
        const int64_t *restrict pairs = pair_of + i * V;
        for (int64_t j = 0; j < V; ++j) {   // x_j / s_p + max(w_p, 0) (x * 1 is x)
            const double *restrict x = H + (j * V + i) * width;
            const double *restrict w_p = w + pairs[j] * width;
            const double factor = inverse ? inverse[pairs[j]] : 1.0;
            for (int64_t s = 0; s < width; ++s)   // (np.maximum(w, 0): NaN stays)
                t[j * width + s] = x[s] * factor + (w_p[s] < 0.0 ? 0.0 : w_p[s]);
        }
        exp_run(t, t, V * width, 0.0, 1.0, 0);
        for (int64_t j = 0; j < V; ++j) {
            const double *restrict E_p = E + pairs[j] * width;
            for (int64_t s = 0; s < width; ++s)
                t[j * width + s] = E_p[s] / (t[j * width + s] + 1.0);
        }
        log1p_run(t, V * width);
        for (int64_t j = 0; j < V; ++j) {
            const double *restrict w_p = w + pairs[j] * width;
            const double size = scale ? scale[pairs[j]] : 1.0;
            for (int64_t s = 0; s < width; ++s)
                t[j * width + s] *= copysign(1.0, w_p[s]) * size;
        }
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

// read-out of the pairs from the shifted gaps H (V V, width): per pair and column the terms
// e^-w (from E = expm1(|w|): 1 + E where w < 0, else 1 / (1 + E)), e^h_v, e^h_u (h over s) and
// their product, total their sum; beliefs (the samples' rows of `belief_row` entries, a pair's
// four from 4 p), if given, = terms * (1 / total); log_sum (width) += the sum over each block of
// `block` pairs of s log(total).  With `unaries` (the same rows' unary beliefs, unary i's two
// from 2 i), the unaries whose beliefs are marginalised from a pair get them as its beliefs
// are written: source_u[p] (or -1) is the unary that sums pair p's over y_v (b_00 + b_01, b_10 +
// b_11), source_v[p] the one that sums them over y_u (b_00 + b_10, b_01 + b_11).  work: 5 chunk
// width + width entries.  Returns 1, having stopped, if some total is not finite (then the
// peaked read-out is needed).
CLONED int dense_pairs(const double *restrict H, const double *restrict w,
                       const double *restrict E, int64_t samples, int64_t width, int64_t P,
                       const int64_t *restrict at_u, const int64_t *restrict at_v,
                       const double *restrict inverse, const double *restrict scale,
                       double *restrict beliefs, int64_t belief_row, double *restrict unaries,
                       const int64_t *restrict source_u, const int64_t *restrict source_v,
                       double *restrict log_sum, int64_t block, int64_t chunk,
                       double *restrict work) {
    double *restrict block_sums = work + 5 * chunk * width;
    for (int64_t p0 = 0; p0 < P; p0 += chunk) {
        const int64_t p1 = p0 + chunk < P ? p0 + chunk : P, m = (p1 - p0) * width;
        double *restrict z0 = work, *restrict z1 = z0 + m, *restrict z2 = z1 + m;
        double *restrict z3 = z2 + m, *restrict total = z3 + m;
        for (int64_t p = p0; p < p1; ++p) {   // (h * 1 is h: numpy's unscaled h)
            const double factor = inverse ? inverse[p] : 1.0;
            const double *restrict x = w + p * width, *restrict e = E + p * width;
            const double *restrict h_u = H + at_u[p] * width, *restrict h_v = H + at_v[p] * width;
            const int64_t q = (p - p0) * width;
            for (int64_t s = 0; s < width; ++s) {
                z0[q + s] = x[s] < 0.0 ? 1.0 + e[s] : 1.0 / (1.0 + e[s]);
                z1[q + s] = h_v[s] * factor;
                z2[q + s] = h_u[s] * factor;
            }
        }
        exp_run(z1, z1, 2 * m, 0.0, 1.0, 0);   // (z1 and z2: one run)
        int finite = 1;
        for (int64_t k = 0; k < m; ++k) {
            z3[k] = z1[k] * z2[k];
            double sum = z0[k] + z1[k];
            sum += z2[k];
            sum += z3[k];
            total[k] = sum;
            finite &= sum - sum == 0.0;   // (false for inf and NaN)
        }
        if (!finite) return 1;
        if (beliefs) {
            for (int64_t k = 0; k < m; ++k) {
                const double r = 1.0 / total[k];
                z0[k] *= r, z1[k] *= r, z2[k] *= r, z3[k] *= r;
            }
            for (int64_t s = 0; s < samples; ++s) {   // (a transposed copy: a run of each row)
                double *out = beliefs + s * belief_row + 4 * p0;
                if (p1 < P)   // (the next chunk's run, for writing)
                    for (int64_t q = 0; q < 4 * (p1 - p0); q += 8)
                        __builtin_prefetch(out + 4 * (p1 - p0) + q, 1);
                for (int64_t q = 0; q < p1 - p0; ++q) {
                    const int64_t k = q * width + s;
                    out[4 * q] = z0[k], out[4 * q + 1] = z1[k];
                    out[4 * q + 2] = z2[k], out[4 * q + 3] = z3[k];
                }
                if (!unaries) continue;
                double *restrict mine = unaries + s * belief_row;
                for (int64_t q = 0; q < p1 - p0; ++q) {
                    const int64_t k = q * width + s, a = source_u[p0 + q], b = source_v[p0 + q];
                    if (a >= 0) mine[2 * a] = z0[k] + z1[k], mine[2 * a + 1] = z2[k] + z3[k];
                    if (b >= 0) mine[2 * b] = z0[k] + z2[k], mine[2 * b + 1] = z1[k] + z3[k];
                }
            }
        }
        log_run(total, m);
        for (int64_t p = p0; p < p1; ++p) {
            const double size = scale ? scale[p] : 1.0;
            const double *restrict logs = total + (p - p0) * width;
            if (p % block == 0)   // (from -0: the block's first term's own bits)
                for (int64_t s = 0; s < width; ++s) block_sums[s] = -0.0;
            for (int64_t s = 0; s < width; ++s) block_sums[s] += logs[s] * size;
            if (p % block == block - 1 || p == P - 1)
                for (int64_t s = 0; s < width; ++s) log_sum[s] += block_sums[s];
        }
    }
    return 0;
}

// the unaries' read-out from the gaps g = H - minus_k (V V, width) and the samples' potentials
// (rows of row_length entries, unaries first): per unary i, raised_i = sum_j max(g_ij, 0) and
// fhat_i = (f_i(0) + raised_i, f_i(1) + raised_i - sum_j g_ij), sums in j's order; with c =
// scale[i] (eps c_i), term_i = c (m + log(e^(fhat_i(0) / c - m) + e^(fhat_i(1) / c - m))), m
// the larger exponent, where c != 0, else max fhat_i; dual (width) -= sum_i raised_i, then +=
// sum_i term_i.  Where c > 0 and beliefs are given, each sample's row's entries 2 i and 2 i + 1
// = the two exponentials over their sum.  work: 5 V width entries.
CLONED void dense_unaries(const double *restrict H, const double *restrict minus_k,
                          const double *restrict potentials, int64_t samples,
                          int64_t row_length, int64_t V, int64_t width,
                          const double *restrict scale, double *restrict beliefs,
                          int64_t belief_row, double *restrict dual, double *restrict work) {
    const int64_t m = V * width;
    double *restrict raised = work, *restrict summed = raised + m, *restrict z0 = summed + m;
    double *restrict z1 = z0 + m, *restrict peak = z1 + m;
    for (int64_t i = 0; i < V; ++i) {
        double *restrict r = raised + i * width, *restrict t = summed + i * width;
        for (int64_t s = 0; s < width; ++s) r[s] = t[s] = 0.0;
        for (int64_t j = 0; j < V; ++j) {
            const double *restrict h = H + (i * V + j) * width;
            const double *restrict k = minus_k + (i * V + j) * width;
            for (int64_t s = 0; s < width; ++s) {
                const double g = h[s] - k[s];
                r[s] += g < 0.0 ? 0.0 : g;   // (np.maximum: NaN stays)
                t[s] += g;
            }
        }
    }
    for (int64_t k = 0; k < m; ++k) z0[k] = z1[k] = 0.0;   // (padding columns: f_i = 0)
    for (int64_t s = 0; s < samples; ++s)   // (a transposed copy: a run of each row)
        for (int64_t i = 0; i < V; ++i) {
            z0[i * width + s] = potentials[s * row_length + 2 * i];
            z1[i * width + s] = potentials[s * row_length + 2 * i + 1];
        }
    for (int64_t i = 0; i < V; ++i) {
        const double c = scale[i];
        for (int64_t s = 0; s < width; ++s) {
            const int64_t k = i * width + s;
            const double f0 = z0[k] + raised[k], f1 = z1[k] + raised[k] - summed[k];
            if (c != 0.0) {
                const double x0 = f0 / c, x1 = f1 / c, top = x0 < x1 ? x1 : x0;
                z0[k] = x0 - top, z1[k] = x1 - top, peak[k] = top;
            } else {
                z0[k] = z1[k] = 0.0, peak[k] = f0 < f1 ? f1 : f0;
            }
        }
    }
    exp_run(z0, z0, 2 * m, 0.0, 1.0, 0);   // (z0 and z1: one run)
    double *total = summed;   // (free now)
    for (int64_t k = 0; k < m; ++k) total[k] = z0[k] + z1[k];
    if (beliefs) {
        for (int64_t k = 0; k < m; ++k) {
            const double r = 1.0 / total[k];
            z0[k] *= r, z1[k] *= r;
        }
        for (int64_t s = 0; s < samples; ++s)
            for (int64_t i = 0; i < V; ++i)
                if (scale[i] > 0.0) {
                    double *out = beliefs + s * belief_row + 2 * i;
                    out[0] = z0[i * width + s], out[1] = z1[i * width + s];
                }
    }
    log_run(total, m);
    for (int64_t i = 0; i < V; ++i) {   // (the terms into peak)
        const double c = scale[i];
        for (int64_t k = i * width; k < (i + 1) * width; ++k)
            peak[k] = c != 0.0 ? c * (peak[k] + total[k]) : peak[k];
    }
    for (int64_t i = 1; i < V; ++i)   // (sums over i into the first rows)
        for (int64_t s = 0; s < width; ++s) {
            raised[s] += raised[i * width + s];
            peak[s] += peak[i * width + s];
        }
    for (int64_t s = 0; s < width; ++s) {
        dual[s] -= raised[s];
        dual[s] += peak[s];
    }
}

// the messages, samples first (samples, edges, 2), from the gaps g = H - minus_k (V V, width)
// at each edge's dense position: a max-0 binary message with gap g is (min(0, -g), min(0, g)).
// work: chunk width entries.
CLONED void dense_messages(const double *restrict H, const double *restrict minus_k,
                           int64_t samples, int64_t width, const int64_t *restrict edge_at,
                           int64_t edges, double *restrict messages, int64_t chunk,
                           double *restrict work) {
    for (int64_t e0 = 0; e0 < edges; e0 += chunk) {
        const int64_t e1 = e0 + chunk < edges ? e0 + chunk : edges;
        for (int64_t e = e0; e < e1; ++e) {
            const double *restrict h = H + edge_at[e] * width;
            const double *restrict k = minus_k + edge_at[e] * width;
            double *restrict g = work + (e - e0) * width;
            for (int64_t s = 0; s < width; ++s) g[s] = h[s] - k[s];
        }
        for (int64_t s = 0; s < samples; ++s) {   // (a transposed copy: a run of each row)
            double *restrict out = messages + 2 * (s * edges + e0);
            if (e1 < edges)   // (the next chunk's run, for writing)
                for (int64_t q = 0; q < 2 * (e1 - e0); q += 8)
                    __builtin_prefetch(out + 2 * (e1 - e0) + q, 1);
            for (int64_t e = 0; e < e1 - e0; ++e) {
                const double gap = work[e * width + s];
                const double one = 0.0 < gap ? 0.0 : gap;   // (np.minimum: NaN stays)
                out[2 * e + 1] = one;
                out[2 * e] = one - gap;
            }
        }
    }
}
