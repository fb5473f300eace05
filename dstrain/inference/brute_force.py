"""Brute-force inference by enumerating every joint state.

This module is the reference the fast inference code is tested against, so it
favours being obviously right over being fast. It lists all joint states of
the graph as one integer matrix, scores each row by summing the region
potentials, and reads the log partition function, the region marginals and
the MAP state straight off those scores.

Model convention: ``F(y) = sum_k potentials[k][y[regions[k]]]`` and
``p(y) ∝ exp(F(y) / eps)``. A region is a tuple of variable indices in any
order; its potential is indexed in that same order.
"""

import numpy as np

#: Largest joint state space the enumeration will build (about 4 million rows).
MAX_JOINT_STATES = 2**22


def _check_model(cardinalities, regions, potentials):
    """Validate the model and return (cardinalities, regions, potentials) normalised."""
    cardinalities = tuple(int(c) for c in cardinalities)
    if any(c < 1 for c in cardinalities):
        raise ValueError(f"cardinalities must all be >= 1, got {cardinalities}")
    regions = [tuple(int(v) for v in region) for region in regions]
    if len(potentials) != len(regions):
        raise ValueError(
            f"potentials must have one array per region: got {len(potentials)} "
            f"potentials for {len(regions)} regions"
        )
    checked = []
    for k, (region, potential) in enumerate(zip(regions, potentials)):
        for v in region:
            if not 0 <= v < len(cardinalities):
                raise ValueError(
                    f"regions[{k}] = {region} names variable {v}, but there are "
                    f"only {len(cardinalities)} variables"
                )
        potential = np.asarray(potential, dtype=np.float64)
        expected = tuple(cardinalities[v] for v in region)
        if potential.shape != expected:
            raise ValueError(
                f"potentials[{k}] must have shape {expected} for region {region}, "
                f"got {potential.shape}"
            )
        checked.append(potential)
    return cardinalities, regions, checked


def _all_joint_states(cardinalities):
    """Return an (S, n) int64 matrix whose rows are all S joint states."""
    num_states = int(np.prod(cardinalities, dtype=object)) if cardinalities else 1
    if num_states > MAX_JOINT_STATES:
        raise ValueError(
            f"joint state space has {num_states} states, more than the "
            f"{MAX_JOINT_STATES} (2**22) brute-force enumeration allows"
        )
    if not cardinalities:
        return np.zeros((1, 0), dtype=np.int64)
    # Row s is the mixed-radix expansion of s, so every state appears exactly once.
    columns = np.unravel_index(np.arange(num_states), cardinalities)
    return np.stack(columns, axis=1).astype(np.int64)


def _scores(states, regions, potentials):
    """Return F(y) for every row y of ``states``."""
    scores = np.zeros(states.shape[0], dtype=np.float64)
    for region, potential in zip(regions, potentials):
        # Fancy indexing with one column per region variable picks, for each
        # joint state, the potential entry of that state restricted to the region.
        scores += potential[tuple(states[:, v] for v in region)]
    return scores


def _log_sum_exp(values):
    """Stable log(sum(exp(values))) for a 1-D array."""
    peak = np.max(values)
    if not np.isfinite(peak):
        # All -inf (log 0) or some +inf: the naive formula already gives the answer.
        return float(np.log(np.sum(np.exp(values))))
    return float(peak + np.log(np.sum(np.exp(values - peak))))


def _scaled_scores(cardinalities, regions, potentials, eps):
    """Enumerate the joint states and return them with their scores F(y) / eps."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    cardinalities, regions, potentials = _check_model(cardinalities, regions, potentials)
    states = _all_joint_states(cardinalities)
    return states, regions, potentials, _scores(states, regions, potentials) / eps


def enumerate_log_partition(cardinalities, regions, potentials, eps=1.0):
    """Return log sum_y exp(F(y) / eps) by enumerating every joint state."""
    _, _, _, scaled = _scaled_scores(cardinalities, regions, potentials, eps)
    return _log_sum_exp(scaled)


def enumerate_marginals(cardinalities, regions, potentials, eps=1.0):
    """Return (region marginals, log Z) by enumerating every joint state.

    ``marginals[k]`` has the shape of ``potentials[k]`` and holds
    p(y restricted to regions[k]) under p(y) ∝ exp(F(y) / eps).
    """
    states, regions, potentials, scaled = _scaled_scores(
        cardinalities, regions, potentials, eps
    )
    log_z = _log_sum_exp(scaled)
    # Subtracting log Z before exponentiating keeps huge scores finite.
    probabilities = np.exp(scaled - log_z)
    marginals = []
    for region, potential in zip(regions, potentials):
        if not region:
            marginals.append(np.array(probabilities.sum()))
            continue
        # Sum the probability of every joint state into the cell of its region state.
        flat_index = np.ravel_multi_index(
            tuple(states[:, v] for v in region), potential.shape
        )
        totals = np.bincount(flat_index, weights=probabilities, minlength=potential.size)
        marginals.append(totals.reshape(potential.shape))
    return marginals, log_z


def enumerate_map(cardinalities, regions, potentials):
    """Return the joint state (int64, one entry per variable) maximising F.

    Ties go to the first maximiser in mixed-radix order (variable 0 most significant).
    """
    states, _, _, scores = _scaled_scores(cardinalities, regions, potentials, 1.0)
    return states[int(np.argmax(scores))].copy()
