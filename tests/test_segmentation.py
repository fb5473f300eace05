"""The segmentation task's grid CRF on the model interface: its gradient against brute force
(with ignored pixels), the 8-connected option against brute force, the metrics, and training
through the CLI (mpirun parity, bitwise resume with blend messages by global image id, the
emulated GPU path)."""
import itertools
import json

import numpy as np
import pytest
import torch

from dstrain.config import ConfigError, config_from_dict
from dstrain.graph import GraphSpec, grid
from dstrain.inference.brute_force import enumerate_marginals
from dstrain.learning import InferenceOptions, backward, structured_loss
from dstrain.learning.params import load_messages
from dstrain.learning.trainer import message_store, train_step
from dstrain.models import Batch
from dstrain.tasks.segmentation import generate_segmentation
from dstrain.tasks.segmentation.model import GridCRF, confusion, segmentation_metrics
from helpers import MPIRUN, dstrain_train, run_params



def tiny(pairwise, seed=0, H=2, W=3, C=2, connectivity=4):
    torch.manual_seed(seed)
    model = GridCRF((3, H, W), C, depth=1, width=4, pairwise=pairwise,
                    connectivity=connectivity).double()
    with torch.no_grad():   # pairs away from their zero start, so they matter
        for name, p in model.named_parameters():
            if "table" in name or "pair" in name:
                p.normal_(std=0.7)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, (4, H, W))
    return model, Batch(torch.from_numpy(rng.normal(size=(4, 3, H, W))), y)


def brute_force(model, batch):
    """Per image: log Z and the beliefs of every region, enumerating all joint states (autograd)."""
    potentials = model.potentials(batch)
    layout = potentials.layout
    flat = potentials.source[torch.from_numpy(layout.source_index)].reshape(len(batch), -1)
    graph = layout.specs[0].graph
    states = list(itertools.product(range(model.num_classes), repeat=len(graph.cardinalities)))
    offsets = np.concatenate([[0], np.cumsum(graph.sizes)[:-1]])

    def entries(y):   # flat entry of every region at joint state y
        return [o + np.ravel_multi_index(tuple(y[v] for v in r), s)
                for o, r, s in zip(offsets, graph.regions, graph.shapes)]
    every = torch.stack([flat[:, entries(y)].sum(1) for y in states], dim=1)
    return flat, every, [entries(y) for y in states], offsets, graph


