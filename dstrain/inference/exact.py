"""Exact inference for chains and pairwise forests.

Chains are batched: ``unary`` is (B, L, C), ``pairwise`` is (B, L-1, C, C) with
``pairwise[b, t, a, c]`` the potential of (y_t = a, y_{t+1} = c), and sample b
only uses its first ``lengths[b]`` positions. The recursions loop over time
steps and are vectorised over the batch; every sample runs the same L steps
and per-sample masks decide which steps count. Everything is done in log space
with max-subtraction, so potentials of magnitude 1e4 stay finite.

Forests (any tree-structured pairwise model given as regions and potentials,
as in :mod:`dstrain.inference.brute_force`) get exact MAP by max-product
dynamic programming.

Model convention: ``F(y) = sum_k potentials[k][y[regions[k]]]`` and
``p(y) ∝ exp(F(y) / eps)``.
"""

from collections import deque

import numpy as np

# --------------------------------------------------------------------------- #
# Chains
# --------------------------------------------------------------------------- #


def _check_chain(unary, pairwise, lengths):
    """Validate chain inputs; return float64 unary, pairwise and int64 lengths."""
    unary = np.asarray(unary, dtype=np.float64)
    if unary.ndim != 3:
        raise ValueError(f"unary must have shape (B, L, C), got shape {unary.shape}")
    batch, length, num_labels = unary.shape
    if length < 1 or num_labels < 1:
        raise ValueError(
            f"unary must have shape (B, L, C) with L >= 1 and C >= 1, got {unary.shape}"
        )
    pairwise = np.asarray(pairwise, dtype=np.float64)
    expected_pairwise = (batch, length - 1, num_labels, num_labels)
    if pairwise.shape != expected_pairwise:
        raise ValueError(
            f"pairwise must have shape (B, L-1, C, C) = {expected_pairwise}, "
            f"got {pairwise.shape}"
        )
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape (B,) = ({batch},), got {lengths.shape}")
    if batch and not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    lengths = lengths.astype(np.int64)
    if np.any(lengths < 1) or np.any(lengths > length):
        raise ValueError(f"lengths must lie in [1, L] = [1, {length}], got {lengths}")
    return unary, pairwise, lengths


def _chain_masks(lengths, length):
    """Return boolean masks (B, L) of valid positions and (B, L-1) of valid pairs."""
    positions = np.arange(length)
    node_valid = positions[None, :] < lengths[:, None]
    pair_valid = positions[None, : length - 1] < (lengths[:, None] - 1)
    return node_valid, pair_valid


def _clean_chain(unary, pairwise, lengths):
    """Zero every entry beyond each sample's length.

    Padding may hold NaN or inf; replacing it with 0 (not multiplying by a mask,
    which would keep NaN) keeps the padded steps of the recursions finite, so
    they cannot leak into the steps that count.
    """
    node_valid, pair_valid = _chain_masks(lengths, unary.shape[1])
    unary = np.where(node_valid[:, :, None], unary, 0.0)
    pairwise = np.where(pair_valid[:, :, None, None], pairwise, 0.0)
    return unary, pairwise, node_valid, pair_valid


def _log_sum_exp(values, axis):
    """Stable log(sum(exp(values))) along ``axis`` (all -inf gives -inf)."""
    peak = np.max(values, axis=axis, keepdims=True)
    # A non-finite peak (all -inf, i.e. zero mass) would give nan from inf - inf;
    # shifting by 0 instead lets exp/log return the right -inf.
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        total = np.log(np.sum(np.exp(values - peak), axis=axis, keepdims=True))
    return np.squeeze(total + peak, axis=axis)


def _forward(log_unary, log_pairwise):
    """log_alpha[b, t, c] = log sum over y_0..y_{t-1} of the weight of the prefix ending in c."""
    batch, length, num_labels = log_unary.shape
    log_alpha = np.empty((batch, length, num_labels))
    log_alpha[:, 0] = log_unary[:, 0]
    for t in range(1, length):
        # Sum out y_{t-1} = a from alpha(a) * pairwise(a, c).
        incoming = log_alpha[:, t - 1, :, None] + log_pairwise[:, t - 1]
        log_alpha[:, t] = _log_sum_exp(incoming, axis=1) + log_unary[:, t]
    return log_alpha


