"""The dense CRF: the permutohedral lattice against brute-force Gaussians and against pydensecrf's
lattice, mean-field against pydensecrf2 (the oracle) and a dense reference written here, and the
learning gradients against autograd and finite differences."""
import numpy as np
import pytest
import torch

from dstrain.inference import dense_crf_marginals
from dstrain.inference.dense_crf import DenseCRF, potts_compatibility
from dstrain.inference.permutohedral import ExactGaussianFilter, PermutohedralLattice


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def shapes_image(rng, height, width, noise=10.0):
    """A natural-looking image: a plain background, three coloured discs, Gaussian noise; and its
    (H, W) region labels 0..3."""
    image = np.zeros((height, width, 3)) + rng.integers(0, 256, 3)
    rows, cols = np.mgrid[0:height, 0:width]
    labels = np.zeros((height, width), dtype=np.int64)
    for label in range(1, 4):
        centre_row, centre_col = rng.integers(0, height), rng.integers(0, width)
        radius = rng.integers(max(2, height // 8), max(3, height // 3))
        inside = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < radius ** 2
        image[inside] = rng.integers(0, 256, 3)
        labels[inside] = label
    image += rng.normal(0, noise, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def noisy_scores(rng, labels, num_labels, noise=1.0):
    """(C, H, W) float32 scores: one for the true region's label, plus Gaussian noise."""
    onehot = np.eye(num_labels)[labels % num_labels].transpose(2, 0, 1)
    return (onehot + rng.normal(0, noise, onehot.shape)).astype(np.float32)


def pixel_features(image, sxy, srgb=None):
    """(N, 2) or (N, 5) float32 features exactly as the CRF forms them: (column, row) / sxy and
    colour / srgb, divided in float32."""
    height, width = image.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    features = [np.stack([cols.ravel(), rows.ravel()], 1) / np.float32(sxy)]
    if srgb is not None:
        features.append(image.reshape(-1, 3).astype(np.float32) / np.float32(srgb))
    return np.concatenate(features, 1).astype(np.float32)


def dense_kernels(images, spatial_sxy, bilateral_sxy, srgb, exclude_self=True):
    """Per image, the two normalised N x N kernels k_m(i, j) of the model, brute force."""
    kernels = []
    for image in images:
        pair = []
        for features in (pixel_features(image, spatial_sxy),
                         pixel_features(image, bilateral_sxy, srgb)):
            f = torch.from_numpy(features).double()
            gaussian = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
            norm = gaussian.sum(1).rsqrt()                 # row sums include j = i
            kernel = norm[:, None] * gaussian * norm[None, :]
            if exclude_self:
                kernel.fill_diagonal_(0.0)
            pair.append(kernel)
        kernels.append(pair)
    return kernels


def reference_mean_field(unary, kernels, weights, mu, eps, iterations):
    """unary (B, N, C) float64 -> Q (B, N, C): the update of the module docstring, written out."""
    symmetric = 0.5 * (mu + mu.T)
    q = torch.softmax(unary / eps, dim=2)
    for _ in range(iterations):
        new = []
        for b in range(unary.shape[0]):
            messages = sum(w * (k @ q[b]) for w, k in zip(weights, kernels[b]))
            new.append(torch.softmax((unary[b] - messages @ symmetric.T) / eps, dim=1))
        q = torch.stack(new)
    return q


def pydensecrf_marginals(scores, image, iterations=5, gaussian=(3.0, 3.0),
                         bilateral=(80.0, 13.0, 10.0)):
    densecrf = pytest.importorskip("pydensecrf.densecrf")
    num_labels, height, width = scores.shape
    crf = densecrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-scores.reshape(num_labels, -1)))
    crf.addPairwiseGaussian(sxy=gaussian[0], compat=gaussian[1])
    crf.addPairwiseBilateral(sxy=bilateral[0], srgb=bilateral[1], rgbim=image,
                             compat=bilateral[2])
    return np.array(crf.inference(iterations)).reshape(num_labels, height, width)


def pydensecrf_raw_filter(features, values):
    """pydensecrf's own lattice applied to values (N, V), unnormalised: one mean-field step with a
    Potts weight -1 and NO_NORMALIZATION leaves exactly K x in its scratch matrix."""
    densecrf = pytest.importorskip("pydensecrf.densecrf")
    eigen = pytest.importorskip("pydensecrf.eigen")
    n, v = values.shape
    crf = densecrf.DenseCRF(n, v)
    crf.addPairwiseEnergy(np.ascontiguousarray(features.T, dtype=np.float32), compat=-1.0,
                          kernel=densecrf.DIAG_KERNEL, normalization=densecrf.NO_NORMALIZATION)
    q = eigen.matrixXf(np.ascontiguousarray(values.T, dtype=np.float32))
    # the wrappers keep the shape they were made with, so pre-size the scratch matrices
    scratch = [eigen.matrixXf(np.zeros((v, n), np.float32)) for _ in range(2)]
    crf.stepInference(q, *scratch)
    return np.array(scratch[1]).T.copy()


def normalised(filter_):
    """The filter of D K D, D = diag(1 / sqrt(K 1)), as the CRF normalises its kernels."""
    ones = torch.ones(filter_.num_points, 1, dtype=filter_.dtype)
    return filter_.scaled(filter_.filter(ones)[:, 0].rsqrt())


def onehot(labels, num_labels):
    """(B, H, W) labels with -1 -> (B, N, C) one-hot, zero rows for -1."""
    flat = torch.as_tensor(labels).reshape(labels.shape[0], -1)
    return (torch.nn.functional.one_hot(flat.clamp(min=0), num_labels).double()
            * (flat >= 0).double()[:, :, None])


# --------------------------------------------------------------------------- #
# The lattice filter
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_lattice_filters_what_pydensecrfs_lattice_filters(rng, dim):
    features = (rng.normal(size=(400, dim)) * 2).astype(np.float32)
    values = rng.random((400, 4)).astype(np.float32)
    expected = pydensecrf_raw_filter(features, values)
    got = PermutohedralLattice(torch.from_numpy(features)).filter(torch.from_numpy(values))
    assert np.abs(got.numpy() - expected).max() <= 1e-5 * np.abs(expected).max()


def test_lattice_approximates_the_gaussian_on_image_features(rng):
    """The lattice is an approximation: the normalised filter (as the CRF uses it) against brute
    force, relative errors.  Over 20 such images the mean error was at most 0.9 % (spatial) and
    2.8 % (bilateral), the 99th percentile at most 4 % and 15 %; above it the bilateral's
    reached 115 %.  The tolerances are about twice those; the errors are the lattice's own, not
    this code's: pydensecrf's lattice gives the same values (test above)."""
    image, _ = shapes_image(rng, 24, 32)
    values = torch.from_numpy(rng.random((24 * 32, 4)))
    for features, mean_tol, p99_tol in ((pixel_features(image, 3.0), 0.02, 0.08),
                                        (pixel_features(image, 10.0, 13.0), 0.05, 0.3)):
        f = torch.from_numpy(features)
        got = normalised(PermutohedralLattice(f, dtype=torch.float64)).filter(values)
        expected = normalised(ExactGaussianFilter(f)).filter(values)
        relative = ((got - expected).abs() / expected.abs())
        assert relative.mean() < mean_tol and torch.quantile(relative, 0.99) < p99_tol


def test_lattice_is_exact_for_far_apart_and_for_identical_points(rng):
    far = torch.tensor([[0.0, 0.0], [60.0, 0.0], [0.0, 60.0], [60.0, 61.5]])
    values = torch.from_numpy(rng.random((4, 3)))
    lattice = PermutohedralLattice(far, dtype=torch.float64)
    # nothing leaks between far points: each only weighs itself, by the operator's diagonal
    assert torch.allclose(lattice.filter(values), lattice.self_weights()[:, None] * values,
                          rtol=1e-12, atol=0)
    assert torch.allclose(normalised(lattice).filter(values), values, rtol=1e-12, atol=0)
    same = torch.full((7, 3), 0.37)
    values = torch.from_numpy(rng.random((7, 2)))
    out = normalised(PermutohedralLattice(same, dtype=torch.float64)).filter(values)
    assert torch.allclose(out, values.mean(0).expand(7, 2), rtol=1e-12, atol=0)


def test_lattice_groups_filter_each_group_alone(rng):
    features = torch.from_numpy((rng.normal(size=(300, 3)) * 2).astype(np.float32))
    values = torch.from_numpy(rng.random((300, 2)))
    groups = torch.arange(300) // 100
    together = PermutohedralLattice(features, groups=groups, dtype=torch.float64).filter(values)
    for g in range(3):
        alone = PermutohedralLattice(features[groups == g], dtype=torch.float64)
        assert torch.allclose(together[groups == g], alone.filter(values[groups == g]),
                              rtol=1e-12, atol=1e-14)


def test_lattice_reverse_is_the_transpose_and_scaled_is_dkd(rng):
    features = torch.from_numpy((rng.normal(size=(200, 4)) * 1.5).astype(np.float32))
    lattice = PermutohedralLattice(features, dtype=torch.float64)
    x, y = torch.from_numpy(rng.random(200)), torch.from_numpy(rng.random(200))
    assert torch.isclose(y @ lattice.filter(x), lattice.filter(y, reverse=True) @ x, rtol=1e-12)
    scale = torch.from_numpy(rng.random(200) + 0.5)
    assert torch.allclose(lattice.scaled(scale).filter(x), scale * lattice.filter(scale * x),
                          rtol=1e-12, atol=0)


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_lattice_self_weights_are_the_operator_diagonal(rng, dim):
    features = torch.from_numpy((rng.normal(size=(250, dim)) * 1.5).astype(np.float32))
    lattice = PermutohedralLattice(features, dtype=torch.float64)
    diagonal = lattice.filter(torch.eye(250, dtype=torch.float64)).diagonal()
    assert torch.allclose(lattice.self_weights(), diagonal, rtol=0, atol=1e-6)


def test_lattice_self_weights_on_image_features(rng):
    image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)    # random colours: a sparse lattice
    lattice = PermutohedralLattice(torch.from_numpy(pixel_features(image, 80.0, 13.0)),
                                   dtype=torch.float64)
    diagonal = lattice.filter(torch.eye(320, dtype=torch.float64)).diagonal()
    assert torch.allclose(lattice.self_weights(), diagonal, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- #
# Mean-field against pydensecrf2 and against the dense reference
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["shapes", "random"])
def test_marginals_match_pydensecrf(rng, kind):
    height, width, num_labels = 48, 64, 5
    if kind == "shapes":
        image, labels = shapes_image(rng, height, width)
        scores = noisy_scores(rng, labels, num_labels)
    else:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        scores = rng.normal(size=(num_labels, height, width)).astype(np.float32)
    expected = pydensecrf_marginals(scores, image)
    got = dense_crf_marginals(scores, image)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert (got.argmax(0) == expected.argmax(0)).mean() >= 0.99
    assert np.abs(got - expected).mean() <= 0.01