@pytest.mark.parametrize("pairwise", ["table", "net"])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_gradient_with_ignored_pixels(pairwise, connectivity):
    """Exact inference: the loss is log Z - (scores of the labelled regions) and the gradient of a
    region is belief - truth where every pixel of it is labelled, zero where one is not."""
    model, batch = tiny(pairwise, connectivity=connectivity)
    batch.y[0, 0, 1] = -1
    batch.y[2, 1, :] = -1
    potentials = model.potentials(batch)
    result = structured_loss(potentials, batch.y, InferenceOptions(algorithm="exact"))
    model.zero_grad()
    backward(potentials, result)
    ours = [p.grad.clone() for p in model.parameters()]

    flat, every, state_entries, offsets, graph = brute_force(model, batch)
    log_z = torch.logsumexp(every, dim=1)
    p = torch.softmax(every, dim=1).detach()
    target = torch.zeros_like(flat)   # the gradient w.r.t. the flat potentials, by hand
    labels = batch.y.reshape(len(batch.y), -1)
    for s in range(len(batch.y)):
        beliefs = torch.zeros(flat.shape[1], dtype=flat.dtype)
        for k, where in enumerate(state_entries):
            beliefs[where] += p[s, k]
        for o, r, size in zip(offsets, graph.regions, graph.sizes):
            if np.all(labels[s, list(r)] >= 0):
                target[s, o:o + size] = beliefs[o:o + size]
                target[s, o + np.ravel_multi_index(tuple(labels[s, list(r)]),
                                                   graph.shapes[graph.regions.index(r)])] -= 1
    scored = [sum(flat[s, o + np.ravel_multi_index(tuple(labels[s, list(r)]), sh)]
                  for o, r, sh in zip(offsets, graph.regions, graph.shapes)
                  if np.all(labels[s, list(r)] >= 0)) for s in range(len(batch.y))]
    np.testing.assert_allclose(result.loss, (log_z - torch.stack(scored)).detach().numpy(),
                               rtol=1e-10)
    model.zero_grad()
    torch.autograd.backward(flat, target)
    for mine, p in zip(ours, model.parameters()):
        torch.testing.assert_close(mine, p.grad, rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------ 8-connected grids

OFFSETS = [(0, 1), (1, 0), (1, 1), (1, -1)]   # right, down, down-right, down-left


def test_eight_connected_grid_has_every_diagonal_pair_once_after_the_four_connected_ones():
    H, W, C = 3, 4, 2
    four, eight = grid(H, W, C).regions, grid(H, W, C, 8).regions
    assert grid(H, W, C, 4).regions == four   # the default is the old 4-connected graph
    assert len(four) == H * W + H * (W - 1) + (H - 1) * W
    assert len(eight) == H * W + H * (W - 1) + (H - 1) * W + 2 * (H - 1) * (W - 1) == 41
    assert tuple(eight[:len(four)]) == tuple(four)
    # the added regions are exactly the pixel pairs at diagonal distance 1, each once, the first
    # pixel in the upper row (down-right pairs, then down-left), as the model's heads read them
    diagonal = eight[len(four):]
    expected = [(y * W + x, (y + 1) * W + x + 1) for y in range(H - 1) for x in range(W - 1)]
    expected += [(y * W + x + 1, (y + 1) * W + x) for y in range(H - 1) for x in range(W - 1)]
    assert list(diagonal) == expected
    chebyshev = {frozenset((a * W + b, c * W + d)) for a in range(H) for b in range(W)
                 for c in range(H) for d in range(W) if max(abs(a - c), abs(b - d)) == 1}
    assert {frozenset(r) for r in eight if len(r) == 2} == chebyshev and len(chebyshev) == 29
    # blend keeps one message per (pair, endpoint) edge, as long as the endpoint's state count
    assert GraphSpec(grid, (H, W, C, 8)).num_messages == 2 * C * 29
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        grid(H, W, C, 6)


def independent_model(model, batch):
    """Per image, the CRF listed directly from the model's parameters: regions (unaries, then
    every neighbour pair by its offset) and their score tables, without the grid builder or the
    model's stacking -- numpy, for dstrain.inference.brute_force."""
    H, W, C = model.height, model.width, model.num_classes
    with torch.no_grad():
        hidden = model.features(batch.x)                                        # (B, F, H, W)
        unary = model.unary_head(hidden).numpy()                                # (B, C, H, W)
        hidden = hidden.numpy()
    directions = OFFSETS[:model.connectivity // 2]
    out = []
    for s in range(len(batch)):
        regions = [(v,) for v in range(H * W)]
        tables = [unary[s, :, v // W, v % W] for v in range(H * W)]
        for d, (dy, dx) in enumerate(directions):
            for y in range(H):
                for x in range(W):
                    if not (0 <= y + dy < H and 0 <= x + dx < W):
                        continue
                    regions.append((y * W + x, (y + dy) * W + x + dx))
                    if model.pairwise_kind == "table":
                        tables.append(model.tables[d].detach().numpy())
                    else:   # a 1x1 convolution of both pixels' features: a matrix product
                        head = model.pair_heads[d]
                        ends = np.concatenate([hidden[s, :, y, x], hidden[s, :, y + dy, x + dx]])
                        score = head.weight.detach().numpy()[:, :, 0, 0] @ ends
                        tables.append((score + head.bias.detach().numpy()).reshape(C, C))
        out.append((regions, tables))
    return out


@pytest.mark.parametrize("pairwise", ["table", "net"])
def test_eight_connected_crf_against_brute_force(pairwise):
    """A 2x3 image with 2 classes, 8-connected: dstrain's exact inference (its graph, its
    stacking of the four directions' scores) gives the loss log Z - F(y) and the pixel marginals
    that enumerating the independently listed CRF gives."""
    model, batch = tiny(pairwise, seed=2, connectivity=8)
    potentials = model.potentials(batch)
    assert len(potentials.layout.specs[0].graph.regions) == 6 + 3 + 4 + 2 + 2
    result = structured_loss(potentials, batch.y, InferenceOptions(algorithm="exact"))
    beliefs = result.unary_beliefs[0]                                         # (B, V, C)
    for s, (regions, tables) in enumerate(independent_model(model, batch)):
        marginals, log_z = enumerate_marginals([2] * 6, regions, tables)
        labels = batch.y[s].ravel()
        score = sum(t[tuple(labels[list(r)])] for r, t in zip(regions, tables))
        assert result.loss[s] == pytest.approx(log_z - score, rel=1e-10)
        np.testing.assert_allclose(beliefs[s], np.stack(marginals[:6]), rtol=0, atol=1e-10)
        # the diagonal pairs matter here: dropping them changes the marginals
        plain, _ = enumerate_marginals([2] * 6, regions[:13], tables[:13])
        assert np.abs(np.stack(plain[:6]) - np.stack(marginals[:6])).max() > 1e-3


def test_eight_connected_is_a_config_choice():
    config = config_from_dict({"data": {"task": "segmentation"},
                               "model": {"class": "segmentation_grid", "connectivity": 8}})
    assert config.model.connectivity == 8
    for bad in (6, "eight"):
        with pytest.raises(ConfigError, match="model.connectivity"):
            config_from_dict({"data": {"task": "segmentation"},
                              "model": {"class": "segmentation_grid", "connectivity": bad}})


def four_connected_trace(pairwise):
    """Four blend steps of a 4-connected float64 model on random 5x4 images: the step losses,
    the sum of the kept messages and of the parameters' magnitudes."""
    torch.manual_seed(3)
    model = GridCRF((3, 5, 4), 3, depth=1, width=4, pairwise=pairwise).double()
    rng = np.random.default_rng(3)
    x, y = torch.from_numpy(rng.normal(size=(6, 3, 5, 4))), rng.integers(0, 3, (6, 5, 4))
    store = message_store(model, np.arange(6), y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(4):
        ids = np.arange(3) + 3 * (step % 2)
        optimizer.zero_grad()
        _, result = train_step(model, Batch(x[ids], y[ids], ids), model.families,
                               InferenceOptions(algorithm="blend", sweeps=2), store)
        optimizer.step()
        losses.append(float(result.loss.sum()))
    with torch.no_grad():
        magnitude = float(sum(p.abs().sum() for p in model.parameters()))
    return losses, float(store.host_values().sum()), magnitude


# recorded with the code before the 8-connected option (67d94cc), where they were bitwise equal
FOUR_CONNECTED = {
    "table": ([272.87686028499826, 277.70869132815295, 263.7290576795663, 267.57302963750516],
              -127.63375154793627, 27.758478168108574),
    "net": ([272.87686028499826, 280.0461549760841, 262.8781140852584, 268.08340179586054],
            -130.9209428552254, 34.70507747725264),
}


@pytest.mark.parametrize("pairwise", ["table", "net"])
def test_four_connected_trains_as_before_the_eight_connected_option(pairwise):
    losses, messages, magnitude = four_connected_trace(pairwise)
    expected = FOUR_CONNECTED[pairwise]
    # rtol, not equality: another CPU may sum a convolution in another order (1e-16 relative)
    np.testing.assert_allclose(losses, expected[0], rtol=1e-10)
    assert messages == pytest.approx(expected[1], rel=1e-10)
    assert magnitude == pytest.approx(expected[2], rel=1e-10)
    model = GridCRF((3, 5, 4), 3, depth=1, width=4, pairwise=pairwise)
    assert model.graph(model.families) == GraphSpec(grid, (5, 4, 3))   # the old spec, cached alike


def test_metrics_ignore_unlabelled_pixels():
    y = np.array([[0, 1, -1], [2, 2, 1]])
    predicted = np.array([[0, 2, 2], [2, 1, 1]])
    matrix = confusion(predicted, y, 3)
    assert matrix.sum() == 5 and matrix[0, 0] == 1 and matrix[1, 2] == 1
    report = segmentation_metrics(matrix, ["a", "b", "c"])
    assert report["pixel_accuracy"] == pytest.approx(3 / 5)
    # IoU: a 1/1, b 1/3 (hits 1; truth 2, predicted 2), c 1/3 (hits 1; truth 2, predicted 2)
    assert report["iou_a"] == 1.0 and report["iou_b"] == pytest.approx(1 / 3)
    assert report["mean_iou"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_segmentation(tmp_path_factory.mktemp("seg") / "seg.h5", num_train=24,
                                 num_val=8, num_test=4, height=6, width=5, num_classes=3,
                                 seed=1, progress=False)


def train(run_dir, data, *extra, ranks=0, resume=None):
    dstrain_train("segmentation_grid.yaml", run_dir, data, "train.epochs=3",
                  "train.pretrain_epochs=1", "train.batch_size=5", "train.batching=global",
                  "model.depth=1", "model.width=4", "run.dtype=float64", *extra, ranks=ranks,
                  resume=resume)
    return run_params(run_dir), load_messages(run_dir / "messages.h5")


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_two_ranks_reproduce_one_process(data, tmp_path):
    one, one_messages = train(tmp_path / "one", data)
    two, two_messages = train(tmp_path / "two", data, ranks=2)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-10, err_msg=name)
    assert sorted(two_messages) == list(range(24))
    for i in one_messages:
        np.testing.assert_allclose(two_messages[i], one_messages[i], atol=1e-10)


@pytest.mark.slow
def test_resume_is_bitwise_and_the_emulated_gpu_path_equals_the_cpu_path(data, tmp_path):
    whole, whole_messages = train(tmp_path / "whole", data, "run.checkpoint_every=4")
    train(tmp_path / "part", data, "run.checkpoint_every=4", "train.max_steps=7")
    resumed, resumed_messages = train(tmp_path / "part", data, "run.checkpoint_every=4",
                                      resume="auto")
    for name in whole:
        assert np.array_equal(resumed[name], whole[name]), name
    assert all(np.array_equal(resumed_messages[i], whole_messages[i]) for i in whole_messages)
    device, device_messages = train(tmp_path / "device", data, "debug.emulate_kernels=true")
    for name in whole:
        np.testing.assert_allclose(device[name], whole[name], rtol=0, atol=1e-10, err_msg=name)


def test_eight_connected_grid_crf_trains(data, tmp_path):
    """Through the CLI with blend: four direction heads, all of which learn, one message vector
    per image as long as its 8-connected graph needs, and the joint epochs lower the loss."""
    params, messages = train(tmp_path / "run", data, "model.connectivity=8")
    assert sorted(k for k in params if k.startswith("pair_heads") and k.endswith("weight")) == \
        [f"pair_heads.{d}.weight" for d in range(4)]
    for d in range(4):   # zero at start: every direction got gradient
        assert np.abs(params[f"pair_heads.{d}.weight"]).max() > 1e-4, d
    pairs = 6 * 4 + 5 * 5 + 2 * 5 * 4   # 6 x 5 images: right, down, two diagonals
    assert sorted(messages) == list(range(24))
    assert all(m.shape == (2 * 3 * pairs,) for m in messages.values())
    assert np.abs(np.concatenate(list(messages.values()))).max() > 0
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["phase"] for e in epochs] == ["unary", "joint", "joint"]
    assert epochs[2]["train_loss"] < epochs[1]["train_loss"]


def train_dense(run_dir, data, *extra, ranks=0, resume=None):
    done = dstrain_train("segmentation.yaml", run_dir, data, "train.epochs=3",
                         "train.pretrain_epochs=1", "train.batch_size=5", "train.batching=global",
                         "model.depth=1", "model.width=4", "model.iterations=3",
                         "run.dtype=float64", *extra, ranks=ranks, resume=resume)
    return run_params(run_dir), done.stdout


@pytest.mark.slow
def test_dense_crf_model_learns_its_kernels_and_resumes_bitwise(data, tmp_path):
    whole, log = train_dense(tmp_path / "whole", data, "run.checkpoint_every=4")
    assert "mean_iou" in log
    # the kernel weights and the compatibility moved from their start (1, 1; Potts)
    assert not np.allclose(whole["kernel_weights"], [1.0, 1.0])
    assert not np.allclose(whole["compatibility"], 1 - np.eye(3))
    train_dense(tmp_path / "part", data, "run.checkpoint_every=4", "train.max_steps=7")
    resumed, _ = train_dense(tmp_path / "part", data, "run.checkpoint_every=4", resume="auto")
    for name in whole:
        assert np.array_equal(resumed[name], whole[name]), name


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="no mpirun")
def test_dense_crf_two_ranks_reproduce_one_process(data, tmp_path):
    one, _ = train_dense(tmp_path / "one", data)
    two, _ = train_dense(tmp_path / "two", data, ranks=2)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-10, err_msg=name)


def test_blend_messages_take_the_stated_bytes_per_image_and_split_over_ranks():
    """docs/models.md: a 4-connected H x W grid with C classes keeps 2 C (H (W - 1) + (H - 1) W)
    message entries per image (8 bytes each on the CPU): 155 KiB for 32 x 32 and 5 classes
    (8-connected: 305 KiB); each rank keeps only its shard's."""
    from dstrain.learning.trainer import message_store, shard
    model = GridCRF((3, 32, 32), 5, depth=1, width=2)
    assert model.graph(model.families).num_messages == 2 * 5 * (32 * 31 + 31 * 32) == 19840
    eight = GridCRF((3, 32, 32), 5, depth=1, width=2, connectivity=8)   # 305 KiB per image
    assert eight.graph(eight.families).num_messages == 2 * 5 * (2 * 32 * 31 + 2 * 31 * 31) == 39060
    labels = np.zeros((101, 32, 32), dtype=np.int64)
    stores = [message_store(model, shard(101, rank, 2), labels[shard(101, rank, 2)])
              for rank in range(2)]
    assert [s.values.nbytes for s in stores] == [50 * 19840 * 8, 51 * 19840 * 8]


def test_show_draws_truth_unary_and_crf_predictions(data, tmp_path):
    from dstrain.cli import main
    train_dense(tmp_path / "run", data)
    assert main(["show", str(tmp_path / "run"), "--count", "3", "--out",
                 str(tmp_path / "show.png")]) == 0
    assert (tmp_path / "show.png").read_bytes()[:4] == b"\x89PNG"
    from dstrain.tasks.segmentation.show import predictions
    from dstrain.config import load_config
    from dstrain.learning.params import load_params
    from dstrain.learning.structured import InferenceOptions
    from dstrain.learning.trainer import build_model
    from dstrain.tasks.segmentation import open_segmentation
    config = load_config(tmp_path / "run" / "config.yaml")
    with open_segmentation(data, "test") as split:
        x, y = split.read([0, 1])
        model = build_model(config, split)
    load_params(model, tmp_path / "run" / "params.h5")
    unary, crf = predictions(model, x.astype(np.float64), y, InferenceOptions())
    assert unary.shape == crf.shape == y.shape and unary.min() >= 0 and crf.max() < 3
