"""Synthetic word-recognition data set in the spirit of Chen et al. (ICML 2015), "Word50".

A vocabulary of 50 five-letter words is drawn from a built-in list of common English words. Every
sample is one vocabulary word; each of its characters is rendered independently as a small
grayscale image with a random font and random distortions:

- one affine transform (rotation, scale, aspect, shear, translation),
- a thinner or thicker stroke (rank filters on the cached glyph),
- clutter: random lines, blobs and pieces of other letters, plus a smooth random gray texture,
- random contrast, Gaussian blur and additive pixel noise.

The strengths are calibrated (``bench/calibrate_words.py``, bench/results/calibration.md) so
that a one-hidden-layer MLP that classifies single characters gets roughly 70 % test character
accuracy, leaving room for the pairwise (word-level) potentials of a structured model to help, as
in the paper.

Fonts are the TrueType files shipped inside matplotlib, so nothing is downloaded. The result is
written to HDF5 following the words contract of docs/data.md (see ``dstrain.data.hdf5``).

Reproducibility: every random draw comes from ``np.random.default_rng`` generators derived from
``seed``; the same arguments give byte-identical files on the same software stack (FreeType or
Pillow upgrades may change the anti-aliasing of the glyphs).
"""
from __future__ import annotations

import os
import string
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm.auto import tqdm

__all__ = ["generate_words", "WORD_LIST", "VOCABULARY_SIZE", "WORD_LENGTH", "Distortion"]

LETTERS = string.ascii_lowercase
VOCABULARY_SIZE = 50
WORD_LENGTH = 5
SPLITS = ("train", "val", "test")
CHUNK_WORDS = 256  # HDF5 chunk = 256 words: ~1 MB of 28x28 images, fits h5py's default chunk cache
GZIP_LEVEL = 4

# Common English five-letter words (no proper nouns), a few with rare letters (j, q, x, z).
WORD_LIST = tuple("""
about above abuse actor acute admit adopt adult after again agent agree ahead alarm album alert
alike alive allow alone along alter among anger angle angry apart apple apply arena argue arise
array aside asset audio audit avoid award aware badly baker basic basis beach began begin being
below bench birth black blame blind block blood board boost booth bound brain brand bread break
breed brief bring broad broke brown build built buyer cable carry catch cause chain chair chart
chase cheap check chest chief child chose civil claim class clean clear click clock close coach
coast could count court cover craft crash cream crime cross crowd crown curve cycle daily dance
dealt death delay depth doubt dozen draft drama drawn dream dress drill drink drive drove eager
early earth eight empty enemy enjoy enter entry equal error event every exact exist extra faith
false fault fiber field fifth fifty fight final first fixed flash fleet floor fluid focus force
forth forty found frame fraud fresh front fruit fully funny fuzzy giant given glass globe glaze
grace grade grand grant grass great green gross group grown guard guess guest guide happy heart
heavy horse hotel house human ideal image index inner input issue joint joker judge juice jumbo
known label large laser later laugh layer learn lease least leave legal lemon level light limit
local logic loose lower lucky lunch major maker march match maybe mayor meant media metal might
minor mixed model money month moral motor mount mouse mouth movie music never night noise north
novel nurse occur ocean offer often order other ought oxide paint panel paper party peace phase
phone photo piece pilot pitch pizza place plain plane plant plate point pound power press price
pride prime print prior prize proof proud prove proxy queen query quest quick quiet quilt quite
quote radio raise range rapid ratio reach ready refer right river rough round route royal rural
scale scene scope score sense serve seven shall shape share sharp sheet shelf shell shift shirt
shock shoot short shown sight since sixth sixty skill sleep slide small smart smile smoke solid
solve sorry sound south space spare speak speed spend spent split spoke sport staff stage stake
stand start state steam steel stick still stock stone stood store storm story strip stuck study
stuff style sugar sweet table taken taste teach teeth thank theft their theme there these thick
thing think third those three threw throw tight tired title today topic total touch tough tower
toxic track trade train treat trend trial tried truck truly trust truth twice under union unity
until upper upset urban usage usual valid value video virus visit vital vivid voice waltz waste
watch water wheel where which while white whole whose woman women world worry worse worst worth
would wound write wrong wrote yield young youth zebra
""".split())

# Candidate fonts, in a fixed order so the data set does not depend on what else a matplotlib
# release ships. Each one is still checked (``_has_all_letters``) before use.
CANDIDATE_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmmi10.ttf", "cmss10.ttf", "cmtt10.ttf",
    "cmsy10.ttf", "cmex10.ttf",  # symbol fonts: their 'a'..'z' slots hold symbols, so the check drops them
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)