def test_marginals_match_pydensecrf_with_other_parameters(rng):
    image, labels = shapes_image(rng, 40, 56, noise=20.0)
    scores = noisy_scores(rng, labels, 4, noise=1.5)
    options = dict(iterations=8, gaussian=(1.5, 2.0), bilateral=(20.0, 30.0, 6.0))
    expected = pydensecrf_marginals(scores, image, **options)
    got = dense_crf_marginals(scores, image, **options)
    assert (got.argmax(0) == expected.argmax(0)).mean() >= 0.99
    assert np.abs(got - expected).mean() <= 0.01


@pytest.mark.parametrize("kind", ["shapes", "random"])
def test_marginals_match_pydensecrf_full_size(rng, kind):
    height, width, num_labels = 240, 320, 21
    if kind == "shapes":
        image, labels = shapes_image(rng, height, width)
        scores = noisy_scores(rng, labels, num_labels)
    else:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        scores = rng.normal(size=(num_labels, height, width)).astype(np.float32)
    expected = pydensecrf_marginals(scores, image)
    got = dense_crf_marginals(scores, image)
    assert (got.argmax(0) == expected.argmax(0)).mean() >= 0.99
    assert np.abs(got - expected).mean() <= 0.01


@pytest.mark.parametrize("exclude_self", [True, False])
def test_mean_field_matches_the_dense_reference(rng, exclude_self):
    images = rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    unary = torch.from_numpy(rng.normal(size=(2, 3, 3, 4)))
    weights = torch.tensor([0.8, 1.7], dtype=torch.float64)
    mu = torch.from_numpy(rng.random((3, 3)))                  # not symmetric on purpose
    crf = DenseCRF(images, 1.5, 3.0, 60.0, iterations=4, eps=0.7, exact=True,
                   exclude_self=exclude_self, channels_last=True, dtype=torch.float64)
    got = crf.mean_field(unary, weights, mu)
    kernels = dense_kernels(images, 1.5, 3.0, 60.0, exclude_self=exclude_self)
    expected = reference_mean_field(unary.permute(0, 2, 3, 1).reshape(2, 12, 3), kernels,
                                    weights, mu, 0.7, 4)
    assert torch.allclose(got.permute(0, 2, 3, 1).reshape(2, 12, 3), expected,
                          rtol=0, atol=1e-12)


