// Convex belief propagation on a flattened batch of region graphs (docs/design.md §2), one colour at a
// time: the kernels behind dstrain/gpu/engine.py, which mirrors the CPU engine
// dstrain/inference/bp.py and builds every index array these kernels read.
//
// Macros: DSTRAIN_REAL = float | double (the element type of potentials, messages and beliefs;
// default float).  Indices are int (the host refuses batches with 2^31 or more entries).
// Launch shape of every kernel: 1-D, one thread per work item (`count` items), any block size;
// threads never cooperate (no shared memory, no barriers), so each kernel is also correct when its
// threads run one after another in any order (tests run them so on the CPU: cuda/host/).
//
// Layout (dstrain/graph/batch.py): potentials and fhat are flat, each region's table contiguous in
// C order; messages are flat, one vector per edge r -> p, as long as r's state space.
//
// The block update of region r with its parents p (regions of one colour in parallel):
//   mu_{p->r}(y_r)     = eps c_p log sum_{y_p \ y_r} exp((fhat_p(y_p) - lambda_{r->p}(y_r)) / (eps c_p))
//                        (max where eps c_p = 0)
//   total_r(y_r)       = f_r + sum_{c} lambda_{c->r} + sum_p mu_{p->r}
//   lambda_{r->p}(y_r) = c_p / chat_r * total_r(y_r) - mu_{p->r}(y_r), then minus its max over y_r
// A "fast pair" parent (two variables, no parents of its own) never has its fhat tracked: its
// mu reads f_p + lambda_{o->p} of the other child o directly.

#ifndef DSTRAIN_REAL
#define DSTRAIN_REAL float
#endif
typedef DSTRAIN_REAL real;

// columns of edge_info (int, one row per edge of a colour, edges of one region adjacent)
#define EDGE_ENTRY 0    // first of the edge's n_r entries in the colour's mu vector
#define EDGE_OWN 1      // message index of lambda_{r->p}(0)
#define EDGE_KIND 2     // one of the KIND_ values below
#define EDGE_PARENT 3   // potential index of the parent's first entry
#define EDGE_PATTERN 4  // KIND_SUM, KIND_MAX: start in `patterns` of the (n_r, width) offsets of
                        // the parent's entries grouped by the child's state, relative to
                        // EDGE_PARENT; KIND_FAST_T: n_r (the table's row length)
#define EDGE_WIDTH 5    // parent entries per child state
#define EDGE_OTHER 6    // fast pairs: message index of lambda_{o->p}(0); unused otherwise
#define EDGE_FIELDS 7
// columns of edge_real
#define EDGE_SCALE 0    // eps * c_p
#define EDGE_RATIO 1    // c_p / (c_r + sum of r's parents' c)
#define EDGE_REALS 2
// columns of region_info (one row per region of a colour)
#define REGION_ENTRY 0  // potential index of the region's first entry
#define REGION_SIZE 1   // n_r
#define REGION_TOTAL 2  // start of the region's n_r slots in the `total` scratch vector
#define REGION_EDGES 3  // first of its edges (rows of edge_info)
#define REGION_DEGREE 4 // number of its edges (parents)
#define REGION_FIELDS 5

#define KIND_SUM 0      // log-sum-exp over fhat_p
#define KIND_MAX 1      // max over fhat_p (eps c_p = 0)
#define KIND_FAST 2     // fast pair, r its first variable: log-sum-exp over the row f_p(y_r, .)
                        // + lambda_{o->p}
#define KIND_FAST_T 3   // fast pair, r its second variable: over the column f_p(., y_r)

__device__ __forceinline__ float real_exp(float x) { return expf(x); }
__device__ __forceinline__ double real_exp(double x) { return exp(x); }
__device__ __forceinline__ float real_log(float x) { return logf(x); }
__device__ __forceinline__ double real_log(double x) { return log(x); }
__device__ __forceinline__ float real_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double real_abs(double x) { return fabs(x); }

// Running log-sum-exp of z_1, z_2, ...: peak + log(sum) stays finite for any finite inputs.
struct LogSumExp {
    real peak, sum;
    __device__ __forceinline__ void first(real z) { peak = z; sum = 1; }
    __device__ __forceinline__ void add(real z) {
        if (z > peak) { sum = sum * real_exp(peak - z) + 1; peak = z; }
        else { sum += real_exp(z - peak); }
    }
    __device__ __forceinline__ real value() const { return peak + real_log(sum); }
};