@dataclass(frozen=True)
class Distortion:
    """Strengths of the random per-character distortions.

    Calibrated with ``bench/calibrate_words.py``; the measurements are in
    bench/results/calibration.md.

    Geometry is relative to the output image: ``em_fraction`` is the font's em size as a fraction
    of the image side at scale 1, ``translation`` the largest shift as a fraction of the side.
    Intensities are in [0, 1].
    """

    em_fraction: float = 0.8
    rotation_deg: float = 8.0
    scale: tuple[float, float] = (0.8, 1.15)
    aspect: float = 0.15               # log-uniform x/y stretch in [e^-a, e^a]
    shear: float = 0.2
    translation: float = 0.04
    stroke_probs: tuple[float, float, float, float] = (0.2, 0.4, 0.25, 0.15)  # thin, normal, bold, bolder
    line_prob: float = 0.6             # chance of 1-3 random strokes
    blob_prob: float = 0.3             # chance of 1-2 random blobs
    neighbour_prob: float = 0.6        # chance of a piece of another letter at the left or right edge
    texture: float = 0.35              # largest amplitude of the smooth gray background
    background: tuple[float, float] = (0.0, 0.25)
    foreground: tuple[float, float] = (0.55, 1.0)
    blur_sigma: float = 1.2            # Gaussian blur std drawn from [0, blur_sigma] pixels
    noise_sigma: float = 0.3           # pixel noise std drawn from [0, noise_sigma]

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())


DEFAULT_DISTORTION = Distortion()


# ----------------------------------------------------------------------------------------- fonts

def font_directory() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _has_all_letters(path: Path) -> bool:
    """True when the font maps every lowercase letter to a real letter glyph.

    The glyph must exist (index > 0) and, where the font names its glyphs, be named after the
    letter: this rejects fonts such as cmsy10 whose 'a'..'z' code points carry math symbols.
    """
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(str(path))
    except (OSError, RuntimeError):
        return False
    for letter in LETTERS:
        index = font.get_char_index(ord(letter))
        if index == 0:
            return False
        name = font.get_glyph_name(index)
        if name and name != letter and not name.startswith(("uni", "glyph", "gid")):
            return False
    return True


@lru_cache(maxsize=None)
def available_fonts() -> tuple[Path, ...]:
    """The candidate fonts that exist and pass the all-letters check, in a fixed order."""
    directory = font_directory()
    fonts = tuple(directory / name for name in CANDIDATE_FONTS
                  if (directory / name).is_file() and _has_all_letters(directory / name))
    if not fonts:
        raise RuntimeError(f"no usable TrueType font with all 26 lowercase letters in {directory}")
    return fonts


class GlyphBank:
    """Clean glyph masks per (font, letter, stroke level), rendered lazily and cached.

    A glyph is drawn at ``em`` pixels on a square canvas of side ``2 * em``: centred horizontally
    on its ink, and vertically so that the middle of the font's 'x' sits at the canvas centre.
    That keeps the baseline, ascenders and descenders where a reader expects them.
    """

    # Rank-filter sizes applied to the clean glyph per stroke level: thin, normal, bold, bolder.
    STROKE_FILTERS = (("min", 3), None, ("max", 3), ("max", 5))

    def __init__(self, fonts: tuple[Path, ...], em: int):
        self.fonts = fonts
        self.em = em
        self.canvas = 2 * em
        self._freetype = {}
        self._baseline = {}
        self._glyphs = {}

    def glyph(self, font_index: int, letter_index: int, stroke_level: int) -> Image.Image:
        key = (font_index, letter_index, stroke_level)
        if key not in self._glyphs:
            image = self._clean_glyph(font_index, letter_index) if stroke_level == 1 else \
                self._restroke(self.glyph(font_index, letter_index, 1), stroke_level)
            self._glyphs[key] = image
        return self._glyphs[key]

    def _font(self, font_index: int) -> ImageFont.FreeTypeFont:
        if font_index not in self._freetype:
            font = ImageFont.truetype(str(self.fonts[font_index]), self.em)
            left, top, right, bottom = font.getbbox("x", anchor="ls")
            self._freetype[font_index] = font
            self._baseline[font_index] = self.canvas / 2 - (top + bottom) / 2
        return self._freetype[font_index]

    def _clean_glyph(self, font_index: int, letter_index: int) -> Image.Image:
        font = self._font(font_index)
        letter = LETTERS[letter_index]
        left, _, right, _ = font.getbbox(letter, anchor="ls")
        image = Image.new("L", (self.canvas, self.canvas), 0)
        origin = (self.canvas / 2 - (left + right) / 2, self._baseline[font_index])
        ImageDraw.Draw(image).text(origin, letter, fill=255, font=font, anchor="ls")
        return image

    def _restroke(self, image: Image.Image, stroke_level: int) -> Image.Image:
        kind, size = self.STROKE_FILTERS[stroke_level]
        rank_filter = ImageFilter.MinFilter if kind == "min" else ImageFilter.MaxFilter
        return image.filter(rank_filter(size))


