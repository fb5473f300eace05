"""The tagging task on the model interface: gradient against brute force, MAP decoding against
exhaustive search, the metrics against direct computations, and training through the CLI
(mpirun parity, bitwise resume, the emulated GPU path)."""
import itertools

import h5py
import numpy as np
import pytest
import torch

from dstrain.learning import InferenceOptions, backward, structured_loss
from dstrain.models import Batch
from dstrain.tasks.tagging.model import (TaggingCRF, local_search, map_assignment,
                                         mean_average_precision, pairs_of, scores)
from helpers import MPIRUN, dstrain_train, run_params



def tiny_model(num_tags, pairwise="table", seed=0, features=5, pair_scale=0.0):
    torch.manual_seed(seed)
    model = TaggingCRF((7,), num_tags, unary="mlp", hidden=[6], features=features,
                       pairwise=pairwise, pair_scale=pair_scale).double()
    with torch.no_grad():   # pairs away from their zero start, so they matter
        for name, p in model.named_parameters():
            if "pair" in name:
                p.normal_(std=0.8)
    rng = np.random.default_rng(seed)
    batch = Batch(torch.from_numpy(rng.normal(size=(5, 7))), rng.integers(0, 2, (5, num_tags)))
    return model, batch


def brute_force_loss(model, batch):
    """log Z - F(y) per image, every joint state enumerated, differentiable by autograd."""
    potentials = model.potentials(batch)
    flat = potentials.source[torch.from_numpy(potentials.layout.source_index)]
    K, pairs = model.num_tags, pairs_of(model.num_tags)
    flat = flat.reshape(len(batch), -1)
    unary, pair = flat[:, :2 * K].reshape(-1, K, 2), flat[:, 2 * K:].reshape(len(batch), -1, 2, 2)

    def score(y):
        total = unary[:, torch.arange(K), y].sum(1)
        return total + pair[:, torch.arange(len(pairs)), y[pairs[:, 0]], y[pairs[:, 1]]].sum(1)
    states = torch.tensor(list(itertools.product((0, 1), repeat=K)))
    every = torch.stack([score(s) for s in states], dim=1)
    truth = torch.stack([score(torch.as_tensor(y)) for y in batch.y])
    return torch.logsumexp(every, dim=1) - truth.diagonal()


def gradients(model, batch, options):
    potentials = model.potentials(batch)
    result = structured_loss(potentials, batch.y, options)
    model.zero_grad()
    backward(potentials, result)
    return result.loss, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("num_tags, algorithm, pairwise, features", [
    (5, "exact", "table", 5), (5, "exact", "net", 5), (5, "exact", "net", 0),
    (2, "converge", "table", 5)])   # two tags: one pair, a tree, where bethe BP is exact
