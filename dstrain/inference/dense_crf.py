"""Fully connected CRFs over image pixels (Krähenbühl & Koltun 2011): mean-field inference with
Gaussian kernels filtered on the permutohedral lattice, and the gradients to learn them.

Model (pixels i, j; labels l, l'; kernels m):

    F(y) = sum_i u_i(y_i) - 1/2 sum_{i != j} mu(y_i, y_j) sum_m w_m k_m(i, j)

- u: unary scores (higher is better), e.g. a network's logits;
- k_m: Gaussian kernels on fixed features, normalised symmetrically as in pydensecrf,
  k_m(i, j) = g_m(i, j) / sqrt(d_i d_j) with d_i = sum_j g_m(i, j) (the sum includes j = i);
  m = 0 spatial, g_0 = exp(-|p_i - p_j|^2 / (2 sxy^2)); m = 1 bilateral,
  g_1 = exp(-|p_i - p_j|^2 / (2 sxy^2) - |c_i - c_j|^2 / (2 srgb^2)), p the (column, row)
  position, c the RGB colour in 0..255 units;
- w_m: kernel weights; mu (C, C): label compatibility, the cost of labels (l, l') on a pair.
  Potts is mu = 1 - I (only disagreeing pairs pay); mu = -I gives the same marginals.

Mean-field at temperature eps, Q started at softmax(u / eps), for a fixed number of iterations:

    Q_i(l)  ∝  exp((u_i(l) - sum_l' mu_s(l, l') sum_m w_m sum_{j != i} k_m(i, j) Q_j(l')) / eps)

with mu_s = (mu + mu^T) / 2 (the score only sees the symmetric part).  The sums over j are all
labels at once through one lattice filter per kernel (``permutohedral.py``): g_m is then the
lattice's approximation of the Gaussian, an operator that is not exactly symmetric and whose
diagonal is not 1; "j != i" subtracts that diagonal, computed exactly (``self_weights``, paid once
per kernel build, only with ``exclude_self``).  ``exact=True`` uses the brute-force N x N
Gaussians instead (tiny images).  The spatial kernel depends on the image size only and is kept
between instances (a small cache).

Learning (the "learning deep structured models" recipe: no differentiation through the
iterations).  Per image, with L the labelled pixels (label -1: unlabelled) and Q the final
marginals, the loss is the mean-field estimate of eps log Z minus the truth's score:

    loss = E_Q[F_L] + eps H_L(Q) - F_L(y)

where F_L keeps the unaries of pixels in L and the pairs with both ends in L, and H_L sums the
entropies of the pixels in L.  It is >= 0 when Q is the best product distribution; Q from a few
iterations need not be.  With Q held fixed the gradients are

    d loss / d u_i(l)    = Q_i(l) - 1[y_i = l]                               (0 for i not in L)
    d loss / d w_m       = -1/2 sum_{i != j in L} k_m(i, j) (Q_i^T mu Q_j - mu(y_i, y_j))
    d loss / d mu(l, l') = -1/2 sum_m w_m sum_{i != j in L} k_m(i, j)
                                (Q_i(l) Q_j(l') - 1[y_i = l] 1[y_j = l'])

each computed by filtering Q and the one-hot truth once per kernel and taking dot products; they
are the true gradients when Q is a mean-field fixed point and every pixel is labelled.

pydensecrf: ``DenseCRF2D(W, H, C)``, ``setUnaryEnergy(-u)``, ``addPairwiseGaussian(sxy, compat=a)``,
``addPairwiseBilateral(sxy, srgb, image, compat=b)`` (DIAG_KERNEL, NORMALIZE_SYMMETRIC) and
``inference(n)`` compute Q_i(l) ∝ exp(u_i(l) + sum_m c_m sum_j k_m(i, j) Q_j(l)) with j = i
included: here w = (a, b), mu = 1 - I, eps = 1, ``exclude_self=False``
(``dense_crf_marginals``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .permutohedral import ExactGaussianFilter, PermutohedralLattice

__all__ = ["dense_crf_marginals", "DenseCRF", "DenseCRFResult", "potts_compatibility"]

# added to the kernel's row sums before the inverse square root, as pydensecrf does
_NORM_FLOOR = 1e-20


def potts_compatibility(num_labels: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """mu = 1 - I: a pair with different labels costs its kernel weight, equal labels nothing."""
    return 1.0 - torch.eye(num_labels, dtype=dtype, device=device)


def _images_to_bhw3(images, channels_last) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W), numpy or torch -> float32 (B, H, W, 3) colours."""
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected (B, 3, H, W) or (B, H, W, 3), got shape "
                         f"{tuple(images.shape)}")
    if channels_last is None:
        first, last = images.shape[1] == 3, images.shape[3] == 3
        if first == last:
            raise ValueError(f"images: cannot tell the channel axis of shape {tuple(images.shape)} "
                             f"(expected 3 channels in axis 1 or axis 3); pass channels_last")
        channels_last = last
    if images.shape[3 if channels_last else 1] != 3:
        raise ValueError(f"images: expected 3 colour channels, got shape {tuple(images.shape)}")
    if images.dtype.is_complex or images.dtype == torch.bool:
        raise ValueError(f"images: expected real colour values, got {images.dtype}")
    images = images if channels_last else images.permute(0, 2, 3, 1)
    return images.to(torch.float32)