# ------------------------------------------------------------------------------------- rendering

class CharacterRenderer:
    """Renders blocks of distorted characters: ``render(letter_ids, rng) -> uint8 (n, S, S)``.

    Two stages: shapes (glyph warp, clutter strokes) one character at a time with Pillow, at twice
    the output resolution and box-reduced afterwards, which anti-aliases the affine resampling
    (Pillow's transform does not filter when it shrinks); then the pixel-level distortions
    (texture, contrast, blur, noise) with numpy on the whole block at once, which is much faster
    than per character.
    """

    SUPERSAMPLE = 2

    def __init__(self, image_size: int, distortion: Distortion = DEFAULT_DISTORTION):
        self.size = image_size
        self.work = self.SUPERSAMPLE * image_size
        self.distortion = distortion
        em = max(8, round(distortion.em_fraction * self.work))  # glyph em ~ em size in work pixels
        self.glyphs = GlyphBank(available_fonts(), em)
        self._stroke_cdf = np.cumsum(distortion.stroke_probs)[:-1]  # level = bins passed by a uniform
        self._upsample = _linear_upsampling(4, image_size).astype(np.float32)

    # Random draws happen block-wise in a fixed order (letter poses, clutter, pixel parameters),
    # which makes the output a pure function of the generator state and avoids the overhead of
    # thousands of scalar draws.
    def render(self, letter_ids, rng: np.random.Generator) -> np.ndarray:
        letter_ids = np.asarray(letter_ids, dtype=np.int64)
        count = len(letter_ids)
        letters = self._warp_glyphs(letter_ids, self._sample_poses(count, rng))
        clutter = self._clutter(count, rng)
        return self._pixel_distortions(letters, clutter, rng)

    # ---- stage 1: shapes, drawn per character with Pillow at work resolution

    def _sample_poses(self, count: int, rng: np.random.Generator, shift_x=None) -> dict:
        """Font, stroke level and Pillow affine coefficients of ``count`` glyph placements.

        The glyph's map is  output = centre + translation + A @ (input - glyph_centre)  with
        A = scale * Rotation @ Shear @ diag(stretch, 1/stretch); Pillow wants the inverse map.
        """
        d = self.distortion
        fonts = rng.integers(len(self.glyphs.fonts), size=count)
        strokes = np.searchsorted(self._stroke_cdf, rng.random(count), side="right")
        scale = rng.uniform(*d.scale, count) * d.em_fraction * self.work / self.glyphs.em
        angle = np.deg2rad(rng.uniform(-d.rotation_deg, d.rotation_deg, count))
        shear = rng.uniform(-d.shear, d.shear, count)
        stretch = np.exp(rng.uniform(-d.aspect, d.aspect, count))
        translation = rng.uniform(-d.translation, d.translation, (count, 2)) * self.work
        if shift_x is not None:
            translation[:, 0] += shift_x
        inverse = _inverse_affine(scale, angle, shear, stretch)  # (count, 2, 2)
        offset = self.glyphs.canvas / 2 - np.einsum("nij,nj->ni", inverse, self.work / 2 + translation)
        coefficients = np.concatenate([inverse[:, 0], offset[:, :1], inverse[:, 1], offset[:, 1:]], axis=1)
        return {"fonts": fonts, "strokes": strokes, "coefficients": coefficients}

    def _warp_glyphs(self, letter_ids, poses) -> np.ndarray:
        """(n, work, work) uint8: each letter's glyph under its affine map, sampled bilinearly."""
        out = np.empty((len(letter_ids), self.work, self.work), np.uint8)
        size = (self.work, self.work)
        for i, (letter, font, stroke, coefficients) in enumerate(zip(
                letter_ids.tolist(), poses["fonts"].tolist(), poses["strokes"].tolist(),
                poses["coefficients"].tolist())):
            glyph = self.glyphs.glyph(font, letter, stroke)
            out[i] = glyph.transform(size, Image.Transform.AFFINE, coefficients,
                                     resample=Image.Resampling.BILINEAR, fillcolor=0)
        return out

    def _clutter(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """(n, work, work) uint8: pieces of random letters peeking in from the left or right edge
        (as from neighbours in a word), plus random strokes and blobs."""
        d = self.distortion
        has_piece = rng.random(count) < d.neighbour_prob
        side = rng.choice((-1.0, 1.0), count)
        shift = side * rng.uniform(0.55, 0.8, count) * self.work
        piece_letters = rng.integers(len(LETTERS), size=count)
        piece_poses = self._sample_poses(count, rng, shift_x=shift)
        layers = np.zeros((count, self.work, self.work), np.uint8)
        layers[has_piece] = self._warp_glyphs(
            piece_letters[has_piece], {key: value[has_piece] for key, value in piece_poses.items()})

        num_lines = np.where(rng.random(count) < d.line_prob, rng.integers(1, 4, count), 0)
        line_ends = rng.uniform(0, self.work, (count, 3, 4))
        line_widths = rng.integers(1, 5, (count, 3))
        line_fills = rng.integers(96, 256, (count, 3))
        num_blobs = np.where(rng.random(count) < d.blob_prob, rng.integers(1, 3, count), 0)
        blob_centres = rng.uniform(0, self.work, (count, 2, 2))
        blob_radii = rng.uniform(1.0, 0.12 * self.work, (count, 2, 2))
        blob_fills = rng.integers(96, 256, (count, 2))
        for i in np.flatnonzero((num_lines > 0) | (num_blobs > 0)):
            layer = Image.fromarray(layers[i])
            draw = ImageDraw.Draw(layer)
            for k in range(num_lines[i]):
                draw.line(line_ends[i, k].tolist(), fill=int(line_fills[i, k]), width=int(line_widths[i, k]))
            for k in range(num_blobs[i]):
                (cx, cy), (rx, ry) = blob_centres[i, k], blob_radii[i, k]
                draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(blob_fills[i, k]))
            layers[i] = np.asarray(layer)
        return layers

    # ---- stage 2: pixels, whole block

    def _pixel_distortions(self, letters, clutter, rng: np.random.Generator) -> np.ndarray:
        d = self.distortion
        count = len(letters)
        clutter_level = rng.uniform(0.5, 1.0, (count, 1, 1)).astype(np.float32)
        work = np.maximum(letters.astype(np.float32), clutter * clutter_level) * np.float32(1 / 255)
        image = _box_reduce(work, self.SUPERSAMPLE)

        image = np.maximum(image, self._textures(count, rng))
        background = rng.uniform(*d.background, (count, 1, 1)).astype(np.float32)
        foreground = rng.uniform(*d.foreground, (count, 1, 1)).astype(np.float32)
        image = background + (foreground - background) * image
        half_width = max(1, int(np.ceil(3 * d.blur_sigma)))  # kernel taps cover 3 sigma
        image = _gaussian_blur(image, rng.uniform(0.0, d.blur_sigma, count), half_width)
        noise_level = rng.uniform(0.0, d.noise_sigma, (count, 1, 1))
        image += (rng.standard_normal(image.shape) * noise_level).astype(np.float32)
        return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)

    def _textures(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Smooth random gray backgrounds: 4x4 random grids, interpolated bilinearly."""
        grids = rng.random((count, 4, 4)).astype(np.float32)
        amplitude = rng.uniform(0.0, self.distortion.texture, (count, 1, 1)).astype(np.float32)
        up = self._upsample
        return np.einsum("ij,njk,lk->nil", up, grids, up) * amplitude


def _box_reduce(images: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` pixel blocks of (n, H, W) images."""
    total = sum(images[:, i::factor, j::factor] for i in range(factor) for j in range(factor))
    return total * np.float32(1 / factor ** 2)


def _gaussian_blur(images: np.ndarray, sigmas: np.ndarray, half_width: int) -> np.ndarray:
    """Blur each image (n, H, W) with its own Gaussian std ``sigmas[i]`` (separable, edge padding)."""
    offsets = np.arange(-half_width, half_width + 1)
    safe = np.maximum(sigmas, 1e-3)[:, None]  # sigma -> 0 gives the identity kernel
    weights = np.exp(-0.5 * (offsets[None, :] / safe) ** 2)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)[:, :, None, None]
    height, width = images.shape[1:]
    padded = np.pad(images, ((0, 0), (half_width, half_width), (0, 0)), mode="edge")
    images = sum(weights[:, k] * padded[:, k:k + height, :] for k in range(len(offsets)))
    padded = np.pad(images, ((0, 0), (0, 0), (half_width, half_width)), mode="edge")
    return sum(weights[:, k] * padded[:, :, k:k + width] for k in range(len(offsets)))


