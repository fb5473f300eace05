"""`dstrain show` for segmentation: test images beside their truth, the unary net's prediction
(the trained model's unary scores alone) and the CRF's, as one PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...learning.structured import InferenceOptions, structured_loss
from ...models import Batch


def _colours(num_classes: int) -> np.ndarray:
    import matplotlib

    palette = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20"]
    return np.array([palette(c % palette.N)[:3] for c in range(num_classes)])


def predictions(model, x: np.ndarray, y: np.ndarray, options: InferenceOptions):
    """(unary-only labels, CRF labels), each shaped like y."""
    if options.algorithm == "blend":   # no persistent messages for held-out images
        options = options.but(algorithm="converge")
    batch = Batch(torch.from_numpy(x), y)
    out = []
    with torch.no_grad():
        for families in (model.families[:1], model.families):
            potentials = model.potentials(batch, families)
            result = structured_loss(potentials, y, options)
            out.append(model.decode(batch, potentials, result.unary_beliefs))
    return out


def show(model, x: np.ndarray, y: np.ndarray, options: InferenceOptions, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unary, crf = predictions(model, x, y, options)
    colours = _colours(model.num_classes)

    def paint(labels):
        image = colours[np.maximum(labels, 0)]
        image[labels < 0] = 1.0   # ignore: white
        return image
    fig, axes = plt.subplots(len(x), 4, figsize=(8, 2 * len(x)), squeeze=False)
    for row, (image, truth, u, c) in enumerate(zip(x, y, unary, crf)):
        panels = [np.clip(image[:3].transpose(1, 2, 0), 0, 1), paint(truth), paint(u), paint(c)]
        for axis, panel, title in zip(axes[row], panels, ("image", "truth", "unary only", "CRF")):
            axis.imshow(panel, interpolation="nearest")
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