def test_lattice_mean_field_is_close_to_the_exact_one(rng):
    image, labels = shapes_image(rng, 16, 20)
    unary = torch.from_numpy(noisy_scores(rng, labels, 4))[None].double()
    weights, mu = torch.tensor([3.0, 5.0]), potts_compatibility(4)
    options = dict(spatial_sxy=3.0, bilateral_sxy=10.0, bilateral_srgb=13.0, channels_last=True,
                   dtype=torch.float64)
    lattice = DenseCRF(image[None], **options).mean_field(unary, weights, mu)
    exact = DenseCRF(image[None], exact=True, **options).mean_field(unary, weights, mu)
    # the lattice's own approximation error (see the filter test): mean 0.003 and 99.4 % equal
    # MAP labels here, at worst 0.014 and 96.6 % over ten other seeds
    assert (lattice - exact).abs().mean() < 0.02
    assert (lattice.argmax(1) == exact.argmax(1)).double().mean() > 0.95


def test_zero_iterations_give_the_softmax_and_layouts_agree(rng):
    image, labels = shapes_image(rng, 12, 16)
    unary = torch.from_numpy(noisy_scores(rng, labels, 3))[None]
    weights, mu = torch.tensor([3.0, 10.0]), potts_compatibility(3)
    start = DenseCRF(image[None], iterations=0, eps=2.0, channels_last=True)
    assert torch.allclose(start.mean_field(unary, weights, mu), torch.softmax(unary / 2.0, 1))
    last = DenseCRF(image[None], channels_last=True).mean_field(unary, weights, mu)
    first = DenseCRF(torch.from_numpy(image[None]).permute(0, 3, 1, 2)).mean_field(
        unary, weights, mu)
    assert torch.equal(first, last)