def _positions(height: int, width: int, device) -> torch.Tensor:
    """(H*W, 2) float32 (column, row) of each pixel, rows first (pydensecrf's pixel order)."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                                torch.arange(width, device=device, dtype=torch.float32),
                                indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], 1)


def _scaled(values: torch.Tensor, sigma: float, name: str) -> torch.Tensor:
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"{name}: expected a positive width, got {sigma!r}")
    # a true float32 division, as pydensecrf computes its features
    return values / torch.tensor(sigma, dtype=torch.float32, device=values.device)


class _NormalisedKernel:
    """One kernel m: x -> sum_j k_m(i, j) x_j for a batch of images laid out as (B, N, V).

    ``batch`` None: the features (N, d) are the same for every image (the spatial kernel), so one
    filter over N points takes the batch as extra value columns.  Otherwise the features are
    (B*N, d) and one filter runs over all B*N points, the images kept apart as lattice groups.
    """

    def __init__(self, features, batch, exact, exclude_self, normalize, dtype):
        self.shared = batch is None
        groups = None
        if not self.shared and batch > 1:
            groups = torch.arange(batch, device=features.device).repeat_interleave(
                features.shape[0] // batch)
        make = ExactGaussianFilter if exact else PermutohedralLattice
        self.filter = make(features, groups=groups, dtype=dtype)
        if normalize:
            ones = torch.ones(self.filter.num_points, 1, dtype=dtype, device=features.device)
            row_sums = self.filter.filter(ones)[:, 0]
            self.filter = self.filter.scaled((row_sums + _NORM_FLOOR).rsqrt())
        # the (normalised) kernel's diagonal, removed when the sums run over j != i only
        self.diagonal = self.filter.self_weights()[:, None] if exclude_self else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, V) -> (B, N, V)."""
        b, n, v = x.shape
        columns = x.permute(1, 0, 2).reshape(n, b * v) if self.shared else x.reshape(b * n, v)
        out = self.filter.filter(columns)
        if self.diagonal is not None:
            out -= self.diagonal * columns
        return out.reshape(n, b, v).permute(1, 0, 2) if self.shared else out.reshape(b, n, v)


@functools.lru_cache(maxsize=8)
def _spatial_kernel(height, width, sxy, device, **options) -> _NormalisedKernel:
    """The spatial kernel depends on the image size only: built once per size (and options)."""
    return _NormalisedKernel(_scaled(_positions(height, width, device), sxy, "spatial_sxy"),
                             None, **options)


@dataclass
class DenseCRFResult:
    """What ``DenseCRF.loss_and_gradients`` returns (see the module docstring for the formulas).

    marginals, grad_unary: (B, C, H, W); loss: (B,) per image; grad_weights (2,) and
    grad_compatibility (C, C): gradients of loss.sum().
    """
    marginals: torch.Tensor
    loss: torch.Tensor
    grad_unary: torch.Tensor
    grad_weights: torch.Tensor
    grad_compatibility: torch.Tensor