def _inverse_affine(scale, angle, shear, stretch) -> np.ndarray:
    """(n, 2, 2) inverses of  scale * Rotation(angle) @ [[1, shear], [0, 1]] @ diag(stretch, 1/stretch)."""
    cos, sin = np.cos(angle), np.sin(angle)
    inverse_rotation = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)
    one, zero = np.ones_like(shear), np.zeros_like(shear)
    inverse_shear = np.stack([np.stack([one, -shear], -1), np.stack([zero, one], -1)], -2)
    inverse_stretch = np.stack([np.stack([1 / stretch, zero], -1), np.stack([zero, stretch], -1)], -2)
    return inverse_stretch @ inverse_shear @ inverse_rotation / scale[:, None, None]


def _linear_upsampling(source: int, target: int) -> np.ndarray:
    """(target, source) matrix interpolating ``source`` samples linearly onto ``target`` pixels."""
    positions = (np.arange(target) + 0.5) * source / target - 0.5
    return np.stack([np.interp(positions, np.arange(source), row) for row in np.eye(source)], axis=1)


# ------------------------------------------------------------------------------------ generation

def choose_vocabulary(rng: np.random.Generator, size: int = VOCABULARY_SIZE) -> list[str]:
    """``size`` distinct words from WORD_LIST, alphabetically sorted."""
    picks = rng.choice(len(WORD_LIST), size=size, replace=False)
    return sorted(WORD_LIST[i] for i in picks)