def test_a_batch_gives_what_its_images_give_alone(rng):
    images, unaries = [], []
    for _ in range(3):
        image, labels = shapes_image(rng, 12, 16)
        images.append(image)
        unaries.append(torch.from_numpy(noisy_scores(rng, labels, 4)))
    weights, mu = torch.tensor([3.0, 10.0]), potts_compatibility(4)
    batch = DenseCRF(np.stack(images), channels_last=True).mean_field(torch.stack(unaries),
                                                                       weights, mu)
    for image, unary, got in zip(images, unaries, batch):
        alone = DenseCRF(image[None], channels_last=True).mean_field(unary[None], weights, mu)
        assert torch.allclose(got, alone[0], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- #
# Learning: loss and gradients
# --------------------------------------------------------------------------- #


def small_problem(rng, unlabelled=True):
    images = rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    unary = torch.from_numpy(rng.normal(size=(2, 3, 3, 4)))
    labels = torch.from_numpy(rng.integers(0, 3, (2, 3, 4)))
    if unlabelled:
        labels[0, 0, 0] = labels[1, 2, 1] = -1
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    mu = torch.from_numpy(rng.random((3, 3)))
    return images, unary, labels, weights, mu


def test_gradients_equal_autograd_of_the_expected_score_gap(rng):
    """For Q held fixed: d/d(w, mu) of E_Q[F_pair] - F_pair(y) over the labelled pixels."""
    images, unary, labels, weights, mu = small_problem(rng)
    crf = DenseCRF(images, 1.5, 3.0, 60.0, iterations=3, eps=0.8, exact=True,
                   channels_last=True, dtype=torch.float64)
    result = crf.loss_and_gradients(unary, labels, weights, mu)
    q = result.marginals.permute(0, 2, 3, 1).reshape(2, 12, 3)
    truth = onehot(labels, 3)
    q_labelled = q * (labels.reshape(2, 12, 1) >= 0)
    kernels = dense_kernels(images, 1.5, 3.0, 60.0)

    def pair_gap(w, m):
        # -1/2 sum_{i != j} k(i, j) (Q_i^T mu Q_j - mu(y_i, y_j)), the kernels' diagonals zero
        return sum(-0.5 * w[k] * ((q_labelled[b] @ m * (kernel[k] @ q_labelled[b])).sum()
                                  - (truth[b] @ m * (kernel[k] @ truth[b])).sum())
                   for b, kernel in enumerate(kernels) for k in range(2))

    w, m = weights.clone().requires_grad_(), mu.clone().requires_grad_()
    gap = pair_gap(w, m)
    gap.backward()
    assert torch.allclose(result.grad_weights, w.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(result.grad_compatibility, m.grad, rtol=1e-10, atol=1e-12)
    grad_unary = result.grad_unary.permute(0, 2, 3, 1).reshape(2, 12, 3)
    assert torch.allclose(grad_unary, q_labelled - truth, rtol=0, atol=1e-14)
    # the loss: E_Q[F_L] + eps H_L(Q) - F_L(y)
    u = unary.permute(0, 2, 3, 1).reshape(2, 12, 3)
    entropy = -(q_labelled * q.log()).sum((1, 2))
    unary_gap = ((q_labelled - truth) * u).sum((1, 2))
    assert torch.isclose(result.loss.sum(), unary_gap.sum() + 0.8 * entropy.sum() + gap.detach(),
                         rtol=1e-12)


def test_gradients_are_the_loss_derivative_at_a_mean_field_fixed_point(rng):
    """Converged mean-field, every pixel labelled: the gradients for fixed Q are the total
    derivatives of the loss (Q moving with the parameters), by finite differences."""
    images, unary, labels, weights, mu = small_problem(rng, unlabelled=False)
    weights = 0.5 * weights                          # small enough for mean-field to converge
    crf = DenseCRF(images, 1.5, 3.0, 60.0, iterations=300, eps=0.7, exact=True,
                   channels_last=True, dtype=torch.float64)
    result = crf.loss_and_gradients(unary, labels, weights, mu)
    step = 1e-6

    def loss_change(dw=0.0, dmu=0.0, du=0.0):
        up = crf.loss_and_gradients(unary + du, labels, weights + dw, mu + dmu).loss.sum()
        down = crf.loss_and_gradients(unary - du, labels, weights - dw, mu - dmu).loss.sum()
        return float((up - down) / (2 * step))

    for m in range(2):
        dw = torch.zeros(2, dtype=torch.float64)
        dw[m] = step
        assert loss_change(dw=dw) == pytest.approx(float(result.grad_weights[m]), abs=1e-7)
    dmu = torch.zeros(3, 3, dtype=torch.float64)
    dmu[0, 2] = step
    assert loss_change(dmu=dmu) == pytest.approx(float(result.grad_compatibility[0, 2]), abs=1e-7)
    du = torch.zeros_like(unary)
    du[1, 2, 1, 3] = step
    assert loss_change(du=du) == pytest.approx(float(result.grad_unary[1, 2, 1, 3]), abs=1e-7)


def test_lattice_gradients_add_up_to_the_pair_part_of_the_loss(rng):
    """The pair part is linear in w and in mu, so sum_m w_m dL/dw_m = sum mu * dL/dmu = the
    pair part of the loss (any kernel: checks the lattice path's bookkeeping)."""
    image, labels = shapes_image(rng, 16, 20)
    labels[0, :5] = -1
    unary = torch.from_numpy(noisy_scores(rng, labels, 4))[None]
    labels = torch.from_numpy(labels)[None]
    weights, mu = torch.tensor([3.0, 5.0]), potts_compatibility(4) + 0.1
    crf = DenseCRF(image[None], channels_last=True, dtype=torch.float64)
    result = crf.loss_and_gradients(unary, labels, weights, mu)
    q = result.marginals.permute(0, 2, 3, 1).reshape(1, -1, 4)
    labelled = (labels.reshape(1, -1, 1) >= 0).double()
    truth = onehot(labels, 4)
    u = unary.permute(0, 2, 3, 1).reshape(1, -1, 4).double()
    pair_part = (result.loss - ((q * labelled - truth) * u).sum()
                 + (q * labelled * q.log()).sum())
    assert float((weights.double() * result.grad_weights).sum()) == pytest.approx(
        float(pair_part), rel=1e-9)
    assert float((mu.double() * result.grad_compatibility).sum()) == pytest.approx(
        float(pair_part), rel=1e-9)
    assert torch.all(result.grad_unary[labels[:, None].expand_as(result.grad_unary) < 0] == 0)


# --------------------------------------------------------------------------- #
# Bad inputs, devices
# --------------------------------------------------------------------------- #


def test_bad_inputs_raise_clear_errors(rng):
    image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    scores = rng.normal(size=(3, 6, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="scores"):
        dense_crf_marginals(scores[0], image)
    with pytest.raises(ValueError, match="image.*uint8"):
        dense_crf_marginals(scores, image.astype(np.float32))
    with pytest.raises(ValueError, match="image"):
        dense_crf_marginals(scores, image[:5])
    with pytest.raises(ValueError, match="gaussian"):
        dense_crf_marginals(scores, image, gaussian=(3.0,))
    with pytest.raises(ValueError, match="spatial_sxy"):
        dense_crf_marginals(scores, image, gaussian=(-1.0, 3.0))
    with pytest.raises(ValueError, match="images"):
        DenseCRF(image)
    with pytest.raises(ValueError, match="channels_last"):
        DenseCRF(np.zeros((1, 3, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="eps"):
        DenseCRF(image[None], eps=0.0)
    with pytest.raises(ValueError, match="iterations"):
        DenseCRF(image[None], iterations=-1)
    crf = DenseCRF(image[None], channels_last=True)
    unary, weights, mu = torch.from_numpy(scores)[None], torch.ones(2), potts_compatibility(3)
    with pytest.raises(ValueError, match=r"unary.*\(1, C, 6, 8\)"):
        crf.mean_field(unary[:, :, :5], weights, mu)
    with pytest.raises(ValueError, match="weights"):
        crf.mean_field(unary, torch.ones(3), mu)
    with pytest.raises(ValueError, match="compatibility"):
        crf.mean_field(unary, weights, potts_compatibility(4))
    with pytest.raises(ValueError, match="labels"):
        crf.loss_and_gradients(unary, torch.full((1, 6, 8), 3), weights, mu)
    with pytest.raises(ValueError, match="labels"):
        crf.loss_and_gradients(unary, torch.zeros(1, 6, 8), weights, mu)
    with pytest.raises(ValueError, match="features"):
        PermutohedralLattice(torch.zeros(5))
    with pytest.raises(ValueError, match="features"):
        PermutohedralLattice(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="groups"):
        PermutohedralLattice(torch.zeros(5, 2), groups=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="values"):
        PermutohedralLattice(torch.zeros(5, 2)).filter(torch.zeros(4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_what_the_cpu_gives(rng):
    image, labels = shapes_image(rng, 48, 64)
    unary = torch.from_numpy(noisy_scores(rng, labels, 5))[None]
    weights, mu = torch.tensor([3.0, 10.0]), potts_compatibility(5)
    features = torch.from_numpy(pixel_features(image, 80.0, 13.0))
    values = torch.rand(features.shape[0], 5)
    lattice_cpu = PermutohedralLattice(features)
    lattice_gpu = PermutohedralLattice(features.cuda())
    assert lattice_gpu.num_vertices == lattice_cpu.num_vertices
    assert torch.allclose(lattice_gpu.filter(values.cuda()).cpu(), lattice_cpu.filter(values),
                          rtol=1e-4, atol=1e-5)
    assert torch.allclose(lattice_gpu.self_weights().cpu(), lattice_cpu.self_weights(),
                          rtol=1e-4, atol=1e-6)
    labels = torch.from_numpy(labels)[None]
    cpu = DenseCRF(image[None], channels_last=True).loss_and_gradients(unary, labels, weights, mu)
    gpu = DenseCRF(torch.from_numpy(image[None]).cuda(), channels_last=True).loss_and_gradients(
        unary.cuda(), labels.cuda(), weights.cuda(), mu.cuda())
    assert gpu.marginals.is_cuda
    assert torch.allclose(gpu.marginals.cpu(), cpu.marginals, atol=1e-4)
    assert torch.allclose(gpu.grad_weights.cpu(), cpu.grad_weights, rtol=1e-3, atol=1e-3)
    got = dense_crf_marginals(noisy_scores(rng, labels[0].numpy(), 5), image)
    assert got.shape == (5, 48, 64)
