"""High-dimensional Gaussian filtering on the permutohedral lattice (Adams, Baek, Davis 2010).

For N points with features f_i in R^d and values x_i in R^V the filter approximates

    (K x)_i = sum_j k(f_i, f_j) x_j,        k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2)

(scale the features by 1/sigma for other widths), in time linear in N, as

    K x  ~=  alpha * S^T B_d ... B_1 B_0 S x

- *embedding*: f is scaled by sqrt(2/3) (d+1) / sqrt((k+1)(k+2)) per axis k and lifted onto the
  hyperplane sum_k z_k = 0 of R^(d+1) (the "elevated" point z_i);
- *splat* S (M x N): each point is spread over the d+1 vertices of the lattice simplex that
  contains it, with its barycentric weights b_ir (sum_r b_ir = 1);
- *blur* B_j (M x M), j = 0..d: along lattice direction u_j = (d+1) e_j - (1, ..., 1),
  v'(p) = v(p) + (v(p + u_j) + v(p - u_j)) / 2, vertices outside the lattice counting as zero;
- *slice* S^T: each point reads the blurred values back with the same weights;
- alpha = 1 / (1 + 2^-d) makes a point on a vertex of a fully occupied lattice weigh itself 1.

Only the vertices of occupied simplices exist (M <= N (d+1)), so in high dimensions, where the
points are sparse, much of the mass that would pass through empty vertices is lost: the lattice
filter is an approximation, close for dense low-dimensional points, rough for sparse ones.  Its
operator is not exactly symmetric either (the blur runs the directions in one order);
``filter(x, reverse=True)`` applies the transpose (the directions backwards).

The embedding, rounding, ranks, vertex keys and neighbours use the same conventions as
Krähenbühl's dense-CRF implementation (the lattice pydensecrf wraps), so both filter the same
values.  Splat, blurs and slice are sparse CSR matrices built once (hashing the vertex keys is a
sort of packed integers), and filtering is d+3 sparse-dense products: the same torch code on the
CPU (MKL) and on CUDA (cuSPARSE), for any number of value columns at once.

``self_weights`` gives the operator's exact diagonal (what a point contributes to itself), by
following the blur's paths between the vertices of each occupied simplex.

``ExactGaussianFilter`` is the brute-force N x N version of the same interface, for tests and
tiny inputs.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch

__all__ = ["PermutohedralLattice", "ExactGaussianFilter"]


def _check_features(features: torch.Tensor, groups) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(features, torch.Tensor):
        features = torch.as_tensor(features)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features: expected a (N, d) tensor with N, d >= 1, got shape "
                         f"{tuple(features.shape)}")
    if features.numel() and not torch.isfinite(torch.stack(torch.aminmax(features))).all():
        raise ValueError("features: expected finite values, got NaN or infinity")
    if groups is not None:
        groups = torch.as_tensor(groups, device=features.device)
        if groups.shape != (features.shape[0],) or groups.dtype.is_floating_point:
            raise ValueError(f"groups: expected an integer tensor of shape ({features.shape[0]},), "
                             f"got {groups.dtype} of shape {tuple(groups.shape)}")
        groups = groups.to(torch.int64)
        if groups.numel() and int(groups.min()) < 0:
            raise ValueError("groups: expected non-negative group indices")
    return features, groups


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """(N, d) features -> (d+1, N): the points lifted onto the hyperplane sum = 0, scaled for the
    blur; coordinate-major, so that the per-coordinate steps below read contiguous rows."""
    d = features.shape[1]
    k = torch.arange(1, d + 1, dtype=torch.float64)
    scale = math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt(k * (k + 1))
    # z_j = sum_{k > j} scale_k f_k - j scale_j f_j (axes k = 1..d, f_k the k-th feature)
    j = torch.arange(d + 1, dtype=torch.float64)[:, None]
    lift = torch.where(j < k, scale, torch.where(j == k, -k * scale, 0.0))
    return torch.mm(lift.to(device=features.device, dtype=torch.float32), features.t())


def _enclosing_simplex(elevated: torch.Tensor):
    """(d+1, N) -> the nearest remainder-0 lattice point and each coordinate's rank (Adams et al.),
    both (d+1, N) int32."""
    d = elevated.shape[0] - 1
    rem0 = torch.round(elevated * (1.0 / (d + 1))) * (d + 1)
    if rem0.numel() and float(rem0.abs().max()) > 2.0 ** 30:
        raise ValueError("features: values too large for the lattice's integer keys; scale the "
                         "features down (divide by a larger sigma)")
    coordinate_sum = torch.round(rem0.sum(0) * (1.0 / (d + 1))).to(torch.int32)
    residual = elevated - rem0
    # rank_i = #{j > i: r_j > r_i} + #{j < i: r_j >= r_i}: ties go to the earlier coordinate
    rank = coordinate_sum.expand(d + 1, -1).clone()
    for i in range(d):
        i_lower = residual[i] < residual[i + 1:]
        rank[i] += i_lower.sum(0, dtype=torch.int32)
        rank[i + 1:] += ~i_lower
    # bring the ranks back into 0..d, moving the remainder-0 point with them
    shift = (rank > d).to(torch.int32).sub_((rank < 0).to(torch.int32)).mul_(d + 1)
    return rem0.to(torch.int32).sub_(shift), rank.sub_(shift)


def _barycentric(elevated, rem0, rank) -> torch.Tensor:
    """(N, d+1) weights of the simplex vertices, indexed by remainder 0..d.

    With v_c = (z_c - rem0_c) / (d+1) placed at k = d - rank_c (a permutation of 0..d), s_k:
    b_k = s_k - s_{k-1} for k >= 1 and b_0 = 1 + s_0 - s_d.
    """
    d = elevated.shape[0] - 1
    step = (elevated - rem0.to(elevated.dtype)) * (1.0 / (d + 1))
    placed = torch.empty_like(step).scatter_(0, (d - rank).to(torch.int64), step)
    weights = torch.empty_like(step)
    torch.sub(placed[1:], placed[:-1], out=weights[1:])
    weights[0] = 1 + placed[0] - placed[d]
    return weights.t().contiguous()


class _Keys:
    """Packs lattice points into one integer each, ordered by (remainder, group, position).

    All coordinates of a remainder-r point are r mod (d+1), so (r, z) with key = r + (d+1) z
    names it; z's d stored axes (the last is implied by the zero sum) are packed in mixed radix
    under the remainder and the group.  Sorting the packed keys hashes the lattice; vertices come
    out numbered by remainder first, so each point's vertices r = 0..d have ascending numbers.
    A step along u_j = (d+1) e_j - 1 goes from remainder r to r - 1 (mod d+1), and in packed keys
    adds a constant that depends only on (j, r == 0) (``step``).
    """

    def __init__(self, rem0, groups):
        d = rem0.shape[0] - 1
        self.dim = d
        z0 = torch.div(rem0[:d], d + 1, rounding_mode="floor").to(torch.int64)
        # vertices lie within z0 - 1 .. z0, their neighbours one further: room of 2 either side
        low = z0.min(1).values - 2
        spans = z0.max(1).values + 2 - low + 1
        num_groups = 1 if groups is None else int(groups.max()) + 1
        self.strides = [1] * d
        for axis in range(d - 2, -1, -1):
            self.strides[axis] = self.strides[axis + 1] * int(spans[axis + 1])
        self.group_stride = self.strides[0] * int(spans[0]) if d else 1
        self.class_stride = self.group_stride * num_groups
        bits = math.log2(self.class_stride * (d + 1))
        if bits > 62:
            raise ValueError(f"features: the lattice keys span 2^{bits:.0f} values, more than "
                             f"64-bit packing allows; scale the features down (divide by a "
                             f"larger sigma)")
        self.dtype = torch.int32 if bits < 31 else torch.int64
        strides = torch.tensor(self.strides, dtype=torch.int64, device=rem0.device)
        self.base = ((z0 - low[:, None]) * strides[:, None]).sum(0)
        if groups is not None:
            self.base += groups * self.group_stride
        self._strides = strides

    def of_vertices(self, rank) -> torch.Tensor:
        """(N, d+1) packed keys of each point's simplex vertices, by remainder r.

        Vertex r has z_c = z0_c - [rank_c > d - r]: with below[t] the stride sum of the axes
        with d - rank_c <= t, its packed key is r C + base - below[r - 1] (C the class stride).
        """
        d, n = self.dim, rank.shape[1]
        at = torch.zeros(d + 1, n, dtype=torch.int64, device=rank.device)
        at.scatter_add_(0, (d - rank[:d]).to(torch.int64), self._strides[:, None].expand(d, n))
        packed = torch.empty(d + 1, n, dtype=torch.int64, device=rank.device)
        packed[0] = self.base
        torch.sub(self.base, torch.cumsum(at[:d], 0), out=packed[1:])
        packed += (torch.arange(d + 1, device=rank.device) * self.class_stride)[:, None]
        return packed.t().to(self.dtype).contiguous()

    def step(self, direction: int, from_class_zero: bool) -> int:
        """The packed-key difference of a step along u_direction."""
        d, along = self.dim, (self.strides[direction] if direction < self.dim else 0)
        if from_class_zero:     # remainder 0 -> d: every stored z_c drops by 1, z_j stays
            return d * self.class_stride - sum(self.strides) + along
        return -self.class_stride + along       # remainder r -> r - 1: z_j grows by 1


def _csr(crow, col, values, size) -> torch.Tensor:
    # 32-bit indices where they fit: MKL and cuSPARSE take them as they are (64-bit ones are
    # converted on every product)
    if max(col.numel(), *size) < 2 ** 31:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    with warnings.catch_warnings():    # torch marks sparse CSR as beta
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _product(matrix: torch.Tensor, dense: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """matrix @ dense written into ``out``; beta = 0 ignores out's contents and skips zeroing it
    (torch.sparse.mm zero-fills and copies a fresh result)."""
    return torch.addmm(out, matrix, dense, beta=0, out=out)


class PermutohedralLattice:
    """The lattice of N points' features, built once; ``filter`` applies the Gaussian to values.

    ``groups`` (N,) keeps points of different groups (e.g. images of a batch) apart: their
    vertices never meet, so the filter is block diagonal and one call filters the whole batch.
    ``dtype`` is that of the sparse matrices; ``filter`` works in it.
    """

    def __init__(self, features, groups=None, dtype=torch.float32):
        features, groups = _check_features(features, groups)
        features = features.to(torch.float32)   # the key arithmetic is pydensecrf's, in float32
        self.num_points, self.dim = features.shape
        self.device, self.dtype = features.device, dtype
        d = self.dim
        elevated = _elevate(features)
        rem0, rank = _enclosing_simplex(elevated)
        self.barycentric = _barycentric(elevated, rem0, rank)
        keys = _Keys(rem0, groups)
        # hashing = sorting: equal keys are one vertex, numbered in key order
        sorted_keys, order = torch.sort(keys.of_vertices(rank).reshape(-1), stable=True)
        vertex_keys, vertex_of_sorted, counts = torch.unique_consecutive(
            sorted_keys, return_inverse=True, return_counts=True)
        self.num_vertices = vertex_keys.numel()
        vertex_of = torch.empty_like(vertex_of_sorted).scatter_(0, order, vertex_of_sorted)
        self.vertices = vertex_of.reshape(self.num_points, d + 1)     # (N, d+1) vertex indices
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.scale = torch.ones(self.num_points, dtype=dtype, device=self.device)
        self._rank = rank                       # (d+1, N): for the exact diagonal
        self._splat = self._splat_matrix(order, counts)
        self._slice = self._slice_matrix()
        # the remainder class of each vertex: runs of the sorted keys
        class_starts = torch.searchsorted(
            vertex_keys, torch.arange(d + 2, device=self.device).to(vertex_keys.dtype)
            * keys.class_stride)
        vertex_class = torch.repeat_interleave(
            torch.arange(d + 1, device=self.device), torch.diff(class_starts))
        # per direction j: the index of v + u_j and of v - u_j (-1: not in the lattice)
        self._neighbours = []
        self._blurs = [self._blur_matrix(vertex_keys, vertex_class, keys, j) for j in range(d + 1)]

    def _splat_matrix(self, order, counts) -> torch.Tensor:
        """(M, N): each vertex gathers the points of its simplices, weights b."""
        crow = torch.zeros(self.num_vertices + 1, dtype=torch.int64, device=self.device)
        crow[1:] = torch.cumsum(counts, 0)
        # the sort was stable, so each vertex's points are in ascending order
        col = torch.div(order, self.dim + 1, rounding_mode="trunc")
        values = self.barycentric.reshape(-1)[order].to(self.dtype)
        return _csr(crow, col, values, (self.num_vertices, self.num_points))

    def _slice_matrix(self) -> torch.Tensor:
        """(N, M): each point reads its d+1 vertices, weights alpha * b (columns ascending: the
        vertices are numbered by remainder first)."""
        values = self.barycentric.to(self.dtype) * self.alpha
        crow = torch.arange(0, self.vertices.numel() + 1, self.dim + 1, device=self.device)
        return _csr(crow, self.vertices.reshape(-1), values.reshape(-1),
                    (self.num_points, self.num_vertices))

    def _blur_matrix(self, vertex_keys, vertex_class, keys, direction) -> torch.Tensor:
        """(M, M): I + (shift by +u_j + shift by -u_j) / 2 over the existing vertices."""
        m, d = self.num_vertices, self.dim
        vertex = torch.arange(m, device=self.device)
        steps = torch.tensor([keys.step(direction, r == 0) for r in range(d + 1)],
                             device=self.device).to(vertex_keys.dtype)
        wanted = vertex_keys + steps[vertex_class]
        at = torch.searchsorted(vertex_keys, wanted).clamp_(max=m - 1)
        plus = torch.where(vertex_keys[at] == wanted, at, -1)
        # v is w's minus neighbour exactly when w is v's plus one (index m: a dump slot)
        minus = torch.full((m + 1,), -1, dtype=torch.int64, device=self.device)
        minus.scatter_(0, torch.where(plus >= 0, plus, m), vertex)
        minus = minus[:m]
        self._neighbours.append((plus, minus))
        # row v holds v, plus and minus, the missing ones left out, columns ascending: plus is
        # in class r - 1, minus in r + 1 (mod d+1), and the classes are numbered in order
        has_plus, has_minus = (plus >= 0).to(torch.int64), (minus >= 0).to(torch.int64)
        crow = torch.zeros(m + 1, dtype=torch.int64, device=self.device)
        crow[1:] = torch.cumsum(1 + has_plus + has_minus, 0)
        start, nnz = crow[:-1], int(crow[-1])
        first, last = vertex_class == 0, vertex_class == d
        # middle classes: [plus, v, minus]; class 0: [v, minus, plus]; class d: [minus, plus, v]
        at_plus = torch.where(first, start + 1 + has_minus,
                              torch.where(last, start + has_minus, start))
        at_vertex = torch.where(first, start,
                                torch.where(last, start + has_minus + has_plus, start + has_plus))
        at_minus = torch.where(first, start + 1, torch.where(last, start, at_vertex + 1))
        col = torch.empty(nnz + 1, dtype=torch.int64, device=self.device)    # nnz: a dump slot
        col[torch.where(plus >= 0, at_plus, nnz)] = plus
        col[torch.where(minus >= 0, at_minus, nnz)] = minus
        col[at_vertex] = vertex
        values = torch.full((nnz + 1,), 0.5, dtype=self.dtype, device=self.device)
        values[at_vertex] = 1.0
        return _csr(crow, col[:nnz], values[:nnz], (m, m))

    def filter(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """(N, V) or (N,) values -> the lattice's Gaussian sums, same shape, in ``self.dtype``.

        ``reverse``: blur the directions backwards, which applies the transposed operator.
        """
        if values.shape[0] != self.num_points or values.ndim not in (1, 2):
            raise ValueError(f"values: expected shape ({self.num_points},) or "
                             f"({self.num_points}, V), got {tuple(values.shape)}")
        column = values.ndim == 1
        x = values.reshape(self.num_points, -1).to(device=self.device, dtype=self.dtype)
        x = x.contiguous()
        lattice, spare = (x.new_empty(self.num_vertices, x.shape[1]) for _ in range(2))
        _product(self._splat, x, lattice)
        for blur in (reversed(self._blurs) if reverse else self._blurs):
            lattice, spare = _product(blur, lattice, spare), lattice
        out = _product(self._slice, lattice, x.new_empty(self.num_points, x.shape[1]))
        return out[:, 0] if column else out

    def scaled(self, scale: torch.Tensor) -> "PermutohedralLattice":
        """The same lattice filtering diag(scale) K diag(scale) x (e.g. a kernel normalisation),
        the scale folded into the splat and slice weights, so filtering costs nothing more."""
        scale = _check_scale(scale, self)
        out = copy.copy(self)
        splat, slice_ = self._splat, self._slice
        out._splat = _csr(splat.crow_indices(), splat.col_indices(),
                          splat.values() * scale[splat.col_indices()], splat.shape)
        slice_values = slice_.values().reshape(self.num_points, -1) * scale[:, None]
        out._slice = _csr(slice_.crow_indices(), slice_.col_indices(), slice_values.reshape(-1),
                          slice_.shape)
        out.scale = self.scale * scale
        return out

    def self_weights(self) -> torch.Tensor:
        """(N,) the operator's diagonal: each point's weight on itself (times scale^2), exactly.

        A point's weight on itself is alpha sum_{r, r'} b_r b_r' B(v_r <- v_r'), B the blur
        product, over the vertices of its simplex.  From v_r' to v_r (r != r') the blur has two
        paths, one step each along the directions of a set T and of its complement: v_r - v_r' is
        -+ sum_{j in T} u_j = +- sum_{j not in T} u_j (the u_j sum to zero), T the |r - r'|
        directions whose rank lies between d - max(r, r') and d - min(r, r'); from v_r to itself
        three: stay, or a step along every direction, all + or all -.  A path of k steps weighs
        2^-k if every vertex it passes is in the lattice, else 0.  Computed once per simplex.
        """
        simplex_of, first = self._simplices()
        vertices = self.vertices[first]                          # (S, d+1)
        rank = self._rank[:, first].t().to(torch.int64)          # (S, d+1)
        blur = self._simplex_blur_weights(vertices, rank)        # (S, d+1, d+1): [r, r']
        b = self.barycentric.to(torch.float64)
        weights = self.alpha * torch.einsum("nr,nrs,ns->n", b, blur[simplex_of], b)
        return weights.to(self.dtype) * self.scale ** 2

    def _simplices(self):
        """Each point's simplex (points with the same vertex 0 and ranks share all vertices) and
        one point of each simplex."""
        d1 = self.dim + 1
        rank = self._rank.to(torch.int64)
        if self.num_vertices * d1 ** d1 < 2 ** 62:
            powers = d1 ** torch.arange(d1, device=self.device)
            code = self.vertices[:, 0] * d1 ** d1 + (rank * powers[:, None]).sum(0)
            _, simplex_of = torch.unique(code, return_inverse=True)
        else:
            rows = torch.cat([self.vertices[:, :1], rank.t()], 1)
            _, simplex_of = torch.unique(rows, dim=0, return_inverse=True)
        first = torch.empty(int(simplex_of.max()) + 1, dtype=torch.int64, device=self.device)
        first.scatter_(0, simplex_of, torch.arange(self.num_points, device=self.device))
        return simplex_of, first

    def _simplex_blur_weights(self, vertices, rank, chunk=4096) -> torch.Tensor:
        """(S, d+1, d+1) float64: the blur product's weight from vertex r' to vertex r of each
        simplex, following every path through the neighbour tables (chunks bound the memory)."""
        d, d1, m = self.dim, self.dim + 1, self.num_vertices
        # per direction, one table for a step by -1, 0, +1: rows [v - u_j, v, v + u_j] with a
        # sink m for "not in the lattice" that leads to itself
        stay = torch.arange(m + 1, device=self.device)
        tables = []
        for plus, minus in self._neighbours:
            moves = [torch.cat([torch.where(n >= 0, n, m), stay[-1:]]) for n in (minus, plus)]
            tables.append(torch.cat([moves[0], stay, moves[1]]))
        target, source, kind = _blur_paths(d1, self.device)
        # the step along direction j is slope * [j in T] + offset (see _blur_paths)
        sign = torch.where(target > source, -1, 1)
        slope = torch.where(kind == 2, 0, sign)[:, None, None]
        offset = torch.where(kind == 0, 0, torch.where(kind == 1, -sign, 1))[:, None, None]
        low = (d - torch.maximum(target, source))[:, None, None]
        high = (d - torch.minimum(target, source))[:, None, None]
        out = torch.zeros(vertices.shape[0], d1 * d1, dtype=torch.float64, device=self.device)
        for start in range(0, vertices.shape[0], chunk):
            v, r = vertices[start:start + chunk], rank[start:start + chunk]
            in_t = ((r[None] > low) & (r[None] <= high)).to(torch.int64)  # (paths, simplices, d+1)
            step = slope * in_t + offset
            at = v[:, source].t()                                           # (paths, simplices)
            for j in range(d1):
                at = tables[j][(step[:, :, j] + 1) * (m + 1) + at]
            found = (0.5 ** (step != 0).sum(2).to(torch.float64)) * (at == v[:, target].t())
            out[start:start + chunk].index_add_(1, target * d1 + source, found.t())
        return out.reshape(-1, d1, d1)


def _blur_paths(d1: int, device):
    """The candidate blur paths from vertex r' (source) to vertex r (target) of a simplex, as
    (target, source, kind): kind 0 steps along T, 1 along its complement (the opposite way),
    2 (r = r' only) along every direction, +; with T empty, kind 0 stays and kind 1 goes all -."""
    rows = [(target, source, kind) for target in range(d1) for source in range(d1)
            for kind in ((0, 1, 2) if target == source else (0, 1))]
    table = torch.tensor(rows, dtype=torch.int64, device=device)
    return table[:, 0], table[:, 1], table[:, 2]


def _check_scale(scale, filter_) -> torch.Tensor:
    scale = torch.as_tensor(scale).to(device=filter_.device, dtype=filter_.dtype)
    if scale.shape != (filter_.num_points,):
        raise ValueError(f"scale: expected shape ({filter_.num_points},), got {tuple(scale.shape)}")
    return scale


class ExactGaussianFilter:
    """Brute force: the dense N x N matrix k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2) (zero across
    groups).  Same interface as ``PermutohedralLattice``; for tests and tiny inputs only."""

    def __init__(self, features, groups=None, dtype=torch.float64):
        features, groups = _check_features(features, groups)
        self.num_points, self.dim = features.shape
        self.device, self.dtype = features.device, dtype
        f = features.to(dtype)
        self.matrix = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
        if groups is not None:
            self.matrix = self.matrix * (groups[:, None] == groups[None, :]).to(dtype)
        self.scale = torch.ones(self.num_points, dtype=dtype, device=self.device)

    def filter(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        if values.shape[0] != self.num_points or values.ndim not in (1, 2):
            raise ValueError(f"values: expected shape ({self.num_points},) or "
                             f"({self.num_points}, V), got {tuple(values.shape)}")
        return self.matrix @ values.to(device=self.device, dtype=self.dtype)   # symmetric

    def scaled(self, scale: torch.Tensor) -> "ExactGaussianFilter":
        """The filter of diag(scale) K diag(scale)."""
        scale = _check_scale(scale, self)
        out = copy.copy(self)
        out.matrix = scale[:, None] * self.matrix * scale[None, :]
        out.scale = self.scale * scale
        return out

    def self_weights(self) -> torch.Tensor:
        """(N,) the diagonal: k(f_i, f_i) = 1, times scale^2."""
        return self.scale ** 2