def _backward(log_unary, log_pairwise, lengths):
    """log_beta[b, t, a] = log sum over y_{t+1}..y_{n-1} of the suffix weight given y_t = a.

    Each sample's suffix ends at its own last position lengths[b] - 1, where
    log_beta is 0 (the empty suffix); positions past it are also set to 0.
    """
    batch, length, num_labels = log_unary.shape
    log_beta = np.zeros((batch, length, num_labels))
    for t in range(length - 2, -1, -1):
        # Sum out y_{t+1} = c from pairwise(a, c) * unary(c) * beta(c).
        outgoing = log_pairwise[:, t] + (log_unary[:, t + 1] + log_beta[:, t + 1])[:, None, :]
        is_inside = (t < lengths - 1)[:, None]
        log_beta[:, t] = np.where(is_inside, _log_sum_exp(outgoing, axis=2), 0.0)
    return log_beta


def chain_marginals(unary, pairwise, lengths, eps=1.0):
    """Exact marginals and log partition function of a batch of chains.

    Returns ``(unary_marginals (B, L, C), pair_marginals (B, L-1, C, C),
    log_z (B,))`` for p(y) ∝ exp(F(y) / eps). Marginals are exactly 0 at
    positions >= lengths[b] (pair positions >= lengths[b] - 1).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    unary, pairwise, lengths = _check_chain(unary, pairwise, lengths)
    unary, pairwise, node_valid, pair_valid = _clean_chain(unary, pairwise, lengths)
    log_unary, log_pairwise = unary / eps, pairwise / eps

    log_alpha = _forward(log_unary, log_pairwise)
    log_beta = _backward(log_unary, log_pairwise, lengths)
    batch_index = np.arange(unary.shape[0])
    log_z = _log_sum_exp(log_alpha[batch_index, lengths - 1], axis=1)

    # Subtract log Z inside the exponent: each factor alone may be huge.
    log_node = log_alpha + log_beta - log_z[:, None, None]
    unary_marginals = np.where(node_valid[:, :, None], np.exp(log_node), 0.0)

    log_pair = (
        log_alpha[:, :-1, :, None]
        + log_pairwise
        + (log_unary[:, 1:] + log_beta[:, 1:])[:, :, None, :]
        - log_z[:, None, None, None]
    )
    pair_marginals = np.where(pair_valid[:, :, None, None], np.exp(log_pair), 0.0)
    return unary_marginals, pair_marginals, log_z


def chain_score(unary, pairwise, lengths, labels):
    """Return F(labels) (B,) for a batch of chains, reading only valid positions."""
    unary, pairwise, lengths = _check_chain(unary, pairwise, lengths)
    unary, pairwise, node_valid, pair_valid = _clean_chain(unary, pairwise, lengths)
    labels = np.where(node_valid, np.asarray(labels), 0).astype(np.int64)
    batch_index = np.arange(unary.shape[0])[:, None]
    time_index = np.arange(unary.shape[1])[None, :]
    # Padded entries were zeroed above, so they add nothing.
    node_terms = unary[batch_index, time_index, labels]
    pair_terms = pairwise[batch_index, time_index[:, :-1], labels[:, :-1], labels[:, 1:]]
    return node_terms.sum(axis=1) + pair_terms.sum(axis=1)


def chain_viterbi(unary, pairwise, lengths):
    """Exact MAP labelling of a batch of chains (max-sum dynamic programming).

    Returns ``(labels (B, L) int64, scores (B,) float64)``: labels are -1 at
    positions >= lengths[b], and scores[b] is F of the returned labelling.
    Ties go to the lowest label.
    """
    unary, pairwise, lengths = _check_chain(unary, pairwise, lengths)
    unary, pairwise, _, _ = _clean_chain(unary, pairwise, lengths)
    batch, length, num_labels = unary.shape

    # best_score[b, t, c]: best prefix score ending in y_t = c;
    # backpointer[b, t, c]: the y_{t-1} achieving it.
    best_score = np.empty((batch, length, num_labels))
    backpointer = np.zeros((batch, length, num_labels), dtype=np.int64)
    best_score[:, 0] = unary[:, 0]
    for t in range(1, length):
        incoming = best_score[:, t - 1, :, None] + pairwise[:, t - 1]
        backpointer[:, t] = np.argmax(incoming, axis=1)
        best_score[:, t] = np.max(incoming, axis=1) + unary[:, t]

    batch_index = np.arange(batch)
    last_label = np.argmax(best_score[batch_index, lengths - 1], axis=1)
    labels = np.full((batch, length), -1, dtype=np.int64)
    current = np.zeros(batch, dtype=np.int64)
    for t in range(length - 1, -1, -1):
        # Each sample starts backtracking at its own last position; before that
        # `current` is meaningless and is overwritten here.
        current = np.where(t == lengths - 1, last_label, current)
        labels[:, t] = np.where(t < lengths, current, -1)
        if t > 0:
            current = backpointer[batch_index, t, current]

    # Re-score the labelling rather than reuse best_score so that the returned
    # score is F(labels) exactly, whatever the summation order.
    scores = chain_score(unary, pairwise, lengths, labels)
    return labels, scores


def chain2_viterbi(unary, pair1, pair2, lengths):
    """Exact MAP labelling of second-order chains (pairs at distance 1 and 2), batched.

    ``pair1`` is (B, L-1, C, C) for (y_t, y_{t+1}), ``pair2`` is (B, L-2, C, C) for (y_t, y_{t+2});
    entries beyond each length are ignored.  Dynamic programming over the state pair
    (y_{t-1}, y_t): best[b, c] = max_a best_prev[a, b] + pair2(a, c), plus the new terms.
    Returns labels (B, L) int64, -1 beyond each length.
    """
    unary = np.asarray(unary, dtype=np.float64)
    batch, length, num_labels = unary.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    pair1 = np.asarray(pair1, dtype=np.float64).reshape(batch, max(length - 1, 0), num_labels, num_labels)
    pair2 = np.asarray(pair2, dtype=np.float64).reshape(batch, max(length - 2, 0), num_labels, num_labels)
    if lengths.shape != (batch,) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > length:
        raise ValueError(f"lengths must be {batch} integers in [1, {length}]")
    # zero potentials beyond a word's end add nothing to any continuation, so running every word
    # to length L keeps each prefix optimal
    unary = np.where((np.arange(length) < lengths[:, None])[:, :, None], unary, 0.0)
    pair1 = np.where((np.arange(length - 1) < lengths[:, None] - 1)[:, :, None, None], pair1, 0.0)
    pair2 = np.where((np.arange(max(length - 2, 0)) < lengths[:, None] - 2)[:, :, None, None], pair2, 0.0)
    labels = np.full((batch, length), -1, dtype=np.int64)
    if length == 1:
        labels[:, 0] = unary[:, 0].argmax(axis=1)
        return labels
    rows = np.arange(batch)
    best = unary[:, 0, :, None] + unary[:, 1, None, :] + pair1[:, 0]        # (B, a, b)
    backpointer = np.zeros((batch, length, num_labels, num_labels), dtype=np.int64)
    for t in range(2, length):
        candidates = best[:, :, :, None] + pair2[:, t - 2, :, None, :]      # (B, a, b, c)
        backpointer[:, t] = candidates.argmax(axis=1)
        best = candidates.max(axis=1) + pair1[:, t - 1] + unary[:, t, None, :]
    last_pair = best.reshape(batch, -1).argmax(axis=1)
    labels[:, length - 2], labels[:, length - 1] = np.divmod(last_pair, num_labels)
    for t in range(length - 1, 1, -1):
        labels[:, t - 2] = backpointer[rows, t, labels[:, t - 1], labels[:, t]]
    labels[np.arange(length) >= lengths[:, None]] = -1
    return labels


# --------------------------------------------------------------------------- #
# Pairwise forests
# --------------------------------------------------------------------------- #


def _find_root(parent, v):
    """Union-find root of v, with path halving."""
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = parent[v]
    return v


def _check_variables(cardinalities, regions):
    """Return regions as int tuples, raising ValueError on out-of-range variables."""
    num_variables = len(cardinalities)
    regions = [tuple(int(v) for v in region) for region in regions]
    for k, region in enumerate(regions):
        for v in region:
            if not 0 <= v < num_variables:
                raise ValueError(
                    f"regions[{k}] = {region} names variable {v}, but there are "
                    f"only {num_variables} variables"
                )
    return regions


def is_pairwise_forest(cardinalities, regions):
    """True when the model is a pairwise forest.

    That is: every region has 1 or 2 distinct variables, no pair region appears
    twice (in either orientation), and the pairs form no cycle. Repeated unary
    regions are allowed (their potentials simply add up).
    """
    regions = _check_variables(cardinalities, regions)
    parent = list(range(len(cardinalities)))
    seen_pairs = set()
    for region in regions:
        if len(region) == 1:
            continue
        if len(region) != 2 or region[0] == region[1]:
            return False
        edge = frozenset(region)
        if edge in seen_pairs:
            return False
        seen_pairs.add(edge)
        root_i, root_j = _find_root(parent, region[0]), _find_root(parent, region[1])
        if root_i == root_j:
            # Both ends are already connected, so this edge would close a cycle.
            return False
        parent[root_i] = root_j
    return True


def _forest_tables(cardinalities, regions, potentials):
    """Return per-variable summed unary tables and oriented edge tables.

    ``edges[i][j]`` is the (card_i, card_j) table of pair (i, j), stored in both
    orientations so message passing never has to care how the pair was given.
    """
    node_tables = [np.zeros(int(c)) for c in cardinalities]
    edges = [dict() for _ in cardinalities]
    for k, (region, potential) in enumerate(zip(regions, potentials)):
        potential = np.asarray(potential, dtype=np.float64)
        expected = tuple(int(cardinalities[v]) for v in region)
        if potential.shape != expected:
            raise ValueError(
                f"potentials[{k}] must have shape {expected} for region {region}, "
                f"got {potential.shape}"
            )
        if len(region) == 1:
            node_tables[region[0]] = node_tables[region[0]] + potential
        else:
            i, j = region
            edges[i][j] = potential
            edges[j][i] = potential.T
    return node_tables, edges


def _breadth_first_trees(edges):
    """Root every tree at its lowest variable; return (order, parent).

    ``order`` lists each variable after its parent; ``parent[root] == -1``.
    """
    num_variables = len(edges)
    parent = np.full(num_variables, -1, dtype=np.int64)
    visited = np.zeros(num_variables, dtype=bool)
    order = []
    for root in range(num_variables):
        if visited[root]:
            continue
        visited[root] = True
        queue = deque([root])
        while queue:
            v = queue.popleft()
            order.append(v)
            for neighbour in edges[v]:
                if not visited[neighbour]:
                    visited[neighbour] = True
                    parent[neighbour] = v
                    queue.append(neighbour)
    return order, parent


def forest_map(cardinalities, regions, potentials):
    """Exact MAP state (int64, one per variable) of a pairwise forest.

    Max-product (max-sum in log space) dynamic programming: root each tree,
    send max-messages from the leaves to the root, take the best root state
    and backtrack. Variables in no region get state 0; several unary regions
    on one variable are summed.
    """
    regions = _check_variables(cardinalities, regions)
    if len(potentials) != len(regions):
        raise ValueError(
            f"potentials must have one array per region: got {len(potentials)} "
            f"potentials for {len(regions)} regions"
        )
    if not is_pairwise_forest(cardinalities, regions):
        raise ValueError(
            "forest_map needs a pairwise forest: regions of 1 or 2 variables, "
            "no repeated pair and no cycle"
        )
    node_tables, edges = _forest_tables(cardinalities, regions, potentials)
    order, parent = _breadth_first_trees(edges)

    # belief[v]: v's own table plus the max-messages of all its children, i.e.
    # the best score of v's subtree for each state of v.
    belief = [table.copy() for table in node_tables]
    backpointer = [None] * len(order)
    for v in reversed(order):  # children before parents
        p = parent[v]
        if p < 0:
            continue
        # candidate[state_p, state_v]: edge score plus the best of v's subtree.
        candidate = edges[p][v] + belief[v][None, :]
        backpointer[v] = np.argmax(candidate, axis=1)
        belief[p] = belief[p] + np.max(candidate, axis=1)

    states = np.zeros(len(order), dtype=np.int64)
    for v in order:  # parents before children
        p = parent[v]
        states[v] = np.argmax(belief[v]) if p < 0 else backpointer[v][states[p]]
    return states
