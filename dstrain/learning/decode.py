"""MAP decoding of words: exact Viterbi for chains of order 0, 1 and 2."""
from __future__ import annotations

import numpy as np
import torch

from ..inference.exact import chain2_viterbi, chain_viterbi
from ..models import WordCRF


@torch.no_grad()
def decode(model: WordCRF, images: np.ndarray, lengths: np.ndarray, order: int | None = None,
           unary: np.ndarray | None = None) -> np.ndarray:
    """Most likely labels (B, L), -1 beyond each length, using pairs up to `order`.

    `unary`: the (B, L, C) unary scores if the caller has them already (saves a forward pass).
    """
    order = model.order if order is None else order
    if unary is None:
        device = next(model.parameters()).device
        unary = model.unary_scores(torch.from_numpy(images).to(device)).double().cpu().numpy()
    pairs = pair_arrays(model, len(lengths), order)
    if order == 0:
        labels = unary.argmax(axis=2)
        labels[np.arange(unary.shape[1]) >= lengths[:, None]] = -1
        return labels
    if order == 1:
        return chain_viterbi(unary, pairs[0], lengths)[0]
    if order == 2:
        return chain2_viterbi(unary, pairs[0], pairs[1], lengths)
    raise ValueError(f"decode: exact Viterbi is implemented for order <= 2, not {order}")


def pair_arrays(model: WordCRF, batch_size: int, order: int) -> list[np.ndarray]:
    """The pair tables as (B, L - d, C, C) arrays, d = 1..order."""
    out = []
    for d, table in enumerate(list(model.pairwise.tables)[:order], start=1):
        table = table.detach().double().cpu().numpy()
        positions = max(model.max_length - d, 0)
        per_position = np.broadcast_to(table, (positions, *table.shape[-2:])) if model.pairwise_shared \
            else table
        out.append(np.broadcast_to(per_position, (batch_size, *per_position.shape)))
    return out