class DenseCRF:
    """Mean-field and its learning gradients for a batch of images whose kernel features are fixed.

    ``images``: (B, 3, H, W) or (B, H, W, 3), colours in 0..255 units (``channels_last`` says which
    layout when the shape cannot).  The kernels (spatial width ``spatial_sxy``; bilateral widths
    ``bilateral_sxy`` in pixels and ``bilateral_srgb`` in colour units) are built once, here;
    weights and compatibility are arguments of each call so that they can be learned.
    ``exact``: brute-force kernels instead of the lattice (N x N per image: tiny images only).
    ``exclude_self``: sums over j != i (the model above); False includes j = i as pydensecrf does
    (and skips computing the lattice's diagonal).
    ``normalize``: symmetric normalisation of each kernel (pydensecrf's default); False: raw g_m.
    """

    num_kernels = 2

    def __init__(self, images, spatial_sxy=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0, *,
                 iterations=5, eps=1.0, exact=False, exclude_self=True, normalize=True,
                 channels_last=None, device=None, dtype=torch.float32):
        if int(iterations) != iterations or iterations < 0:
            raise ValueError(f"iterations: expected a non-negative integer, got {iterations!r}")
        if not np.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps: expected a positive temperature, got {eps!r}")
        colours = _images_to_bhw3(images, channels_last)
        device = torch.device(device) if device is not None else colours.device
        colours = colours.to(device)
        self.batch, self.height, self.width = colours.shape[:3]
        self.iterations, self.eps = int(iterations), float(eps)
        self.device, self.dtype = device, dtype
        positions = _positions(self.height, self.width, device)
        bilateral = torch.cat([
            _scaled(positions, bilateral_sxy, "bilateral_sxy").expand(self.batch, -1, -1),
            _scaled(colours.reshape(self.batch, -1, 3), bilateral_srgb, "bilateral_srgb")], 2)
        options = dict(exact=bool(exact), exclude_self=bool(exclude_self),
                       normalize=bool(normalize), dtype=dtype)
        self.kernels = [
            _spatial_kernel(self.height, self.width, float(spatial_sxy), device, **options),
            _NormalisedKernel(bilateral.reshape(-1, 5), self.batch, **options)]

    # ------------------------------------------------------------------ checks and layout
    def _unary(self, unary) -> torch.Tensor:
        """(B, C, H, W) scores -> (B, N, C) in the working dtype and device."""
        unary = torch.as_tensor(unary)
        if (unary.ndim != 4 or unary.shape[0] != self.batch or unary.shape[1] < 1
                or tuple(unary.shape[2:]) != (self.height, self.width)):
            raise ValueError(f"unary: expected shape ({self.batch}, C, {self.height}, "
                             f"{self.width}) with C >= 1, got {tuple(unary.shape)}")
        unary = unary.detach().to(device=self.device, dtype=self.dtype)
        # pixel-major and contiguous: the filters and the softmax read rows of labels
        return unary.permute(0, 2, 3, 1).reshape(self.batch, -1, unary.shape[1]).contiguous()

    def _parameters(self, weights, compatibility, num_labels):
        weights = torch.as_tensor(weights).detach().to(device=self.device, dtype=self.dtype)
        if weights.shape != (self.num_kernels,):
            raise ValueError(f"weights: expected shape ({self.num_kernels},) (spatial, bilateral), "
                             f"got {tuple(weights.shape)}")
        compatibility = torch.as_tensor(compatibility).detach().to(device=self.device,
                                                                  dtype=self.dtype)
        if compatibility.shape != (num_labels, num_labels):
            raise ValueError(f"compatibility: expected shape ({num_labels}, {num_labels}), got "
                             f"{tuple(compatibility.shape)}")
        return weights, compatibility

    def _labels(self, labels, num_labels) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.device)
        if labels.shape != (self.batch, self.height, self.width) or labels.dtype.is_floating_point:
            raise ValueError(f"labels: expected integers of shape ({self.batch}, {self.height}, "
                             f"{self.width}), got {labels.dtype} of shape {tuple(labels.shape)}")
        labels = labels.to(torch.int64).reshape(self.batch, -1)
        if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= num_labels):
            raise ValueError(f"labels: expected values in -1..{num_labels - 1} (-1: unlabelled), "
                             f"got {int(labels.min())}..{int(labels.max())}")
        return labels

    def _to_bchw(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.batch, self.height, self.width, -1).permute(0, 3, 1, 2).contiguous()

    # ------------------------------------------------------------------ inference
    def _mean_field(self, unary, weights, compatibility) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); every update one fused multiply-add per kernel and a softmax."""
        b, n, c = unary.shape
        scaled_unary = (unary / self.eps).reshape(b * n, c)
        symmetric = 0.5 * (compatibility + compatibility.T)
        # logits = u / eps - sum_m (K_m Q) (w_m mu_s / eps)
        mixers = [(kernel, -weight * symmetric / self.eps)
                  for weight, kernel in zip(weights.tolist(), self.kernels) if weight != 0.0]
        q = torch.softmax(scaled_unary, dim=1)
        for _ in range(self.iterations):
            logits = scaled_unary.clone()
            for kernel, mixer in mixers:
                logits.addmm_(kernel(q.reshape(b, n, c)).reshape(b * n, c), mixer)
            q = torch.softmax(logits, dim=1)
        return q.reshape(b, n, c)

    def mean_field(self, unary, weights, compatibility) -> torch.Tensor:
        """Marginals Q (B, C, H, W): ``iterations`` mean-field updates from softmax(u / eps)."""
        unary = self._unary(unary)
        weights, compatibility = self._parameters(weights, compatibility, unary.shape[2])
        return self._to_bchw(self._mean_field(unary, weights, compatibility))

    # ------------------------------------------------------------------ learning
    def loss_and_gradients(self, unary, labels, weights, compatibility) -> DenseCRFResult:
        """Mean-field, then the loss and its gradients for Q held fixed (module docstring)."""
        unary = self._unary(unary)
        num_labels = unary.shape[2]
        weights, compatibility = self._parameters(weights, compatibility, num_labels)
        labels = self._labels(labels, num_labels)
        q = self._mean_field(unary, weights, compatibility)

        labelled = (labels >= 0).to(self.dtype)[:, :, None]                       # (B, N, 1)
        truth = torch.nn.functional.one_hot(labels.clamp(min=0), num_labels).to(self.dtype)
        truth = truth * labelled
        q_labelled = q * labelled
        # E_Q[F_L] - F_L(y) and eps H_L(Q), per image
        unary_gap = ((q_labelled - truth) * unary).sum((1, 2))
        entropy = -(q_labelled * torch.log(q.clamp_min(torch.finfo(self.dtype).tiny))).sum((1, 2))
        loss = unary_gap + self.eps * entropy
        grad_weights = torch.zeros_like(weights)
        grad_compatibility = torch.zeros_like(compatibility)
        for m, kernel in enumerate(self.kernels):
            both = kernel(torch.cat([q_labelled, truth], 2))      # one filter for Q and y
            kernel_q, kernel_truth = both[:, :, :num_labels], both[:, :, num_labels:]
            # sum_{i != j} k(i, j) a_i^T mu b_j = sum_i a_i . ((K b)_i mu^T), per image
            pair_q = (q_labelled * (kernel_q @ compatibility.T)).sum((1, 2))
            pair_truth = (truth * (kernel_truth @ compatibility.T)).sum((1, 2))
            loss = loss - 0.5 * weights[m] * (pair_q - pair_truth)
            grad_weights[m] = -0.5 * (pair_q - pair_truth).sum()
            outer = (torch.einsum("bnl,bnk->lk", q_labelled, kernel_q)
                     - torch.einsum("bnl,bnk->lk", truth, kernel_truth))
            grad_compatibility -= 0.5 * weights[m] * outer
        grad_unary = q_labelled - truth
        return DenseCRFResult(marginals=self._to_bchw(q), loss=loss,
                              grad_unary=self._to_bchw(grad_unary), grad_weights=grad_weights,
                              grad_compatibility=grad_compatibility)


def dense_crf_marginals(scores, image, iterations=5, gaussian=(3.0, 3.0),
                        bilateral=(80.0, 13.0, 10.0)) -> np.ndarray:
    """pydensecrf's dense CRF on one image: marginals Q (C, H, W) float32.

    ``scores`` (C, H, W) float: unary scores (pydensecrf's unary energy is -scores); ``image``
    (H, W, 3) uint8; ``gaussian`` = (sxy, compat) and ``bilateral`` = (sxy, srgb, compat) as in
    ``addPairwiseGaussian`` / ``addPairwiseBilateral``; Potts compatibility, symmetric kernel
    normalisation, j = i included, as pydensecrf's defaults.
    """
    scores, image = np.asarray(scores), np.asarray(image)
    if scores.ndim != 3 or scores.shape[0] < 1 or not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"scores: expected a float (C, H, W) array with C >= 1, got "
                         f"{scores.dtype} of shape {scores.shape}")
    if image.shape != (*scores.shape[1:], 3) or image.dtype != np.uint8:
        raise ValueError(f"image: expected a uint8 array of shape {(*scores.shape[1:], 3)}, got "
                         f"{image.dtype} of shape {image.shape}")
    if len(gaussian) != 2:
        raise ValueError(f"gaussian: expected (sxy, compat), got {gaussian!r}")
    if len(bilateral) != 3:
        raise ValueError(f"bilateral: expected (sxy, srgb, compat), got {bilateral!r}")
    crf = DenseCRF(torch.from_numpy(np.ascontiguousarray(image))[None], spatial_sxy=gaussian[0],
                   bilateral_sxy=bilateral[0], bilateral_srgb=bilateral[1], iterations=iterations,
                   exclude_self=False, channels_last=True)
    unary = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None]
    q = crf.mean_field(unary, torch.tensor([gaussian[1], bilateral[2]], dtype=torch.float32),
                       potts_compatibility(scores.shape[0]))
    return q[0].numpy()