def generate_words(out_path, num_train: int = 10000, num_val: int = 2000, num_test: int = 2000,
                   seed: int = 0, image_size: int = 28, progress: bool = True) -> Path:
    """Generate the word data set and write it atomically to ``out_path`` (HDF5, docs/data.md).

    Train, val and test are independent random draws of (word, distortions); each split has its
    own random stream, so the test set does not change when ``num_train`` does. Returns the path.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if int(count) < 1:
            raise ValueError(f"num_{split} must be >= 1, got {count}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    vocabulary_rng, *split_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    vocabulary = choose_vocabulary(vocabulary_rng)
    renderer = CharacterRenderer(image_size)

    tmp_path = out_path.with_suffix(out_path.suffix + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp_path, "w") as file:
            _write_attributes(file, vocabulary, seed, image_size, renderer)
            for split, rng in zip(SPLITS, split_rngs):
                _write_split(file, split, int(counts[split]), vocabulary, renderer, rng, progress)
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out_path


def _write_attributes(file, vocabulary, seed, image_size, renderer: CharacterRenderer) -> None:
    file.attrs["task"] = "words"
    file.attrs["num_classes"] = len(LETTERS)
    file.attrs["vocabulary"] = np.array(vocabulary, dtype=h5py.string_dtype())
    file.attrs["seed"] = int(seed)
    file.attrs["fonts"] = np.array([p.stem for p in renderer.glyphs.fonts], dtype=h5py.string_dtype())
    file.attrs["generator"] = (
        f"dstrain.data.words: {len(vocabulary)} words of {WORD_LENGTH} letters from a list of "
        f"{len(WORD_LIST)}, {len(renderer.glyphs.fonts)} matplotlib fonts, "
        f"{image_size}x{image_size} images; {renderer.distortion.describe()}")


def _write_split(file, split, count, vocabulary, renderer, rng, progress) -> None:
    """Render ``count`` words block by block (one HDF5 chunk at a time) to bound memory."""
    size = renderer.size
    group = file.create_group(split)
    chunk = min(CHUNK_WORDS, count)
    x = group.create_dataset("x", (count, WORD_LENGTH, size, size), dtype=np.uint8,
                             chunks=(chunk, WORD_LENGTH, size, size), compression="gzip",
                             compression_opts=GZIP_LEVEL)
    y = group.create_dataset("y", (count, WORD_LENGTH), dtype=np.int64,
                             chunks=(chunk, WORD_LENGTH), compression="gzip", compression_opts=GZIP_LEVEL)
    letter_ids = np.array([[LETTERS.index(c) for c in word] for word in vocabulary], dtype=np.int64)
    word_ids = rng.integers(len(vocabulary), size=count)
    with tqdm(total=count, desc=f"words/{split}", unit="word", disable=not progress) as bar:
        for start in range(0, count, chunk):
            labels = letter_ids[word_ids[start:start + chunk]]
            images = renderer.render(labels.ravel(), rng).reshape(labels.shape + (size, size))
            x[start:start + len(labels)] = images
            y[start:start + len(labels)] = labels
            bar.update(len(labels))