def test_gradient_equals_brute_force(num_tags, algorithm, pairwise, features):
    model, batch = tiny_model(num_tags, pairwise, features=features)
    loss, ours = gradients(model, batch, InferenceOptions(
        algorithm=algorithm, counting_numbers="bethe", max_sweeps=1000, tol=1e-12))
    model.zero_grad()
    expected = brute_force_loss(model, batch)
    expected.sum().backward()
    np.testing.assert_allclose(loss, expected.detach().numpy(), rtol=1e-9)
    for mine, p in zip(ours, model.parameters()):
        torch.testing.assert_close(mine, p.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("unary, shape, width", [("cnn", (3, 8, 12), 4 * 2 * 3), ("mlp", (7,), 6)])
def test_features_zero_gives_heads_the_nets_last_layer(unary, shape, width):
    """features: 0 -- no hidden layer: the heads read the CNN's flattened conv features (4 channels
    of 8x12 pooled twice) or the MLP's last hidden layer; features: 9 puts a layer of 9 between."""
    for features, expected in ((0, width), (9, 9)):
        model = TaggingCRF(shape, 3, unary=unary, hidden=[6], cnn_channels=[2, 4],
                           features=features, pairwise="net")
        assert model.unary_head.in_features == model.pair_head.in_features == expected
        x = torch.randn(2, *shape)
        assert model.trunk(x).shape == (2, expected)
        assert model.potentials(Batch(x, np.zeros((2, 3), np.int64))).source.shape[0] > 0


def test_the_pairwise_nets_tables_are_its_outputs_over_the_partners_of_a_tag():
    # a tag's field sums K - 1 pair tables: each is divided by K - 1 unless pair_scale is given
    for scale, expected in ((0.0, 1 / 4), (1.0, 1.0), (0.3, 0.3)):
        model, batch = tiny_model(5, "net", pair_scale=scale)
        hidden = model.trunk(batch.x)
        outputs = model.pair_head(hidden).detach().numpy().reshape(len(batch), -1, 2, 2)
        unary, pair = model.split_potentials(model.potentials(batch))
        np.testing.assert_allclose(pair, outputs * expected, rtol=1e-12)
        np.testing.assert_allclose(unary[..., 1], model.unary_head(hidden).detach().numpy())


def test_map_decoding_against_exhaustive_search():
    rng = np.random.default_rng(3)
    K, B = 10, 40
    pairs = pairs_of(K)
    unary = rng.normal(size=(B, K, 2))
    pair = rng.normal(scale=0.7, size=(B, len(pairs), 2, 2))
    best = map_assignment(unary, pair, pairs)          # K <= 12: exhaustive
    states = np.array(list(itertools.product((0, 1), repeat=K)))
    for b in range(B):
        every = scores(unary[b:b + 1].repeat(len(states), 0), pair[b:b + 1], pairs, states)
        assert scores(unary[b:b + 1], pair[b:b + 1], pairs, best[b:b + 1])[0] == pytest.approx(every.max())
    # the local search used for many tags: never worse than where it starts, often the optimum
    start = (rng.random((B, K)) < 0.5).astype(np.int64)
    found = local_search(unary, pair, pairs, start)
    assert np.all(scores(unary, pair, pairs, found) >= scores(unary, pair, pairs, start) - 1e-12)
    optimum = scores(unary, pair, pairs, best)
    assert np.mean(np.isclose(scores(unary, pair, pairs, found), optimum)) >= 0.5
    # with many tags the decoder is never worse than thresholding the marginals at 0.5
    K = 20
    pairs = pairs_of(K)
    unary, pair = rng.normal(size=(B, K, 2)), rng.normal(scale=0.5, size=(1, len(pairs), 2, 2))
    marginal = rng.random((B, K))
    decoded = map_assignment(unary, pair, pairs, marginal)
    threshold = (marginal > 0.5).astype(np.int64)
    assert np.all(scores(unary, pair, pairs, decoded) >= scores(unary, pair, pairs, threshold) - 1e-12)


def average_precision(score, truth):
    order = np.argsort(-score, kind="stable")
    hits = truth[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return (precision * hits).sum() / hits.sum()


def test_metrics_against_direct_computation():
    rng = np.random.default_rng(5)
    model = TaggingCRF((7,), 6, unary="mlp", hidden=[4], features=3)
    y = (rng.random((300, 6)) < 0.3).astype(np.int64)
    marginal = np.clip(0.3 * y + rng.random((300, 6)) * 0.7, 0, 1)
    predicted = (marginal > 0.5).astype(np.int64)
    batch = Batch(torch.zeros(300, 7), y)
    beliefs = [np.stack([1 - marginal, marginal], axis=2)]
    halves = [model.metric_sums(Batch(None, y[s]), predicted[s], [beliefs[0][s]])
              for s in (slice(0, 137), slice(137, None))]   # as two ranks would, then summed
    report = model.metrics({k: halves[0][k] + halves[1][k] for k in halves[0]})
    assert report["hamming_error"] == pytest.approx((predicted != y).mean())
    assert report["exact_match"] == pytest.approx((predicted == y).all(axis=1).mean())
    f1 = [1.0 if p.sum() + t.sum() == 0 else 2 * (p * t).sum() / (p.sum() + t.sum())
          for p, t in zip(predicted, y)]
    assert report["example_f1"] == pytest.approx(np.mean(f1))
    direct = np.mean([average_precision(marginal[:, k], y[:, k]) for k in range(6)])
    assert report["mean_ap"] == pytest.approx(direct, abs=2e-3)   # histogram bins: ties within a bin
    assert model.metric_sums(batch, predicted, beliefs).keys() == halves[0].keys()
    assert mean_average_precision(np.zeros((2, 4)), np.ones((2, 4))) == 0.0


def features_file(path, num_train=48, num_val=16, tags=5, seed=0):
    """A feature-vector tagging file (the contract's (N, D) form) with correlated tags."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs.update(task="tagging", num_labels=tags)
        for split, n in (("train", num_train), ("val", num_val), ("test", num_val)):
            y = (rng.random((n, 1)) < 0.5) ^ (rng.random((n, tags)) < 0.2)
            f[f"{split}/x"] = (y * 1.0 + rng.normal(size=(n, tags))).astype(np.float32) @ \
                rng.normal(size=(tags, 8)).astype(np.float32)
            f[f"{split}/y"] = y.astype(np.uint8)
    return path


def train(run_dir, data, *extra, ranks=0, resume=None):
    done = dstrain_train("tagging_debug.yaml", run_dir, data, "train.epochs=3",
                         "train.pretrain_epochs=1", "train.batch_size=10", "train.batching=global",
                         "model.unary=mlp", "model.hidden=[6]", "model.features=4",
                         "run.dtype=float64", *extra, ranks=ranks, resume=resume)
    return run_params(run_dir), done.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return features_file(tmp_path_factory.mktemp("tagging") / "features.h5")


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_two_ranks_reproduce_one_process(data, tmp_path):
    one, _ = train(tmp_path / "one", data)
    two, _ = train(tmp_path / "two", data, ranks=2)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-10, err_msg=name)


@pytest.mark.slow
def test_resume_is_bitwise_and_the_emulated_gpu_path_equals_the_cpu_path(data, tmp_path):
    whole, log = train(tmp_path / "whole", data, "run.checkpoint_every=4")
    assert "hamming_error" in log and "mean_ap" in log
    train(tmp_path / "part", data, "run.checkpoint_every=4", "train.max_steps=6")
    resumed, _ = train(tmp_path / "part", data, "run.checkpoint_every=4", resume="auto")
    for name in whole:
        assert np.array_equal(resumed[name], whole[name]), name
    device, _ = train(tmp_path / "device", data, "debug.emulate_kernels=true")
    for name in whole:
        np.testing.assert_allclose(device[name], whole[name], rtol=0, atol=1e-10, err_msg=name)
