"""A user's own deep structured model in one file: a ring CRF with input-dependent pairwise scores.

Each sample is a ring of V sensors; sensor i reads a noisy one-hot of its state y_i in {0..S-1}
plus a noisy cue that says whether its clockwise neighbour's state differs.  The unary net sees
one sensor, the pairwise net sees both ends of an edge and scores all S x S state pairs, so the
CRF can carry a confident state around the ring where the cues say nothing changes.

    python examples/ring_crf.py --out data/ring.h5                    # the data
    dstrain train --config configs/ring_example.yaml                  # train (also under mpirun)
"""
import argparse
import os
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch import nn

from dstrain.data import ArraySplit
from dstrain.graph import GraphSpec, regions
from dstrain.models import StructuredModel, stacked_potentials
from dstrain.tasks import Task

NAME = "ring"


def generate(path, sizes=(2000, 300, 300), variables=8, states=3, seed=0):
    """Labels that change state at a random 30 % of the steps around the ring; weak evidence."""
    rng = np.random.default_rng(seed)
    with h5py.File(f"{path}.tmp", "w") as f:
        f.attrs.update(task=NAME, num_variables=variables, num_states=states)
        for split, n in zip(("train", "val", "test"), sizes):
            change = rng.random((n, variables)) < 0.3
            steps = np.where(change, rng.integers(1, states, (n, variables)), 0)
            y = (rng.integers(0, states, (n, 1)) + np.cumsum(steps, axis=1)) % states
            differs = (y != np.roll(y, -1, axis=1)).astype(np.float32)
            x = np.concatenate([np.eye(states, dtype=np.float32)[y] * 0.8,
                                differs[..., None] * 2.0], axis=2)
            f[f"{split}/x"] = (x + rng.normal(size=x.shape)).astype(np.float32)
            f[f"{split}/y"] = y
    os.replace(f"{path}.tmp", path)
    return path


class RingTask(Task):
    name, default_model = NAME, f"{__file__}:RingCRF"

    def open(self, path, split):
        return ArraySplit(path, split, NAME)

    def generate(self, path, data_config, progress=True):
        sizes = (data_config.num_train, data_config.num_val, data_config.num_test)
        return generate(path, sizes, seed=data_config.seed)


@dataclass
class RingOptions:
    hidden: int = 32        # width of the unary and pairwise nets


def mlp(n_in, hidden, n_out):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class RingCRF(StructuredModel):
    Options = RingOptions
    families = ("unary", "pairwise")

    def __init__(self, num_features, num_variables, num_states, hidden=32):
        super().__init__()
        self.V, self.S = num_variables, num_states
        self.ends = torch.tensor([(i, (i + 1) % num_variables) for i in range(num_variables)])
        self.unary = mlp(num_features, hidden, num_states)
        self.pairwise = mlp(2 * num_features, hidden, num_states * num_states)

    @classmethod
    def from_data(cls, data, options):
        return cls(data.x_shape[-1], int(data.attrs["num_variables"]),
                   int(data.attrs["num_states"]), options.hidden)

    def graph(self, families):
        pairs = tuple(map(tuple, self.ends.tolist())) if "pairwise" in families else ()
        return GraphSpec(regions, ((self.S,) * self.V, tuple((i,) for i in range(self.V)) + pairs))

    def graphs(self, batch, families=families):
        return [self.graph(families)] * len(batch)

    def potentials(self, batch, families=families):
        tables = [self.unary(batch.x)]                                   # (B, V, S)
        if "pairwise" in families:
            ends = batch.x[:, self.ends].flatten(2)                       # (B, V, 2F)
            tables.append(self.pairwise(ends).unflatten(2, (self.S, self.S)))
        return stacked_potentials(self.graph(families), tables)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/ring.h5")
    os.makedirs(os.path.dirname(parser.parse_args().out) or ".", exist_ok=True)
    print("wrote", generate(parser.parse_args().out))
