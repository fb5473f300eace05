"""Synthetic image-tagging data set in the spirit of the Flickr experiment of Chen et al. (ICML 2015).

Every sample is a small RGB picture (3 x 32 x 32 by default) with 38 binary tags. A picture is
composed from a latent *scene* (beach, city, forest, countryside, lakeside, alpine, winter, home,
party) and, outdoors, a *time of day* (day, sunset, night):

- global cues: a sky gradient (blue, sunset orange or night blue), the ground's colour (from what
  covers it: grass, sand, snow, sea, pavement, earth) and horizon height; indoors a wall and a
  floor; smooth random shading; at sunset a warm tint, at night everything but the light
  sources (moon, lights, the glitter of sun or moon on water) is darkened;
- objects, each present with a scene- and time-dependent probability (``OBJECT_PROBS``): sun,
  moon, clouds, trees, flowers, grass, mountains, sea, lake, sand, snow, buildings, a road, cars,
  a boat, birds, a dog, a horse, lights, food on a table, and people (a few small figures or one
  close-up portrait). Scenes share objects (trees and grass in forest and countryside, lakes and
  mountains by a lake and in the Alps, snow in the Alps and in winter), so a scene is often told
  only by a combination of objects, and the global colours are jittered per image
  (``Difficulty.colour_jitter``) so that they do not give the scene away.

Objects are drawn as simple shapes (ellipses, boxes, triangles, V strokes) with random size,
position and colour, in painter's order, so later ones occlude earlier ones. Evidence is often
weak: a drawn object has a random opacity over what lies below it (``Difficulty.contrast``),
small ones are a few pixels large, and with probability ``Difficulty.hidden`` a tagged small
object is not drawn at all (out of frame). The picture then gets a global colour cast, contrast
jitter and pixel noise.

The 38 tags (``TAG_NAMES``):

- the 9 scenes, exactly one on per picture;
- ``night``, ``sunset``, ``people`` (any person), ``portrait`` (a close-up person), ``water``
  (sea or lake);
- 11 abstract tags, each a union of scenes (``SCENE_GROUPS``: ``indoor``, ``nature``, ``travel``,
  ``holiday``, ``cold``, ``summer``, ``social``, ``hiking``, ``sport``, ``landscape``,
  ``family``), with no visual evidence of their own, like the "travel" or "summer" a user adds
  knowing where a photo was taken. Each union mixes scenes that look alike with scenes that do
  not (``summer`` holds the lakeside but not the Alps, the countryside but not the forest);
- 13 object tags: sun, tree, grass, mountain, sea, lake, sand, snow, building, road, car, lights,
  food. Moon, clouds, flowers, boats, birds, dogs and horses are drawn but not tagged (photo
  tags are incomplete); they are context.

So tags co-occur strongly and with structure (one scene at a time, unions of scenes, sand with
sea, sun never at night, portraits indoors, ...), which a model over all tag pairs (a CRF) can use
where a unary-only classifier sees weak evidence. The strengths are calibrated with
``bench/calibrate_tagging.py`` (bench/results/calibration.md).

Nothing is downloaded. The data set is written to HDF5 (the contract :func:`open_tagging` checks):

    /{train,val,test}/x   (N, 3, S, S) uint8 RGB, chunked + gzip
    /{train,val,test}/y   (N, 38) uint8 in {0, 1}
    root attributes       task = "tagging", num_labels = 38, tag_names, seed, generator

Reproducibility: every random draw comes from ``np.random.default_rng`` generators spawned from
``np.random.SeedSequence(seed)``, one per split, so the test split does not change with
``num_train``; the same arguments give byte-identical files on the same software stack.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from dstrain.data.hdf5 import (DataError, SplitReader, positive_int_attr, split_group)

__all__ = ["generate_tagging", "open_tagging", "TaggingData", "TAG_NAMES", "SCENES", "Difficulty"]

SPLITS = ("train", "val", "test")
CHUNK_IMAGES = 256   # HDF5 chunk of x: 256 images of 3x32x32 = 768 KiB, fits h5py's default cache
BLOCK_IMAGES = 1024  # images rendered at once (bounded memory, few numpy calls per image)
GZIP_LEVEL = 4
LABEL_CHECK_ROWS = 65536  # rows of y validated per read: bounded memory for any N

# The latent scenes; each is also a tag (exactly one is on per image).
SCENES = ("beach", "city", "forest", "countryside", "lakeside", "alpine", "winter", "home", "party")
SCENE_PROBS = (0.12, 0.15, 0.10, 0.11, 0.09, 0.09, 0.08, 0.16, 0.10)
INDOOR_SCENES = ("home", "party")
TIMES = ("day", "sunset", "night")
TIME_PROBS = {  # per outdoor scene: day, sunset, night (indoor scenes are always "day")
    "beach": (0.65, 0.25, 0.10), "city": (0.55, 0.10, 0.35), "forest": (0.90, 0.05, 0.05),
    "countryside": (0.75, 0.20, 0.05), "lakeside": (0.60, 0.30, 0.10), "alpine": (0.75, 0.20, 0.05),
    "winter": (0.80, 0.10, 0.10),
}

OBJECTS = ("sun", "moon", "clouds", "tree", "flower", "grass", "mountain", "sea", "lake", "sand",
           "snow", "building", "road", "car", "boat", "bird", "dog", "horse", "lights", "food")
# Objects that are drawn but not tagged (moon, clouds, flower, boat, bird, dog, horse) are context,
# as in photos whose tags are incomplete.
TAGGED_OBJECTS = ("sun", "tree", "grass", "mountain", "sea", "lake", "sand", "snow", "building", "road",
                  "car", "lights", "food")
# Abstract tags: unions of scenes, each mixing scenes that look alike with scenes that do not (no
# visual evidence of their own: what a user tags a photo with, knowing where it was taken).
SCENE_GROUPS = {
    "indoor": ("home", "party"),
    "nature": ("forest", "countryside", "lakeside", "alpine", "winter"),
    "travel": ("beach", "city", "alpine"),
    "holiday": ("beach", "lakeside", "alpine", "winter"),
    "cold": ("alpine", "winter"),
    "summer": ("beach", "lakeside", "countryside"),
    "social": ("party", "city", "beach"),
    "hiking": ("forest", "alpine", "countryside"),
    "sport": ("winter", "beach", "lakeside"),
    "landscape": ("alpine", "lakeside", "countryside", "winter"),
    "family": ("home", "beach", "countryside", "party"),
}
GLOBAL_TAGS = ("night", "sunset", "people", "portrait") + tuple(SCENE_GROUPS) + ("water",)
TAG_NAMES = SCENES + GLOBAL_TAGS + TAGGED_OBJECTS
# Small objects that may be present (tagged) without being drawn (out of frame).
HIDEABLE = ("sun", "moon", "flower", "car", "boat", "bird", "dog", "horse", "lights", "food")

# P(object present | scene) in daylight; the time of day adjusts sun, moon, clouds, birds and
# lights (``_sample_latent``). Objects not listed have probability 0. Scenes share many objects
# (trees and grass in forest and countryside, lakes and mountains by lakes and in the Alps, snow
# in the Alps and in winter), so a scene is often told only by a combination of objects.
OBJECT_PROBS = {
    "beach": dict(sea=0.97, sand=0.9, sun=0.5, clouds=0.5, boat=0.25, bird=0.1, dog=0.05, building=0.15,
                  tree=0.15, road=0.05),
    "city": dict(building=0.95, road=0.75, car=0.45, tree=0.3, clouds=0.4, lights=0.2, dog=0.05, bird=0.05,
                 flower=0.05, sea=0.08, mountain=0.05),
    "forest": dict(tree=1.0, grass=0.5, flower=0.15, bird=0.1, dog=0.08, horse=0.05, lake=0.2, sun=0.15,
                   clouds=0.2, mountain=0.15, snow=0.1),
    "countryside": dict(grass=0.95, tree=0.55, flower=0.25, horse=0.2, dog=0.1, sun=0.45, clouds=0.55,
                        building=0.3, road=0.3, car=0.1, bird=0.1, mountain=0.2, lake=0.1),
    "lakeside": dict(lake=1.0, tree=0.55, boat=0.35, mountain=0.35, bird=0.15, grass=0.6, sun=0.35,
                     clouds=0.45, dog=0.05, building=0.15),
    "alpine": dict(mountain=1.0, clouds=0.6, snow=0.45, tree=0.45, lake=0.3, grass=0.4, bird=0.1, sun=0.3,
                   horse=0.05, building=0.1),
    "winter": dict(snow=1.0, tree=0.5, mountain=0.45, sun=0.3, clouds=0.4, dog=0.1, building=0.15, road=0.1,
                   car=0.05, lake=0.1),
    "home": dict(lights=0.35, dog=0.2, food=0.3, flower=0.2),
    "party": dict(lights=0.85, food=0.7, flower=0.15),
}
# People: P(any people | scene), P(a close-up portrait | people), P(a group of 3 or more | people, no
# portrait).
PEOPLE_PROBS = {"beach": 0.4, "city": 0.4, "forest": 0.2, "countryside": 0.25, "lakeside": 0.2, "alpine": 0.15,
                "winter": 0.3, "home": 0.45, "party": 0.95}
PORTRAIT_PROBS = {"home": 0.4, "party": 0.15}  # 0.15 elsewhere
CROWD_PROBS = {"party": 0.75, "beach": 0.3, "city": 0.3}  # 0.15 elsewhere
MAX_PEOPLE = 6


@dataclass(frozen=True)
class Difficulty:
    """Strengths of the random effects that weaken the visual evidence of the tags.

    Calibrated with ``bench/calibrate_tagging.py`` so that a unary-only CNN leaves room for a
    model over all tags (bench/results/calibration.md).

    Intensities are in [0, 1]; sizes are fractions of the image side.
    """

    hidden: float = 0.03                        # P(a tagged small object is not drawn)
    contrast: tuple[float, float] = (0.6, 1.0)  # opacity of a drawn small object over its background
    object_scale: tuple[float, float] = (0.8, 1.8)  # size multiplier of the objects
    colour_jitter: float = 0.2                  # per-image jitter of sky, ground and object colours
    texture: float = 0.15                       # amplitude of the smooth random shading
    colour_cast: float = 0.08                   # per-image, per-channel global gain jitter
    noise_sigma: float = 0.04                   # pixel noise std drawn from [0, noise_sigma]

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())


DEFAULT_DIFFICULTY = Difficulty()


# ------------------------------------------------------------------------------------ the labels

@dataclass
class Latent:
    """The latent draw of a block of images: what the renderer draws and what the tags say."""

    scene: np.ndarray     # (n,) index into SCENES
    time: np.ndarray      # (n,) index into TIMES
    present: np.ndarray   # (n, len(OBJECTS)) bool: the object is in the scene (its tag, if tagged)
    drawn: np.ndarray     # (n, len(OBJECTS)) bool: present and not hidden
    people: np.ndarray    # (n,) number of small figures drawn (0..MAX_PEOPLE)
    portrait: np.ndarray  # (n,) bool: one close-up person
    open_sky: np.ndarray  # (n,) bool: the sky is in view (outdoor, not under a forest canopy)

    def labels(self) -> np.ndarray:
        """(n, 38) uint8 tags in the order of TAG_NAMES."""
        scene = np.asarray(SCENES)[self.scene]
        tags = {name: scene == name for name in SCENES}
        tags.update({name: self.present[:, i] for i, name in enumerate(OBJECTS)})
        tags.update({name: np.isin(scene, members) for name, members in SCENE_GROUPS.items()})
        tags.update({
            "night": self.time == TIMES.index("night"),
            "sunset": self.time == TIMES.index("sunset"),
            "water": tags["sea"] | tags["lake"],
            "people": (self.people > 0) | self.portrait,
            "portrait": self.portrait,
        })
        return np.stack([tags[name] for name in TAG_NAMES], axis=1).astype(np.uint8)


def _table(values: dict, default: float) -> np.ndarray:
    return np.array([values.get(scene, default) for scene in SCENES])


_OBJECT_TABLE = np.array([[OBJECT_PROBS[s].get(o, 0.0) for o in OBJECTS] for s in SCENES])
_TIME_TABLE = np.array([TIME_PROBS.get(s, (1.0, 0.0, 0.0)) for s in SCENES])
_PEOPLE_TABLE = _table(PEOPLE_PROBS, 0.0)
_PORTRAIT_TABLE = _table(PORTRAIT_PROBS, 0.15)
_CROWD_TABLE = _table(CROWD_PROBS, 0.15)
_HIDEABLE_MASK = np.isin(OBJECTS, HIDEABLE)
_O = {name: i for i, name in enumerate(OBJECTS)}


def _sample_latent(count: int, rng: np.random.Generator, difficulty: Difficulty) -> Latent:
    scene = np.searchsorted(np.cumsum(SCENE_PROBS)[:-1], rng.random(count), side="right")
    time = (rng.random((count, 1)) > np.cumsum(_TIME_TABLE[scene], axis=1)[:, :2]).sum(axis=1)
    probs = _OBJECT_TABLE[scene].copy()
    night, sunset = time == 2, time == 1
    outdoor = ~np.isin(scene, [SCENES.index(s) for s in INDOOR_SCENES])
    probs[night, _O["sun"]] = 0.0
    probs[sunset, _O["sun"]] = 0.85
    probs[night & outdoor, _O["moon"]] = 0.45
    probs[night, _O["clouds"]] *= 0.3
    probs[night, _O["bird"]] *= 0.2
    probs[night & outdoor, _O["lights"]] = np.where(scene[night & outdoor] == SCENES.index("city"), 0.9, 0.15)
    # A forest hides the sky half of the time: then no sun, moon or clouds.
    open_sky = outdoor & ~((scene == SCENES.index("forest")) & (rng.random(count) < 0.5))
    probs[~open_sky, _O["sun"]] = probs[~open_sky, _O["moon"]] = 0.0
    probs[~open_sky, _O["clouds"]] = 0.0
    present = rng.random(probs.shape) < probs
    present[:, _O["sand"]] &= present[:, _O["sea"]]      # sand only on a beach by the sea
    present[:, _O["lake"]] &= ~present[:, _O["sea"]]
    present[:, _O["grass"]] &= ~present[:, _O["snow"]]

    has_people = rng.random(count) < _PEOPLE_TABLE[scene]
    portrait = has_people & (rng.random(count) < _PORTRAIT_TABLE[scene])
    crowd = has_people & ~portrait & (rng.random(count) < _CROWD_TABLE[scene])
    people = np.where(crowd, rng.integers(3, MAX_PEOPLE + 1, count), rng.integers(1, 3, count))
    people = np.where(has_people & ~portrait, people, 0)

    hidden = (rng.random(present.shape) < difficulty.hidden) & _HIDEABLE_MASK
    return Latent(scene, time, present, present & ~hidden, people, portrait, open_sky)


# --------------------------------------------------------------------------------- the rendering

class _Canvas:
    """A block of float32 RGB images (n, 3, S, S) in [0, 1] and vectorised shape painting.

    Shapes are given per image (arrays over the rows being painted) in pixel units and become
    soft coverage masks (n, S, S): 1 inside, 0 outside, a one-pixel linear ramp across the edge
    (computed from an approximate signed distance), which anti-aliases without supersampling.
    """

    def __init__(self, count: int, size: int):
        self.size = size
        self.image = np.zeros((count, 3, size, size), np.float32)
        centres = np.arange(size, dtype=np.float32) + 0.5
        self.y = centres[None, :, None]
        self.x = centres[None, None, :]

    # ---- coverage masks; every argument is a (m,) array, the result (m, S, S) float32

    @staticmethod
    def _ramp(distance) -> np.ndarray:
        return np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)

    def ellipse(self, cx, cy, rx, ry) -> np.ndarray:
        cx, cy, rx, ry = (np.asarray(a, np.float32)[:, None, None] for a in (cx, cy, rx, ry))
        q = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return self._ramp((q - 1) * np.minimum(rx, ry))

    def box(self, x0, y0, x1, y1) -> np.ndarray:
        x0, y0, x1, y1 = (np.asarray(a, np.float32)[:, None, None] for a in (x0, y0, x1, y1))
        distance = np.maximum(np.maximum(x0 - self.x, self.x - x1), np.maximum(y0 - self.y, self.y - y1))
        return self._ramp(distance)

    def triangle(self, cx, base, half_width, height) -> np.ndarray:
        """An isosceles triangle pointing up, with its base centred at (cx, base)."""
        cx, base, hw, h = (np.asarray(a, np.float32)[:, None, None] for a in (cx, base, half_width, height))
        up = (base - self.y) / h  # 0 on the base, 1 at the apex
        side = (np.abs(self.x - cx) - hw * (1 - up)) / np.sqrt(1 + (hw / h) ** 2)
        return self._ramp(np.maximum(side, self.y - base))

    def vee(self, cx, cy, half_width, depth) -> np.ndarray:
        """A V stroke about one pixel thick (a bird in flight), apex at (cx, cy + depth)."""
        cx, cy, hw, d = (np.asarray(a, np.float32)[:, None, None] for a in (cx, cy, half_width, depth))
        dx = np.abs(self.x - cx)
        along = np.abs(self.y - (cy + d * (1 - dx / hw))) / np.sqrt(1 + (d / hw) ** 2) - 0.5
        return self._ramp(np.maximum(along, dx - hw))

    # ---- painting

    def paint(self, rows, coverage, colour, alpha=None) -> None:
        """Blend ``colour`` (m, 3) over the images ``rows`` with opacity ``coverage * alpha``."""
        if len(rows) == 0:
            return
        weight = coverage if alpha is None else coverage * np.asarray(alpha, np.float32)[:, None, None]
        block = self.image[rows]
        block += (np.asarray(colour, np.float32)[:, :, None, None] - block) * weight[:, None]
        self.image[rows] = block

    def fill_vertical(self, rows, top, bottom, y0, y1) -> None:
        """Fill the band y0 <= y < y1 (per image) with a vertical gradient from ``top`` to ``bottom``."""
        if len(rows) == 0:
            return
        y0, y1 = (np.asarray(a, np.float32)[:, None, None] for a in (y0, y1))
        t = np.clip((self.y - y0) / np.maximum(y1 - y0, 1.0), 0, 1)[:, None]  # (m, 1, S, 1)
        gradient = top[:, :, None, None] + (bottom - top)[:, :, None, None] * t
        inside = ((self.y >= y0) & (self.y < y1))[:, None]  # (m, 1, S, 1)
        block = self.image[rows]
        self.image[rows] = np.where(inside, gradient, block).astype(np.float32)


class TagRenderer:
    """Renders blocks of latent draws: ``render(latent, rng) -> uint8 (n, 3, S, S)``.

    All random draws happen per block, in a fixed order, so the output is a pure function of the
    generator state. Each object type is painted once per instance slot on the subset of images
    that hold it, which keeps the cost at a few dozen numpy operations per block.
    """

    def __init__(self, image_size: int = 32, difficulty: Difficulty = DEFAULT_DIFFICULTY):
        self.size = image_size
        self.difficulty = difficulty
        self._upsample = _linear_upsampling(4, image_size).astype(np.float32)

    def render(self, latent: Latent, rng: np.random.Generator) -> np.ndarray:
        count = len(latent.scene)
        canvas = _Canvas(count, self.size)
        self._rng = rng
        self._latent = latent
        horizon = self._background(canvas)
        self._sky_objects(canvas, horizon)
        self._landscape(canvas, horizon)
        self._things(canvas, horizon)
        self._time_of_day(canvas)
        self._emissive(canvas, horizon)
        self._people(canvas, horizon)
        return self._finish(canvas)

    # ---- helpers for random draws

    def _u(self, low, high, n) -> np.ndarray:
        return self._rng.uniform(low, high, n).astype(np.float32)

    def _scale(self, n) -> np.ndarray:
        return self._u(*self.difficulty.object_scale, n) * self.size

    def _alpha(self, n) -> np.ndarray:
        return self._u(*self.difficulty.contrast, n)

    def _jitter(self, colour, n, amount=None) -> np.ndarray:
        amount = self.difficulty.colour_jitter if amount is None else amount
        base = np.broadcast_to(np.asarray(colour, np.float32), (n, 3))
        return np.clip(base + self._rng.uniform(-amount, amount, (n, 3)), 0, 1).astype(np.float32)

    def _rows(self, name: str) -> np.ndarray:
        return np.flatnonzero(self._latent.drawn[:, _O[name]])

    # ---- layers

    def _background(self, canvas: _Canvas) -> np.ndarray:
        """Sky gradient above the horizon, ground below (indoor: wall and floor); returns the horizon row."""
        latent, n, s = self._latent, len(self._latent.scene), self.size
        time = latent.time
        horizon = self._u(0.35, 0.6, n) * s
        forest = latent.scene == SCENES.index("forest")
        horizon[forest] = self._u(0.15, 0.35, int(forest.sum())) * s
        horizon[~latent.open_sky & forest] = 0.0
        indoor = np.isin(latent.scene, [SCENES.index(x) for x in INDOOR_SCENES])
        horizon[indoor] = self._u(0.55, 0.75, int(indoor.sum())) * s

        sky_top = np.array([[0.25, 0.45, 0.85], [0.35, 0.25, 0.5], [0.03, 0.04, 0.12]], np.float32)[time]
        sky_bottom = np.array([[0.65, 0.78, 0.95], [0.95, 0.6, 0.3], [0.1, 0.12, 0.25]], np.float32)[time]
        overcast = latent.present[:, _O["clouds"]] & (self._rng.random(n) < 0.4)
        sky_top[overcast] = sky_bottom[overcast] = 0.6 * sky_top[overcast] + 0.4 * 0.7
        outdoor_rows = np.flatnonzero(~indoor)
        canvas.fill_vertical(outdoor_rows, self._jitter(sky_top[~indoor], len(outdoor_rows)),
                             self._jitter(sky_bottom[~indoor], len(outdoor_rows)),
                             np.zeros(len(outdoor_rows)), horizon[~indoor])

        # Ground colour by what covers it; city pavement and bare earth otherwise.
        present = latent.present
        ground = np.where(latent.scene[:, None] == SCENES.index("city"), [[0.45, 0.45, 0.47]],
                          [[0.45, 0.43, 0.36]]).astype(np.float32)
        ground[present[:, _O["grass"]]] = [0.3, 0.6, 0.2]
        ground[forest] = [0.2, 0.35, 0.15]
        ground[present[:, _O["snow"]]] = [0.93, 0.95, 0.98]
        ground[present[:, _O["sand"]]] = [0.88, 0.8, 0.58]
        ground[present[:, _O["sea"]] & ~present[:, _O["sand"]]] = [0.15, 0.35, 0.65]
        canvas.fill_vertical(outdoor_rows, self._jitter(ground[~indoor], len(outdoor_rows)),
                             self._jitter(0.8 * ground[~indoor], len(outdoor_rows)),
                             horizon[~indoor], np.full(len(outdoor_rows), s))

        indoor_rows = np.flatnonzero(indoor)
        m = len(indoor_rows)
        wall = self._rng.uniform(0.45, 0.9, (m, 1)) * self._jitter([1.0, 0.9, 0.75], m, 0.15)
        floor = self._jitter([0.4, 0.38, 0.42], m, 0.15)
        canvas.fill_vertical(indoor_rows, wall, 0.85 * wall, np.zeros(m), horizon[indoor])
        canvas.fill_vertical(indoor_rows, floor, 0.7 * floor, horizon[indoor], np.full(m, s))
        # Smooth random shading over the whole picture.
        grids = self._rng.random((n, 4, 4)).astype(np.float32) - 0.5
        amplitude = self._u(0.0, self.difficulty.texture, n)[:, None, None]
        shading = np.einsum("ij,njk,lk->nil", self._upsample, grids, self._upsample) * amplitude
        canvas.image += shading[:, None]
        return horizon

    def _sky_objects(self, canvas: _Canvas, horizon) -> None:
        latent, s = self._latent, self.size
        rows = self._rows("sun")
        m = len(rows)
        if m:
            r = self._u(0.07, 0.12, m) * self._scale(m)
            sunset = latent.time[rows] == 1
            cy = np.where(sunset, horizon[rows] - self._u(0.0, 0.1, m) * s, self._u(0.08, 0.25, m) * s)
            colour = np.where(sunset[:, None], self._jitter([1.0, 0.55, 0.2], m, 0.08),
                              self._jitter([1.0, 0.95, 0.55], m, 0.05))
            canvas.paint(rows, canvas.ellipse(self._u(0.1, 0.9, m) * s, cy, r, r), colour, self._alpha(m))

        rows = np.flatnonzero(latent.present[:, _O["clouds"]])  # clouds are big: never hidden
        for slot in range(3):
            rows = rows[self._rng.random(len(rows)) < (1.0 if slot == 0 else 0.5)]
            m = len(rows)
            if not m:
                break
            cx = self._u(0.0, 1.0, m) * s
            cy = self._u(0.05, 0.3, m) * s
            rx = self._u(0.12, 0.25, m) * s
            ry = rx * self._u(0.3, 0.5, m)
            shade = self._u(0.75, 1.0, m)[:, None] * np.ones(3, np.float32)
            cover = np.maximum(canvas.ellipse(cx, cy, rx, ry),
                               canvas.ellipse(cx + 0.5 * rx, cy - 0.4 * ry, 0.6 * rx, 0.9 * ry))
            canvas.paint(rows, cover, shade, self._u(0.5, 0.95, m))

        rows = self._rows("bird")
        for slot in range(3):
            rows = rows[self._rng.random(len(rows)) < (1.0 if slot == 0 else 0.5)]
            m = len(rows)
            if not m:
                break
            half = self._u(0.06, 0.1, m) * self._scale(m)
            cx = self._u(0.05, 0.95, m) * s
            cy = self._u(0.05, 0.6, m) * np.maximum(horizon[rows], 0.3 * s)
            canvas.paint(rows, canvas.vee(cx, cy, half, 0.6 * half), self._jitter([0.1, 0.1, 0.12], m, 0.08),
                         self._alpha(m))

    def _landscape(self, canvas: _Canvas, horizon) -> None:
        latent, s = self._latent, self.size
        rows = np.flatnonzero(latent.present[:, _O["mountain"]])
        for slot in range(2):
            rows = rows[self._rng.random(len(rows)) < (1.0 if slot == 0 else 0.6)]
            m = len(rows)
            if not m:
                break
            height = self._u(0.2, 0.45, m) * s
            half = height * self._u(1.0, 2.0, m)
            cx = self._u(0.0, 1.0, m) * s
            base = horizon[rows] + 1.0
            colour = self._jitter([0.32, 0.34, 0.45], m)
            canvas.paint(rows, canvas.triangle(cx, base, half, height), colour, self._u(0.85, 1.0, m))
            capped = latent.present[rows, _O["snow"]]
            if capped.any():
                r = rows[capped]
                cap = canvas.triangle(cx[capped], base[capped] - 0.65 * height[capped], 0.35 * half[capped],
                                      0.35 * height[capped])
                canvas.paint(r, cap, np.full((len(r), 3), 0.95, np.float32))

        rows = np.flatnonzero(latent.present[:, _O["sea"]] & latent.present[:, _O["sand"]])
        m = len(rows)
        if m:  # the beach: a band of sea between the horizon and the shore, waves on it
            shore = horizon[rows] + self._u(0.15, 0.35, m) * s
            colour = self._jitter([0.15, 0.38, 0.7], m)
            band = canvas.box(np.full(m, -1.0), horizon[rows], np.full(m, s + 1.0), shore)
            canvas.paint(rows, band, colour)
        rows = np.flatnonzero(latent.present[:, _O["sea"]])
        m = len(rows)
        if m:
            phase = self._u(0, 2 * np.pi, m)[:, None, None]
            waves = (np.sin(canvas.y * 2.2 + 0.4 * canvas.x + phase) > 0.7).astype(np.float32)
            waves *= (canvas.y > horizon[rows, None, None] + 1).astype(np.float32)
            if latent.present[rows, _O["sand"]].any():
                sandy = latent.present[rows, _O["sand"]]
                waves[sandy] *= (canvas.y < horizon[rows][sandy, None, None] + 0.15 * s)
            canvas.paint(rows, waves, np.full((m, 3), 0.85, np.float32), self._u(0.2, 0.5, m))

        rows = np.flatnonzero(latent.present[:, _O["lake"]])
        m = len(rows)
        if m:
            cy = horizon[rows] + self._u(0.15, 0.3, m) * s
            rx, ry = self._u(0.25, 0.5, m) * s, self._u(0.08, 0.18, m) * s
            colour = self._jitter([0.2, 0.4, 0.7], m)
            lake = canvas.ellipse(self._u(0.2, 0.8, m) * s, cy, rx, ry)
            canvas.paint(rows, lake, colour, self._u(0.7, 1.0, m))

        rows = np.flatnonzero(latent.present[:, _O["grass"]])
        m = len(rows)
        if m:  # blades: thin vertical stripes of a darker green near the bottom
            phase = self._u(0, 2 * np.pi, m)[:, None, None]
            blades = (np.sin(canvas.x * 2.6 + phase + 0.3 * canvas.y) > 0.5).astype(np.float32)
            blades *= (canvas.y > np.maximum(horizon[rows], 0.5 * s)[:, None, None]).astype(np.float32)
            canvas.paint(rows, blades, self._jitter([0.15, 0.45, 0.1], m, 0.05), self._u(0.2, 0.6, m))

        rows = np.flatnonzero(latent.present[:, _O["road"]])
        m = len(rows)
        if m:
            top = np.maximum(horizon[rows], 0.5 * s)
            centre = self._u(0.3, 0.7, m) * s
            width = self._u(0.25, 0.45, m) * s
            height = s - top + 1
            road = canvas.triangle(centre, np.full(m, s + 1.0), width * 2, height * 2)
            road *= canvas.y > top[:, None, None]
            canvas.paint(rows, road, self._jitter([0.3, 0.3, 0.32], m, 0.06))
            dashes = ((np.abs(canvas.x - centre[:, None, None]) < 0.7)
                      & (np.sin(canvas.y * 1.2) > 0) & (canvas.y > top[:, None, None] + 1)).astype(np.float32)
            canvas.paint(rows, dashes, np.full((m, 3), 0.95, np.float32), self._u(0.4, 0.9, m))

        rows = np.flatnonzero(latent.present[:, _O["building"]])
        for slot in range(4):
            rows = rows[self._rng.random(len(rows)) < (1.0 if slot == 0 else 0.6)]
            m = len(rows)
            if not m:
                break
            width = self._u(0.15, 0.3, m) * s
            height = self._u(0.2, 0.6, m) * s
            x0 = self._u(-0.1, 0.95, m) * s
            base = horizon[rows] + self._u(0.0, 0.08, m) * s
            colour = self._jitter([0.55, 0.5, 0.48], m, 0.18)
            canvas.paint(rows, canvas.box(x0, base - height, x0 + width, base), colour)
            windows = (((canvas.x - x0[:, None, None]) % 3 < 1.2) & ((canvas.y - base[:, None, None]) % 3 < 1.2)
                       & (canvas.x > x0[:, None, None] + 1) & (canvas.x < (x0 + width)[:, None, None] - 1)
                       & (canvas.y > (base - height)[:, None, None] + 1) & (canvas.y < base[:, None, None] - 1))
            canvas.paint(rows, windows.astype(np.float32), 0.5 * colour, self._u(0.4, 0.9, m))

        rows = np.flatnonzero(latent.present[:, _O["tree"]])
        for slot in range(4):
            rows = rows[self._rng.random(len(rows)) < (1.0 if slot == 0 else 0.6)]
            m = len(rows)
            if not m:
                break
            size = self._u(0.12, 0.25, m) * self._scale(m) * 1.3
            cx = self._u(0.0, 1.0, m) * s
            base = np.minimum(horizon[rows] + self._u(0.0, 0.3, m) * s, s - 1.0)
            base = np.maximum(base, self._u(0.5, 1.0, m) * s * (horizon[rows] < 1))  # under a canopy
            trunk = canvas.box(cx - 0.08 * size, base - 0.5 * size, cx + 0.08 * size, base)
            canvas.paint(rows, trunk, self._jitter([0.35, 0.22, 0.12], m, 0.05))
            conifer = self._rng.random(m) < 0.5
            crown = np.where(conifer[:, None, None],
                             canvas.triangle(cx, base - 0.3 * size, 0.45 * size, 1.2 * size),
                             canvas.ellipse(cx, base - 0.9 * size, 0.5 * size, 0.55 * size))
            canvas.paint(rows, crown, self._jitter([0.12, 0.42, 0.15], m), self._u(0.6, 1.0, m))

    def _things(self, canvas: _Canvas, horizon) -> None:
        """Small objects on the ground or the water: flowers, boats, cars, animals, food."""
        s = self.size
        ground_top = np.maximum(horizon, 0.45 * s)

        rows = self._rows("flower")  # a patch of blossoms of one colour
        m = len(rows)
        if m:
            palette = np.array([[0.95, 0.15, 0.2], [1.0, 0.85, 0.1], [0.95, 0.5, 0.8], [0.6, 0.3, 0.9]],
                               np.float32)
            colour = palette[self._rng.integers(len(palette), size=m)]
            px = self._u(0.15, 0.85, m) * s
            py = ground_top[rows] + self._u(0.3, 0.8, m) * (s - ground_top[rows])
            spread = self._u(0.06, 0.12, m) * self._scale(m)
            alpha = self._alpha(m)
            count = self._rng.integers(3, 8, m)
            for k in range(7):
                sub = count > k
                r = self._u(0.025, 0.045, m) * s
                dx, dy = self._u(-1, 1, m) * spread, self._u(-0.5, 0.5, m) * spread
                if sub.any():
                    canvas.paint(rows[sub], canvas.ellipse(px[sub] + dx[sub], py[sub] + dy[sub], r[sub], r[sub]),
                                 colour[sub], alpha[sub])

        rows = self._rows("boat")
        m = len(rows)
        if m:
            length = self._u(0.1, 0.18, m) * self._scale(m)
            cx = self._u(0.1, 0.9, m) * s
            cy = horizon[rows] + self._u(0.05, 0.15, m) * s
            alpha = self._alpha(m)
            c_x, c_y, c_length = cx[:, None, None], cy[:, None, None], length[:, None, None]
            slanted_ends = canvas.y - c_y + 0.3 * c_length > 0.5 * (np.abs(canvas.x - c_x) - 0.6 * c_length)
            hull = canvas.box(cx - length, cy - 0.3 * length, cx + length, cy) * slanted_ends
            canvas.paint(rows, hull, self._jitter([0.75, 0.15, 0.12], m, 0.15), alpha)
            sail = canvas.triangle(cx, cy - 0.3 * length, 0.5 * length, 1.4 * length)
            canvas.paint(rows, sail, self._jitter([0.95, 0.95, 0.92], m, 0.05), alpha)

        rows = self._rows("car")
        for slot in range(2):
            rows = rows[self._rng.random(len(rows)) < (1.0 if slot == 0 else 0.5)]
            m = len(rows)
            if not m:
                break
            length = self._u(0.12, 0.2, m) * self._scale(m)
            cx = self._u(0.1, 0.9, m) * s
            base = ground_top[rows] + self._u(0.15, 0.8, m) * (s - ground_top[rows])
            colour = self._rng.random((m, 3)).astype(np.float32) ** 0.7
            alpha = self._alpha(m)
            body = np.maximum(canvas.box(cx - length, base - 0.55 * length, cx + length, base - 0.15 * length),
                              canvas.box(cx - 0.55 * length, base - 0.95 * length, cx + 0.45 * length,
                                         base - 0.5 * length))
            canvas.paint(rows, body, colour, alpha)
            r = 0.22 * length
            wheels = np.maximum(canvas.ellipse(cx - 0.6 * length, base - r, r, r),
                                canvas.ellipse(cx + 0.6 * length, base - r, r, r))
            canvas.paint(rows, wheels, np.full((m, 3), 0.08, np.float32), alpha)

        # Dogs and horses share one silhouette and overlapping coats and sizes: the small cues
        # (a horse's neck and long legs) are often lost, and the context (fields) tells them apart.
        coats = {"dog": np.array([[0.9, 0.6, 0.2], [0.75, 0.45, 0.15]], np.float32),
                 "horse": np.array([[0.75, 0.45, 0.15], [0.45, 0.22, 0.08]], np.float32)}
        for name, size_range in (("dog", (0.12, 0.18)), ("horse", (0.15, 0.24))):
            rows = self._rows(name)
            m = len(rows)
            if not m:
                continue
            length = self._u(*size_range, m) * self._scale(m)
            cx = self._u(0.1, 0.9, m) * s
            base = ground_top[rows] + self._u(0.3, 0.95, m) * (s - ground_top[rows])
            facing = np.where(self._rng.random(m) < 0.5, -1.0, 1.0).astype(np.float32)
            legs = 0.6 * length if name == "horse" else 0.35 * length
            body_y = base - legs - 0.3 * length
            head_x = cx + facing * 0.95 * length
            shape = np.maximum.reduce([
                canvas.ellipse(cx, body_y, length, 0.38 * length),
                canvas.ellipse(head_x, body_y - 0.45 * length, 0.32 * length, 0.28 * length),
                canvas.box(cx - 0.8 * length, body_y, cx - 0.5 * length, base),
                canvas.box(cx + 0.5 * length, body_y, cx + 0.8 * length, base),
            ])
            if name == "horse":  # neck
                shape = np.maximum(shape, canvas.box(np.minimum(cx + facing * 0.6 * length, head_x),
                                                     body_y - 0.5 * length,
                                                     np.maximum(cx + facing * 0.6 * length, head_x), body_y))
            coat = coats[name][self._rng.integers(len(coats[name]), size=m)]
            canvas.paint(rows, shape, self._jitter(coat, m, 0.06), self._alpha(m))

        rows = self._rows("food")
        m = len(rows)
        if m:
            cx = self._u(0.25, 0.75, m) * s
            cy = self._u(0.75, 0.9, m) * s
            r = self._u(0.12, 0.2, m) * self._scale(m)
            alpha = self._alpha(m)
            canvas.paint(rows, canvas.box(np.zeros(m), cy - 0.3 * r, np.full(m, float(s)), np.full(m, float(s))),
                         self._jitter([0.3, 0.3, 0.33], m, 0.1), alpha)
            canvas.paint(rows, canvas.ellipse(cx, cy, r, 0.45 * r), np.full((m, 3), 0.95, np.float32), alpha)
            for _ in range(2):
                blob = canvas.ellipse(cx + self._u(-0.4, 0.4, m) * r, cy + self._u(-0.15, 0.15, m) * r,
                                      0.3 * r, 0.18 * r)
                canvas.paint(rows, blob, self._rng.random((m, 3)).astype(np.float32), alpha)

    def _time_of_day(self, canvas: _Canvas) -> None:
        """Sunset: a warm tint; night: everything drawn so far much darker (light sources come after)."""
        time = self._latent.time
        sunset = np.flatnonzero(time == 1)
        canvas.image[sunset] *= np.array([1.05, 0.8, 0.65], np.float32)[:, None, None]
        night = np.flatnonzero(time == 2)
        canvas.image[night] *= self._u(0.25, 0.45, len(night))[:, None, None, None]

    def _emissive(self, canvas: _Canvas, horizon) -> None:
        latent, s = self._latent, self.size
        rows = self._rows("moon")
        m = len(rows)
        if m:
            r = self._u(0.04, 0.08, m) * self._scale(m)
            cx, cy = self._u(0.1, 0.9, m) * s, self._u(0.08, 0.3, m) * s
            crescent = self._rng.random(m) < 0.5
            disk = canvas.ellipse(cx, cy, r, r)
            bite = canvas.ellipse(cx + 0.6 * r, cy - 0.2 * r, r, r) * crescent[:, None, None]
            canvas.paint(rows, disk * (1 - bite), self._jitter([0.95, 0.93, 0.8], m, 0.05), self._alpha(m))

        # A faint glitter column on the water below the sun or the moon (weak evidence of "reflection").
        water = (latent.present[:, _O["sea"]] | latent.present[:, _O["lake"]])
        lit = latent.drawn[:, _O["sun"]] | latent.drawn[:, _O["moon"]]
        rows = np.flatnonzero(water & lit)
        m = len(rows)
        if m:
            cx = self._u(0.2, 0.8, m) * s
            top = horizon[rows] + 1
            column = canvas.box(cx - self._u(0.5, 1.5, m), top, cx + self._u(0.5, 1.5, m),
                                top + self._u(0.15, 0.35, m) * s)
            glitter = (np.sin(canvas.y * 2.5) > 0).astype(np.float32)
            canvas.paint(rows, column * glitter, self._jitter([1.0, 0.9, 0.6], m, 0.05), self._u(0.15, 0.4, m))

        rows = self._rows("lights")
        for slot in range(6):
            rows = rows[self._rng.random(len(rows)) < (1.0 if slot == 0 else 0.7)]
            m = len(rows)
            if not m:
                break
            r = self._u(0.025, 0.05, m) * self._scale(m)
            cx = self._u(0.05, 0.95, m) * s
            cy = self._u(0.1, 1.0, m) * np.maximum(horizon[rows] + 0.1 * s, 0.5 * s)
            alpha = self._alpha(m)
            canvas.paint(rows, canvas.ellipse(cx, cy, 2.5 * r, 2.5 * r), self._jitter([1.0, 0.85, 0.4], m, 0.05),
                         0.35 * alpha)
            canvas.paint(rows, canvas.ellipse(cx, cy, r, r), self._jitter([1.0, 0.97, 0.8], m, 0.03), alpha)

    def _people(self, canvas: _Canvas, horizon) -> None:
        latent, s = self._latent, self.size
        night = latent.time == 2
        skin_palette = np.array([[0.95, 0.78, 0.62], [0.8, 0.6, 0.45], [0.55, 0.38, 0.25], [0.35, 0.22, 0.14]],
                                np.float32)
        ground_top = np.maximum(horizon, 0.45 * s)
        for slot in range(MAX_PEOPLE):
            rows = np.flatnonzero(latent.people > slot)
            m = len(rows)
            if not m:
                break
            height = self._u(0.35, 0.55, m) * self._scale(m)
            cx = self._u(0.05, 0.95, m) * s
            base = ground_top[rows] + self._u(0.1, 1.0, m) * (s - ground_top[rows]) + 0.1 * height
            shade = np.where(night[rows], 0.7, 1.0).astype(np.float32)[:, None]
            skin = skin_palette[self._rng.integers(len(skin_palette), size=m)] * shade
            clothes = self._rng.random((m, 3)).astype(np.float32) * shade
            alpha = self._u(0.6, 1.0, m)
            w = 0.14 * height
            body = np.maximum(canvas.box(cx - w, base - 0.78 * height, cx + w, base - 0.35 * height),
                              canvas.box(cx - 0.8 * w, base - 0.35 * height, cx + 0.8 * w, base))
            canvas.paint(rows, body, clothes, alpha)
            head = canvas.ellipse(cx, base - 0.88 * height, 0.11 * height, 0.11 * height)
            canvas.paint(rows, head, skin, alpha)

        rows = np.flatnonzero(latent.portrait)
        m = len(rows)
        if m:  # head and shoulders filling a good part of the picture
            r = self._u(0.13, 0.22, m) * s
            cx = self._u(0.3, 0.7, m) * s
            cy = s - self._u(1.6, 2.4, m) * r
            shade = np.where(night[rows], 0.7, 1.0).astype(np.float32)[:, None]
            skin = skin_palette[self._rng.integers(len(skin_palette), size=m)] * shade
            hair = self._u(0.05, 0.5, m)[:, None] * np.array([1.0, 0.75, 0.5], np.float32)
            clothes = self._rng.random((m, 3)).astype(np.float32) * shade
            shoulders = canvas.ellipse(cx, np.full(m, s + 0.2 * r), 2.2 * r, 1.6 * r + (s - cy - r))
            canvas.paint(rows, shoulders, clothes)
            canvas.paint(rows, canvas.ellipse(cx, cy - 0.15 * r, 1.05 * r, 1.15 * r), hair)
            canvas.paint(rows, canvas.ellipse(cx, cy + 0.1 * r, 0.85 * r, 1.0 * r), skin)
            eyes = np.maximum(canvas.ellipse(cx - 0.35 * r, cy, 0.12 * r, 0.12 * r),
                              canvas.ellipse(cx + 0.35 * r, cy, 0.12 * r, 0.12 * r))
            canvas.paint(rows, eyes, np.full((m, 3), 0.1, np.float32), self._u(0.5, 1.0, m))

    def _finish(self, canvas: _Canvas) -> np.ndarray:
        d, n = self.difficulty, len(self._latent.scene)
        image = canvas.image
        gain = 1 + self._rng.uniform(-d.colour_cast, d.colour_cast, (n, 3, 1, 1)).astype(np.float32)
        contrast = self._u(0.75, 1.15, n)[:, None, None, None]
        mean = image.mean(axis=(1, 2, 3), keepdims=True)
        image = (mean + (image - mean) * contrast) * gain
        noise = self._u(0.0, d.noise_sigma, n)[:, None, None, None]
        image += self._rng.standard_normal(image.shape, dtype=np.float32) * noise
        return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _linear_upsampling(source: int, target: int) -> np.ndarray:
    """(target, source) matrix interpolating ``source`` samples linearly onto ``target`` pixels."""
    positions = (np.arange(target) + 0.5) * source / target - 0.5
    return np.stack([np.interp(positions, np.arange(source), row) for row in np.eye(source)], axis=1)


# ------------------------------------------------------------------------------------ generation

def generate_tagging(out_path, num_train: int = 10000, num_val: int = 2000, num_test: int = 10000,
                     seed: int = 0, image_size: int = 32, progress: bool = True, *,
                     difficulty: Difficulty = DEFAULT_DIFFICULTY) -> Path:
    """Generate the image-tagging data set and write it atomically to ``out_path`` (HDF5).

    Train, val and test are independent draws; each split has its own random stream (spawned
    from ``seed``), so the test set does not change when ``num_train`` does. Returns the path.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if int(count) < 1:
            raise ValueError(f"num_{split} must be >= 1, got {count}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    split_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(SPLITS))]
    renderer = TagRenderer(image_size, difficulty)

    tmp_path = out_path.with_suffix(out_path.suffix + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp_path, "w") as file:
            _write_attributes(file, seed, image_size, difficulty)
            for split, rng in zip(SPLITS, split_rngs):
                _write_split(file, split, int(counts[split]), renderer, rng, progress)
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out_path


def _write_attributes(file, seed, image_size, difficulty: Difficulty) -> None:
    file.attrs["task"] = "tagging"
    file.attrs["num_labels"] = len(TAG_NAMES)
    file.attrs["tag_names"] = np.array(TAG_NAMES, dtype=h5py.string_dtype())
    file.attrs["seed"] = int(seed)
    file.attrs["generator"] = (
        f"dstrain.tasks.tagging.data: {len(TAG_NAMES)} tags ({len(SCENES)} scenes, {len(GLOBAL_TAGS)} "
        f"scene-level, {len(TAGGED_OBJECTS)} objects) of {image_size}x{image_size} RGB pictures composed from a "
        f"latent scene and time of day; {difficulty.describe()}")


def _write_split(file, split, count, renderer: TagRenderer, rng, progress) -> None:
    """Sample and render ``count`` images block by block to bound memory."""
    size = renderer.size
    group = file.create_group(split)
    chunk = min(CHUNK_IMAGES, count)
    x = group.create_dataset("x", (count, 3, size, size), dtype=np.uint8, chunks=(chunk, 3, size, size),
                             compression="gzip", compression_opts=GZIP_LEVEL)
    y = group.create_dataset("y", (count, len(TAG_NAMES)), dtype=np.uint8, chunks=(chunk, len(TAG_NAMES)),
                             compression="gzip", compression_opts=GZIP_LEVEL)
    with tqdm(total=count, desc=f"tagging/{split}", unit="image", disable=not progress) as bar:
        for start in range(0, count, BLOCK_IMAGES):
            latent = _sample_latent(min(BLOCK_IMAGES, count - start), rng, renderer.difficulty)
            labels = latent.labels()
            x[start:start + len(labels)] = renderer.render(latent, rng)
            y[start:start + len(labels)] = labels
            bar.update(len(labels))


# ---------------------------------------------------------------------------------------- reader

class TaggingData(SplitReader):
    """One split of a tagging file: metadata on open, rows on demand.

    The contract: ``/{split}/x`` is (N, D) features or (N, C, H, W) images, uint8 or float32;
    ``/{split}/y`` is (N, K) with values in {0, 1}; root attributes ``task = "tagging"`` and
    ``num_labels = K``; ``tag_names`` (K strings) is optional.

    Attributes: ``path``, ``split``, ``num_samples`` (N), ``num_labels`` (K), ``x_shape`` (the
    per-sample shape, (D,) or (C, H, W)), ``tag_names`` (list of K str; "tag0", "tag1", ... when
    the file has none). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, split: str):
        super().__init__(path, split, "tagging")

    def _validate(self, file) -> None:
        split = self.split
        self.num_labels = positive_int_attr(file, self.path, "num_labels")
        self.tag_names = _tag_names(file, self.path, self.num_labels)
        self._x, self._y = _split_datasets(file, self.path, split, self.num_labels)
        self.num_samples = int(self._y.shape[0])
        self.x_shape = tuple(int(n) for n in self._x.shape[1:])
        _check_labels(self._y, self._where("y"))

    def __repr__(self) -> str:
        return (f"TaggingData({str(self.path)!r}, split={self.split!r}, num_samples={self.num_samples}, "
                f"num_labels={self.num_labels}, x_shape={self.x_shape})")



def open_tagging(path, split: str) -> TaggingData:
    """Open one split (``"train"``, ``"val"``, ``"test"``, ...) of a tagging HDF5 file, validated."""
    return TaggingData(path, split)


def _tag_names(file: h5py.File, path: Path, num_labels: int) -> list[str]:
    """The optional root attribute 'tag_names': K strings; "tag0".. when absent."""
    if "tag_names" not in file.attrs:
        return [f"tag{k}" for k in range(num_labels)]
    names = np.asarray(file.attrs["tag_names"])
    if names.ndim != 1 or names.shape[0] != num_labels or names.dtype.kind not in "OSU":
        raise DataError(f"{path}: root attribute 'tag_names' has shape {names.shape} and dtype {names.dtype}; "
                        f"expected {num_labels} strings (one per label)")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names.tolist()]


def _split_datasets(file: h5py.File, path: Path, split: str, num_labels: int):
    """Check /split/x and /split/y exist with compatible shapes and dtypes; return them."""
    x, y = split_group(file, path, split, {"x": "(N, D) features or (N, C, H, W) images",
                                           "y": f"(N, {num_labels}) labels in {{0, 1}}"})
    if x.ndim not in (2, 4):
        raise DataError(f"{path}: dataset '/{split}/x' has shape {x.shape}; expected 2-D (N, D) features "
                        f"or 4-D (N, C, H, W) images")
    if x.dtype not in (np.uint8, np.float32):
        raise DataError(f"{path}: dataset '/{split}/x' has dtype {x.dtype}; expected uint8 or float32")
    if y.ndim != 2:
        raise DataError(f"{path}: dataset '/{split}/y' has shape {y.shape}; expected 2-D (N, {num_labels})")
    if y.shape[1] != num_labels:
        raise DataError(f"{path}: dataset '/{split}/y' has {y.shape[1]} labels per sample (shape {y.shape}); "
                        f"expected num_labels = {num_labels}")
    if y.dtype.kind not in "iubf":
        raise DataError(f"{path}: dataset '/{split}/y' has dtype {y.dtype}; expected integers 0 and 1")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: dataset '/{split}/x' has {x.shape[0]} samples but '/{split}/y' has "
                        f"{y.shape[0]}; expected the same N")
    return x, y


def _check_labels(y: h5py.Dataset, where: str) -> None:
    """Every label must be 0 or 1; checked in blocks of rows (bounded memory for any N)."""
    for start in range(0, y.shape[0], LABEL_CHECK_ROWS):
        block = y[start:start + LABEL_CHECK_ROWS]
        bad = (block != 0) & (block != 1)
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            value = block[row][bad[row]][0]
            shown = value.item() if isinstance(value, np.generic) else value
            tag = int(np.flatnonzero(bad[row])[0])
            raise DataError(f"{where}: label {shown!r} in row {start + row} (tag {tag}) is not 0 or 1; "
                            f"expected binary tags")