// scale * log sum exp(values / scale) over n values (max where scale = 0); n >= 1.
__device__ __forceinline__ real soft_max_of(const real* values, int n, real scale) {
    if (scale == 0) {
        real best = values[0];
        for (int k = 1; k < n; ++k) best = values[k] > best ? values[k] : best;
        return best;
    }
    LogSumExp acc;
    acc.first(values[0] / scale);
    for (int k = 1; k < n; ++k) acc.add(values[k] / scale);
    return scale * acc.value();
}

__device__ __forceinline__ int thread_index() { return blockIdx.x * blockDim.x + threadIdx.x; }

// fhat[n] = f[n] + the signed messages listed for n, for each listed entry n = entry_index[j]
// (count = listed entries; the others hold f already, and pair_reparameterise does fast pairs).
// entry_message[k] >= 0: + messages[k] (a child's message into this parent entry);
// < 0: - messages[~k] (the entry's own region sends it to a parent).
extern "C" __global__ void reparameterise(const real* potentials, const real* messages, real* fhat,
                                          int count, const int* entry_index, const int* entry_ptr,
                                          const int* entry_message) {
    int j = thread_index();
    if (j >= count) return;
    const int n = entry_index[j];
    real value = potentials[n];
    for (int k = entry_ptr[j]; k < entry_ptr[j + 1]; ++k) {
        int m = entry_message[k];
        value += m >= 0 ? messages[m] : -messages[~m];
    }
    fhat[n] = value;
}

// fhat of fast pairs (count = entries of `pairs` pairs of shape (n_a, n_b)):
// fhat_p(a, b) = f_p(a, b) + lambda_{(a)->p}(a) + lambda_{(b)->p}(b); pair_info rows are
// (potential index of f_p(0, 0), message index of lambda_a(0), message index of lambda_b(0)).
extern "C" __global__ void pair_reparameterise(const real* potentials, const real* messages,
                                               real* fhat, int count, int n_a, int n_b,
                                               const int* pair_info) {
    int t = thread_index();
    if (t >= count) return;
    const int size = n_a * n_b, within = t % size;
    const int* pair = pair_info + (long long)(t / size) * 3;
    const int entry = pair[0] + within;
    fhat[entry] = potentials[entry] + messages[pair[1] + within / n_b] + messages[pair[2] + within % n_b];
}

// mu of every edge entry (edge e, child state i) of one colour (count = entries).
extern "C" __global__ void edge_mu(const real* potentials, const real* fhat, const real* messages,
                                   real* mu, int count, const int* entry_edge, const int* edge_info,
                                   const real* edge_real, const int* patterns) {
    int t = thread_index();
    if (t >= count) return;
    const int* edge = edge_info + (long long)entry_edge[t] * EDGE_FIELDS;
    const real scale = edge_real[(long long)entry_edge[t] * EDGE_REALS + EDGE_SCALE];
    const int i = t - edge[EDGE_ENTRY], width = edge[EDGE_WIDTH], kind = edge[EDGE_KIND];
    if (kind >= KIND_FAST) {
        // a row (stride 1) or a column (stride n_r: coalesced over the edge's threads) of the
        // pair's own table: no pattern lookup, and the pair's fhat is never materialised
        const bool row = kind == KIND_FAST;
        const real* f = potentials + edge[EDGE_PARENT] + (row ? i * width : i);
        const int stride = row ? 1 : edge[EDGE_PATTERN];
        const real* other = messages + edge[EDGE_OTHER];
        const real inverse = 1 / scale;
        LogSumExp acc;
        acc.first((f[0] + other[0]) * inverse);
        for (int k = 1; k < width; ++k) acc.add((f[k * stride] + other[k]) * inverse);
        mu[t] = scale * acc.value();
        return;
    }
    const int* offsets = patterns + edge[EDGE_PATTERN] + i * width;
    const real* parent = fhat + edge[EDGE_PARENT];
    const real own = messages[edge[EDGE_OWN] + i];
    real best = parent[offsets[0]];
    if (kind == KIND_MAX) {
        for (int k = 1; k < width; ++k) best = parent[offsets[k]] > best ? parent[offsets[k]] : best;
        mu[t] = best - own;
        return;
    }
    LogSumExp acc;
    acc.first(best / scale);
    for (int k = 1; k < width; ++k) acc.add(parent[offsets[k]] / scale);
    mu[t] = scale * acc.value() - own;
}

