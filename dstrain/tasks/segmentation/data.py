"""Synthetic semantic-segmentation data set and the reader of its HDF5 contract.

Each sample is a small RGB scene: a background plus a few shapes (ellipses and disks, rotated
rectangles and bars, star-shaped blobs), each shape one foreground class. Class 0 is background.
The task is built so that a pixel's own colour is ambiguous and its neighbourhood is not:

- classes come in pairs that share a hue family (their hues a little apart) and differ in
  texture (e.g. "red-striped" and "red-smooth", "green-noisy" and "green-dotted"), and every
  instance jitters its hue, saturation and brightness; the background takes a random, weakly
  saturated colour with a smooth colour drift and a weak random texture, so it can look like
  any class;
- the scene is lit by a random gain and a smooth shading field, blurred, and corrupted by white
  pixel noise and by "mottle", colour noise correlated over a few pixels, so a classifier with a
  small receptive field gives speckled label maps;
- shapes are spatially coherent and each is painted with one appearance, so label boundaries
  coincide with colour edges: what a CRF on top of the unaries exploits.

Scenes are rendered at twice the output resolution and box-reduced (anti-aliased edges). An
output pixel whose 2x2 sub-pixels carry different labels straddles a boundary; it is labelled -1
(ignore), the thin void band PASCAL VOC draws around objects. Everything is vectorised with numpy
over blocks of images; nothing is downloaded.

File layout (the contract :func:`open_segmentation` checks)::

    /{train,val,test}/x   (N, 3, H, W) uint8 RGB (float32 in [0, 1] also accepted by the reader)
    /{train,val,test}/y   (N, H, W) integer class id in [0, C), -1 = ignore
    root attributes       task = "segmentation", num_classes = C, class_names, seed, generator

Reproducibility: every random draw comes from ``np.random.default_rng`` generators spawned from
``np.random.SeedSequence(seed)``, one per split, so a split does not change when another split's
size does; the class appearances are a fixed function of the class index.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from dstrain.data.hdf5 import (DataError, SplitReader, positive_int_attr, split_group)

__all__ = ["generate_segmentation", "open_segmentation", "SegmentationData", "SceneStyle",
           "class_appearance", "IGNORE_LABEL"]

IGNORE_LABEL = -1
SPLITS = ("train", "val", "test")
BLOCK_PIXELS = 2**17            # output pixels per generated block = per HDF5 chunk (128 32x32 images)
GZIP_LEVEL = 4
SUPERSAMPLE = 2                 # scenes are drawn at 2x and box-reduced; mixed pixels become -1

# Texture kinds of the foreground classes. Classes 2f+1 and 2f+2 share hue family f and differ
# in texture: families alternate between the (striped, smooth) and (noisy, dotted) pairs.
SMOOTH, STRIPED, NOISY, DOTTED = range(4)
TEXTURE_NAMES = ("smooth", "striped", "noisy", "dotted")
_FAMILY_TEXTURES = ((STRIPED, SMOOTH), (NOISY, DOTTED))
_HUE_NAMES = ((0.0, "red"), (1 / 12, "orange"), (1 / 6, "yellow"), (1 / 3, "green"), (1 / 2, "cyan"),
              (2 / 3, "blue"), (3 / 4, "purple"), (5 / 6, "magenta"), (1.0, "red"))
_GOLDEN = 0.5 * (3 - 5 ** 0.5)   # hue step between families: well spread for any number of them

# Shape kinds of the objects.
ELLIPSE, RECTANGLE, BLOB = range(3)


@dataclass(frozen=True)
class SceneStyle:
    """Strengths of the random scene parameters.

    Calibrated with ``bench/calibrate_segmentation.py`` so that a small unary net leaves room for
    a CRF (bench/results/calibration.md). The mottle is what leaves the unary net speckle to
    remove: a 7x7 receptive field cannot average it away, a CRF over a whole object can.

    Lengths are in output pixels, relative ones as a fraction of min(H, W); colours in [0, 1].
    """

    objects: tuple[int, int] = (1, 4)              # objects per image, inclusive
    radius: tuple[float, float] = (0.15, 0.35)     # object size / min(H, W)
    aspect: float = 0.5                            # log-uniform a/b stretch in [e^-a, e^a]
    bar_prob: float = 0.3                          # chance that a rectangle is a long thin bar
    blob_wobble: float = 0.3                       # amplitude of a blob's radial harmonics
    pair_hue_split: float = 0.08                   # hue difference of the two classes of a family
    hue_jitter: float = 0.02                       # std of an instance's hue around its class's
    saturation: tuple[float, float] = (0.55, 0.9)
    value: tuple[float, float] = (0.45, 0.9)
    texture_amplitude: tuple[float, float] = (0.15, 0.3)
    texture_period: tuple[float, float] = (3.0, 5.0)
    background_saturation: tuple[float, float] = (0.0, 0.3)
    background_drift: float = 0.15                 # amplitude of the background's smooth colour drift
    background_texture: float = 0.1                # largest amplitude of its random texture
    gain: tuple[float, float] = (0.75, 1.15)       # global illumination
    shading: float = 0.15                          # amplitude of a smooth multiplicative light field
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_sigma: tuple[float, float] = (0.04, 0.12)   # white pixel noise
    mottle_sigma: tuple[float, float] = (0.05, 0.15)  # colour noise correlated over a few pixels
    mottle_scale: float = 1.0                         # its correlation length (Gaussian std, pixels)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())


DEFAULT_STYLE = SceneStyle()


def class_appearance(num_classes: int, pair_hue_split: float = DEFAULT_STYLE.pair_hue_split):
    """Fixed appearance of each class: ``(hues (C,), textures (C,) int, names tuple of C)``.

    Class 0 is the background (hue NaN, texture random per image). Foreground class k >= 1 has
    hue family f = (k - 1) // 2, the texture of its slot in that family's pair, and a hue
    ``pair_hue_split / 2`` below (first slot) or above (second slot) the family's hue.
    """
    hues = np.full(num_classes, np.nan)
    textures = np.zeros(num_classes, np.int64)
    names = ["background"]
    for k in range(1, num_classes):
        family, slot = divmod(k - 1, 2)
        family_hue = (family * _GOLDEN) % 1.0
        hues[k] = (family_hue + (slot - 0.5) * pair_hue_split) % 1.0
        textures[k] = _FAMILY_TEXTURES[family % 2][slot]
        hue_name = min(_HUE_NAMES, key=lambda item: abs(item[0] - family_hue))[1]
        name = f"{hue_name}-{TEXTURE_NAMES[textures[k]]}"
        names.append(name if name not in names else f"{name}-{k}")
    return hues, textures, tuple(names)


# ------------------------------------------------------------------------------------- rendering

class SceneRenderer:
    """Renders blocks of scenes: ``render(count, rng) -> (x uint8 (n, 3, H, W), y int64 (n, H, W))``.

    All random draws of a block happen up front in a fixed order, so the output is a pure
    function of the generator state.
    """

    def __init__(self, height: int, width: int, num_classes: int, style: SceneStyle = DEFAULT_STYLE):
        self.height, self.width, self.num_classes, self.style = height, width, num_classes, style
        self.hues, self.textures, self.class_names = class_appearance(num_classes, style.pair_hue_split)
        s = SUPERSAMPLE
        # work-pixel centres in output-pixel units
        self._ys = ((np.arange(s * height) + 0.5) / s).astype(np.float32)
        self._xs = ((np.arange(s * width) + 0.5) / s).astype(np.float32)
        # bilinear maps of the coarse random grids: background drift (4x4, work resolution) and
        # shading (3x3, output resolution)
        self._drift_y, self._drift_x = (_linear_upsampling(4, s * n).astype(np.float32) for n in (height, width))
        self._light_y, self._light_x = (_linear_upsampling(3, n).astype(np.float32) for n in (height, width))

    def render(self, count: int, rng: np.random.Generator):
        objects = self._sample_objects(count, rng)
        background = self._sample_background(count, rng)
        lighting = self._sample_lighting(count, rng)
        owner = self._owners(objects)                        # (n, 2H, 2W): object slot, M = background
        labels = self._labels(objects["classes"], owner)
        work = self._paint(objects, background, owner)       # (n, 3, 2H, 2W) float32
        return self._camera(_box_reduce(work, SUPERSAMPLE), lighting), labels

    # ---- random parameters

    def _sample_objects(self, count: int, rng: np.random.Generator) -> dict:
        st = self.style
        m = st.objects[1]
        size = min(self.height, self.width)
        num = rng.integers(st.objects[0], st.objects[1] + 1, count)
        active = np.arange(m)[None, :] < num[:, None]
        classes = rng.integers(1, self.num_classes, (count, m))
        shapes = rng.integers(3, size=(count, m))
        centre_y = rng.uniform(0, self.height, (count, m))
        centre_x = rng.uniform(0, self.width, (count, m))
        radius = rng.uniform(*st.radius, (count, m)) * size
        stretch = np.exp(rng.uniform(-st.aspect, st.aspect, (count, m)))
        angle = rng.uniform(0, np.pi, (count, m))
        half_a, half_b = radius * stretch, radius / stretch
        bar = (shapes == RECTANGLE) & (rng.random((count, m)) < st.bar_prob)
        bar_length = rng.uniform(0.3, 0.6, (count, m)) * np.hypot(self.height, self.width)
        half_a = np.where(bar, bar_length, half_a)
        half_b = np.where(bar, np.maximum(0.35 * radius, 0.75), half_b)
        harmonics = rng.uniform(-st.blob_wobble, st.blob_wobble, (count, m, 3)) / np.array([1, 1.5, 2])
        harmonic_phases = rng.uniform(0, 2 * np.pi, (count, m, 3))
        appearance = self._sample_appearance(
            self.hues[classes] + rng.normal(0, st.hue_jitter, (count, m)), self.textures[classes],
            rng.uniform(*st.saturation, (count, m)), rng.uniform(*st.texture_amplitude, (count, m)), rng)
        return dict(active=active, classes=classes, shapes=shapes, centre_y=centre_y,
                    centre_x=centre_x, radius=radius, half_a=half_a, half_b=half_b, angle=angle,
                    harmonics=harmonics, harmonic_phases=harmonic_phases, **appearance)

    def _sample_background(self, count: int, rng: np.random.Generator) -> dict:
        st = self.style
        shape = (count, 1)
        appearance = self._sample_appearance(
            rng.random(shape), rng.integers(4, size=shape), rng.uniform(*st.background_saturation, shape),
            rng.uniform(0, st.background_texture, shape), rng)
        drift = rng.uniform(-1, 1, (count, 3, 4, 4)) * st.background_drift
        # one standard normal per output pixel, the pattern of every "noisy" texture in the image
        noise = rng.standard_normal((count, self.height, self.width)).astype(np.float32)
        return dict(drift=drift, noise=noise, **appearance)

    def _sample_appearance(self, hue, texture, saturation, amplitude, rng) -> dict:
        """Base colour (..., 3) and texture parameters of objects (or backgrounds) of any shape."""
        st = self.style
        value = rng.uniform(*st.value, hue.shape)
        return dict(colour=_hsv_to_rgb(hue % 1.0, saturation, value), texture=texture,
                    amplitude=amplitude, period=rng.uniform(*st.texture_period, hue.shape),
                    texture_angle=rng.uniform(0, np.pi, hue.shape),
                    texture_phase=rng.uniform(0, 2 * np.pi, hue.shape))

    def _sample_lighting(self, count: int, rng: np.random.Generator) -> dict:
        st = self.style
        return dict(gain=rng.uniform(*st.gain, count),
                    shading=rng.uniform(-st.shading, st.shading, (count, 3, 3)),
                    blur=rng.uniform(*st.blur_sigma, count),
                    noise_level=rng.uniform(*st.noise_sigma, count),
                    noise=rng.standard_normal((count, 3, self.height, self.width)).astype(np.float32),
                    mottle_level=rng.uniform(*st.mottle_sigma, count),
                    mottle=rng.standard_normal((count, 3, self.height, self.width)).astype(np.float32))

    # ---- geometry and labels

    def _owners(self, o: dict) -> np.ndarray:
        """(n, 2H, 2W) int: the topmost object covering each work pixel, or M for background."""
        def param(name):
            return o[name].astype(np.float32)[:, :, None, None]

        dy = self._ys[None, None, :, None] - param("centre_y")
        dx = self._xs[None, None, None, :] - param("centre_x")
        cos, sin = np.cos(param("angle")), np.sin(param("angle"))
        u, v = dx * cos + dy * sin, dy * cos - dx * sin
        a, b = param("half_a"), param("half_b")
        ellipse = (u / a) ** 2 + (v / b) ** 2 < 1
        rectangle = (np.abs(u) < a) & (np.abs(v) < b)
        theta = np.arctan2(v, u)
        wobble = 1 + sum(o["harmonics"][:, :, k, None, None].astype(np.float32)
                         * np.cos((k + 1) * theta + o["harmonic_phases"][:, :, k, None, None].astype(np.float32))
                         for k in range(3))
        blob = u * u + v * v < (param("radius") * wobble) ** 2
        shapes = o["shapes"][:, :, None, None]
        cover = np.where(shapes == ELLIPSE, ellipse, np.where(shapes == RECTANGLE, rectangle, blob))
        cover &= o["active"][:, :, None, None]
        m = cover.shape[1]
        last = m - 1 - np.argmax(cover[:, ::-1], axis=1)  # later objects occlude earlier ones
        return np.where(cover.any(axis=1), last, m)

    def _labels(self, classes: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """(n, H, W) int64 labels: the class of the 2x2 sub-pixels, -1 where they disagree."""
        table = np.concatenate([classes, np.zeros((len(classes), 1), classes.dtype)], axis=1)
        work = np.take_along_axis(table, owner.reshape(len(owner), -1), axis=1).reshape(owner.shape)
        s = SUPERSAMPLE
        subpixels = [work[:, i::s, j::s] for i in range(s) for j in range(s)]
        mixed = np.logical_or.reduce([sub != subpixels[0] for sub in subpixels[1:]])
        return np.where(mixed, IGNORE_LABEL, subpixels[0]).astype(np.int64, copy=False)

    # ---- appearance

    def _paint(self, o: dict, background: dict, owner: np.ndarray) -> np.ndarray:
        """(n, 3, 2H, 2W): each work pixel in its owner's colour plus its owner's texture."""
        count = len(owner)
        flat_owner = owner.reshape(count, -1)

        def gather(name):
            table = np.concatenate([o[name], background[name]], axis=1)
            return np.take_along_axis(table, flat_owner, axis=1).reshape(owner.shape).astype(np.float32)

        texture = gather("texture")
        angle, period, phase = gather("texture_angle"), gather("period"), gather("texture_phase")
        ys, xs = self._ys[None, :, None], self._xs[None, None, :]
        cos, sin = np.cos(angle), np.sin(angle)
        along = np.sin((xs * cos + ys * sin) * (2 * np.pi) / period + phase)
        across = np.sin((ys * cos - xs * sin) * (2 * np.pi) / period)
        s = SUPERSAMPLE  # blotchy: one value per output pixel, repeated over its sub-pixels
        noise = np.repeat(np.repeat(np.clip(background["noise"], -2.5, 2.5), s, axis=1), s, axis=2)
        pattern = np.select([texture == STRIPED, texture == DOTTED, texture == NOISY],
                            [along, 1.5 * along * across, 0.6 * noise], 0.0).astype(np.float32)
        shade = pattern * gather("amplitude")

        colour = np.concatenate([o["colour"], background["colour"]], axis=1)   # (n, M + 1, 3)
        image = np.take_along_axis(colour, flat_owner[:, :, None], axis=1)      # (n, P, 3)
        image = image.astype(np.float32).transpose(0, 2, 1).reshape(count, 3, *owner.shape[1:])
        drift = np.einsum("iy,ncyx,jx->ncij", self._drift_y, background["drift"].astype(np.float32),
                          self._drift_x)
        image += np.where(owner == o["classes"].shape[1], 1.0, 0.0)[:, None].astype(np.float32) * drift
        return image + shade[:, None]

    def _camera(self, image: np.ndarray, lighting: dict) -> np.ndarray:
        """Illumination, optical blur and sensor noise; quantised to uint8."""
        light = np.einsum("iy,nyx,jx->nij", self._light_y, lighting["shading"].astype(np.float32),
                          self._light_x)
        image = image * ((1 + light) * lighting["gain"][:, None, None].astype(np.float32))[:, None]
        image = _gaussian_blur(image, lighting["blur"])
        image += lighting["noise"] * lighting["noise_level"][:, None, None, None].astype(np.float32)
        scale = np.full(len(image), self.style.mottle_scale)
        mottle = _gaussian_blur(lighting["mottle"], scale) / np.float32(_blur_gain(self.style.mottle_scale))
        image += mottle * lighting["mottle_level"][:, None, None, None].astype(np.float32)
        return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _hsv_to_rgb(hue, saturation, value) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns shape ``hue.shape + (3,)``."""
    sector = hue * 6.0
    index = np.floor(sector).astype(np.int64) % 6
    fraction = sector - np.floor(sector)
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    table = np.stack([np.stack(channels, -1) for channels in (
        (value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q))], 0)
    return np.take_along_axis(table, index[None, ..., None], axis=0)[0]