// The message update of every region of one colour (count = regions), given its edges' mu.
// use_fhat: the colour has regions with children, so f_r + sum_c lambda_{c->r} is read as
// fhat_r + sum_p lambda_{r->p} and fhat_r is kept current.  track_fhat: generic parents' fhat
// is kept current (fast pairs' is not).  change[r] = the largest |message change| of region r.
extern "C" __global__ void region_update(real* messages, real* fhat, const real* potentials,
                                         const real* mu, real* total, real* change, int count,
                                         const int* region_info, const int* edge_info,
                                         const real* edge_real, const int* patterns,
                                         int use_fhat, int track_fhat) {
    int r = thread_index();
    if (r >= count) return;
    const int* region = region_info + (long long)r * REGION_FIELDS;
    const int n = region[REGION_SIZE], entry = region[REGION_ENTRY];
    const int first = region[REGION_EDGES], last = first + region[REGION_DEGREE];
    real* sum = total + region[REGION_TOTAL];
    for (int i = 0; i < n; ++i) {
        real value = use_fhat ? fhat[entry + i] : potentials[entry + i];
        for (int e = first; e < last; ++e) {
            const int* edge = edge_info + (long long)e * EDGE_FIELDS;
            value += mu[edge[EDGE_ENTRY] + i];
            if (use_fhat) value += messages[edge[EDGE_OWN] + i];
        }
        sum[i] = value;
    }
    real largest = 0;
    for (int e = first; e < last; ++e) {
        const int* edge = edge_info + (long long)e * EDGE_FIELDS;
        const real ratio = edge_real[(long long)e * EDGE_REALS + EDGE_RATIO];
        const real* m = mu + edge[EDGE_ENTRY];
        real peak = ratio * sum[0] - m[0];
        for (int i = 1; i < n; ++i) {
            real value = ratio * sum[i] - m[i];
            peak = value > peak ? value : peak;
        }
        real* own = messages + edge[EDGE_OWN];
        const bool generic = track_fhat && edge[EDGE_KIND] < KIND_FAST;
        const int width = edge[EDGE_WIDTH];
        const int* offsets = patterns + edge[EDGE_PATTERN];
        real* parent = fhat + edge[EDGE_PARENT];
        for (int i = 0; i < n; ++i) {
            const real value = ratio * sum[i] - m[i] - peak;
            const real delta = value - own[i];
            own[i] = value;
            largest = real_abs(delta) > largest ? real_abs(delta) : largest;
            // no two regions of a colour share a parent: these writes never collide
            if (generic)
                for (int k = 0; k < width; ++k) parent[offsets[i * width + k]] += delta;
            if (use_fhat) fhat[entry + i] -= delta;
        }
    }
    change[r] = largest;
}

// b_r(y) = exp((fhat_r(y) - term_r) / (eps c_r)) where eps c_r > 0, term_r being region_dual's
// eps c_r log sum exp(fhat_r / (eps c_r)); zeros elsewhere (segment_sum then fills them from a
// parent's belief).  One thread per entry of `count / size` regions of `size` entries each, so
// neighbouring threads touch neighbouring entries.
extern "C" __global__ void entry_beliefs(const real* fhat, const real* terms, real* beliefs,
                                         int count, int size, const int* region_entry,
                                         const real* region_scale) {
    int t = thread_index();
    if (t >= count) return;
    const int r = t / size, n = region_entry[r] + t % size;
    const real scale = region_scale[r];
    beliefs[n] = scale > 0 ? real_exp((fhat[n] - terms[r]) / scale) : real(0);
}

// Each region's dual term eps c_r log sum exp(fhat_r / (eps c_r)) (max where eps c_r = 0).
extern "C" __global__ void region_dual(const real* fhat, real* out, int count,
                                       const int* region_entry, const int* region_size,
                                       const real* region_scale) {
    int r = thread_index();
    if (r >= count) return;
    out[r] = soft_max_of(fhat + region_entry[r], region_size[r], region_scale[r]);
}

// out[out_index[s]] = sum of values[source[j]] for j in [ptr[s], ptr[s + 1]) (count = segments):
// a child's belief from its parent's, and each sample's dual from its regions' terms.
extern "C" __global__ void segment_sum(const real* values, real* out, int count,
                                       const int* out_index, const int* ptr, const int* source) {
    int s = thread_index();
    if (s >= count) return;
    real sum = 0;
    for (int j = ptr[s]; j < ptr[s + 1]; ++j) sum += values[source[j]];
    out[out_index[s]] = sum;
}

// every kernel of this file, for loaders that need the list (the CPU emulator)
#define DSTRAIN_KERNELS(X) X(reparameterise) X(pair_reparameterise) X(edge_mu) X(region_update) X(entry_beliefs) \
    X(region_dual) X(segment_sum)