def _box_reduce(images: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` pixel blocks over the last two axes."""
    total = sum(images[..., i::factor, j::factor] for i in range(factor) for j in range(factor))
    return total * np.float32(1 / factor ** 2)


def _gaussian_blur(images: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Blur (n, C, H, W) images, image i with Gaussian std ``sigmas[i]`` (separable, edge padding)."""
    half_width = max(1, int(np.ceil(3 * float(np.max(sigmas, initial=0.0)))))
    offsets = np.arange(-half_width, half_width + 1)
    safe = np.maximum(sigmas, 1e-3)[:, None]  # sigma -> 0 gives the identity kernel
    weights = np.exp(-0.5 * (offsets[None, :] / safe) ** 2)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)[:, :, None, None, None]
    height, width = images.shape[-2:]
    padded = np.pad(images, ((0, 0), (0, 0), (half_width, half_width), (0, 0)), mode="edge")
    images = sum(weights[:, k] * padded[:, :, k:k + height, :] for k in range(len(offsets)))
    padded = np.pad(images, ((0, 0), (0, 0), (0, 0), (half_width, half_width)), mode="edge")
    return sum(weights[:, k] * padded[:, :, :, k:k + width] for k in range(len(offsets)))


def _blur_gain(sigma: float) -> float:
    """Standard deviation of white unit noise after :func:`_gaussian_blur` with ``sigma`` (far
    from the edges): the 2-D kernel's L2 norm, the square of the 1-D one's."""
    half_width = max(1, int(np.ceil(3 * sigma)))
    weights = np.exp(-0.5 * (np.arange(-half_width, half_width + 1) / max(sigma, 1e-3)) ** 2)
    return float(np.sum((weights / weights.sum()) ** 2))


def _linear_upsampling(source: int, target: int) -> np.ndarray:
    """(target, source) matrix interpolating ``source`` samples linearly onto ``target`` pixels."""
    positions = (np.arange(target) + 0.5) * source / target - 0.5
    return np.stack([np.interp(positions, np.arange(source), row) for row in np.eye(source)], axis=1)


# ------------------------------------------------------------------------------------ generation

def generate_segmentation(out_path, num_train: int = 2000, num_val: int = 200, num_test: int = 500,
                          height: int = 32, width: int = 32, num_classes: int = 5, seed: int = 0,
                          progress: bool = True, style: SceneStyle = DEFAULT_STYLE) -> Path:
    """Generate the segmentation data set and write it atomically to ``out_path`` (HDF5).

    Train, val and test are independent draws, each from its own random stream, so a split does
    not change when another split's size does. Returns the path.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if int(count) < 1:
            raise ValueError(f"num_{split} must be >= 1, got {count}")
    if int(height) < 4 or int(width) < 4:
        raise ValueError(f"height and width must be >= 4, got {height}x{width}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (background and one object class), got {num_classes}")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    split_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(SPLITS))]
    renderer = SceneRenderer(int(height), int(width), int(num_classes), style)

    tmp_path = out_path.with_suffix(out_path.suffix + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp_path, "w") as file:
            _write_attributes(file, renderer, seed)
            for split, rng in zip(SPLITS, split_rngs):
                _write_split(file, split, int(counts[split]), renderer, rng, progress)
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out_path


def _write_attributes(file: h5py.File, renderer: SceneRenderer, seed: int) -> None:
    file.attrs["task"] = "segmentation"
    file.attrs["num_classes"] = renderer.num_classes
    file.attrs["class_names"] = np.array(renderer.class_names, dtype=h5py.string_dtype())
    file.attrs["seed"] = int(seed)
    file.attrs["generator"] = (
        f"dstrain.tasks.segmentation.data: {renderer.height}x{renderer.width} RGB scenes of "
        f"ellipses, rectangles, bars and blobs in {renderer.num_classes} classes (0 = background; "
        f"class pairs share a hue and differ in texture), -1 on pixels straddling a boundary; "
        f"{renderer.style.describe()}")


def _write_split(file, split, count, renderer: SceneRenderer, rng, progress) -> None:
    """Render ``count`` scenes block by block (one HDF5 chunk at a time) to bound memory."""
    height, width = renderer.height, renderer.width
    group = file.create_group(split)
    chunk = max(1, min(count, BLOCK_PIXELS // (height * width)))
    label_dtype = np.int16 if renderer.num_classes <= np.iinfo(np.int16).max else np.int64
    x = group.create_dataset("x", (count, 3, height, width), dtype=np.uint8,
                             chunks=(chunk, 3, height, width), compression="gzip",
                             compression_opts=GZIP_LEVEL)
    y = group.create_dataset("y", (count, height, width), dtype=label_dtype,
                             chunks=(chunk, height, width), compression="gzip", compression_opts=GZIP_LEVEL)
    with tqdm(total=count, desc=f"segmentation/{split}", unit="image", disable=not progress) as bar:
        for start in range(0, count, chunk):
            images, labels = renderer.render(min(chunk, count - start), rng)
            x[start:start + len(images)] = images
            y[start:start + len(images)] = labels
            bar.update(len(images))


# ---------------------------------------------------------------------------------------- reader

LABEL_CHECK_PIXELS = 2**22      # labels validated per read: bounded memory for any N, H, W


class SegmentationData(SplitReader):
    """One split of a segmentation file: metadata on open, rows on demand.

    Attributes: ``path``, ``split``, ``num_samples`` (N), ``num_classes`` (C), ``image_shape``
    ((channels, H, W) of x), ``class_names`` (tuple of C str; "background", "class1", ... when
    the file has none). Opening validates the layout and every label (block by block, so memory
    stays bounded); ``x`` is never loaded whole. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, split: str):
        super().__init__(path, split, "segmentation")

    def _validate(self, file) -> None:
        split = self.split
        self.num_classes, self.class_names = _read_header(file, self.path)
        self._x, self._y = _split_datasets(file, self.path, split)
        self.num_samples = int(self._x.shape[0])
        self.image_shape = tuple(int(n) for n in self._x.shape[1:])
        _check_labels(self._y, self.num_classes, self._where("y"))

    def __repr__(self) -> str:
        return (f"SegmentationData({str(self.path)!r}, split={self.split!r}, "
                f"num_samples={self.num_samples}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")



def open_segmentation(path, split: str) -> SegmentationData:
    """Open one split (``"train"``, ``"val"``, ``"test"``, ...) of a segmentation HDF5 file, validated."""
    return SegmentationData(path, split)


def _shown(value):
    return value.item() if isinstance(value, np.generic) else value


def _read_header(file: h5py.File, path: Path):
    """Check the root attributes (the task is checked on open); return (num_classes, class_names)."""
    num_classes = positive_int_attr(file, path, "num_classes")
    if num_classes < 2:
        raise DataError(f"{path}: root attribute 'num_classes' is {num_classes}; expected an integer "
                        f">= 2 (class 0 = background)")
    if "class_names" not in file.attrs:
        return num_classes, ("background",) + tuple(f"class{k}" for k in range(1, num_classes))
    names = np.atleast_1d(np.asarray(file.attrs["class_names"], dtype=object))
    names = [name.decode() if isinstance(name, bytes) else name for name in names.ravel()]
    if len(names) != num_classes or not all(isinstance(name, str) for name in names):
        raise DataError(f"{path}: root attribute 'class_names' holds {len(names)} entries; expected "
                        f"{num_classes} strings (one per class)")
    return num_classes, tuple(names)


def _split_datasets(file: h5py.File, path: Path, split: str):
    """Check /split/x and /split/y exist with compatible shapes and dtypes; return them."""
    x, y = split_group(file, path, split, {"x": "(N, C, H, W) images", "y": "(N, H, W) labels"})
    if x.ndim != 4:
        raise DataError(f"{path}: dataset '/{split}/x' has shape {x.shape}; expected 4-D (N, C, H, W)")
    if x.dtype not in (np.uint8, np.float32):
        raise DataError(f"{path}: dataset '/{split}/x' has dtype {x.dtype}; expected uint8 or float32")
    expected = (x.shape[0],) + x.shape[2:]
    if y.shape != expected:
        raise DataError(f"{path}: dataset '/{split}/y' has shape {y.shape}; expected (N, H, W) = "
                        f"{expected} to match '/{split}/x' {x.shape}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{path}: dataset '/{split}/y' has dtype {y.dtype}; expected an integer type")
    return x, y


def _check_labels(y: h5py.Dataset, num_classes: int, where: str) -> None:
    """Raise DataError at the first label outside [-1, num_classes), reading a block of rows at a time."""
    pixels = max(1, int(np.prod(y.shape[1:], dtype=np.int64)))
    rows = max(1, LABEL_CHECK_PIXELS // pixels)
    for start in range(0, y.shape[0], rows):
        block = y[start:start + rows]
        outside = (block < IGNORE_LABEL) | (block >= num_classes)
        if outside.any():
            row = int(np.flatnonzero(outside.reshape(len(block), -1).any(axis=1))[0])
            value = _shown(block[row][outside[row]][0])
            raise DataError(f"{where}: label {value} in row {start + row} is outside [-1, {num_classes}); "
                            f"expected class ids 0..{num_classes - 1} and -1 for ignored pixels")
