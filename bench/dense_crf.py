"""Dense-CRF mean-field, dstrain against pydensecrf2, side by side in one process.

    python bench/dense_crf.py                      # prints the table, writes
                                                   # bench/results/dense_crf.md
    python bench/dense_crf.py --repeats 5 --out -  # quicker, print only

240 x 320 images, 21 labels, the parameters ``dense_crf_marginals`` defaults to (Gaussian sxy 3,
compat 3; bilateral sxy 80, srgb 13, compat 10), 5 iterations.  Two images: a natural-looking one
(coloured discs on a plain background, noise) and uniformly random colours (the lattice's worst
case: most pixels get vertices of their own).  pydensecrf2 and dstrain alternate within each repeat; medians
(and quartiles) of the repeats.  pydensecrf is single-threaded; dstrain runs with 1, then 2
torch intra-op threads, each in a fresh process of this script (``--worker``).

Columns: *per iteration*: (5 iterations - 0 iterations) / 5, the kernels built beforehand;
*build*: pydensecrf's DenseCRF2D + setUnaryEnergy + the two addPairwise calls, dstrain's DenseCRF
construction, cold (its spatial-kernel cache cleared) and warm (the spatial kernel cached, as on
every later call with the same image size); *total*: one complete call, setup and 5 iterations
(pydensecrf) against ``dense_crf_marginals`` (warm).  Before timing, the marginals of both are
compared (MAP agreement, mean absolute difference).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dstrain.inference.dense_crf as dense_crf_module  # noqa: E402
from dstrain.inference.dense_crf import (  # noqa: E402
    DenseCRF, dense_crf_marginals, potts_compatibility)
from report import machine, write_report  # noqa: E402  (bench/report.py)

HEIGHT, WIDTH, LABELS, ITERATIONS = 240, 320, 21, 5
GAUSSIAN, BILATERAL = (3.0, 3.0), (80.0, 13.0, 10.0)


def natural_image(rng):
    """Coloured discs on a plain background with noise, and the (H, W) region labels."""
    image = np.zeros((HEIGHT, WIDTH, 3)) + rng.integers(0, 256, 3)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    labels = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    for label in range(1, 6):
        centre_row, centre_col = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
        radius = rng.integers(HEIGHT // 10, HEIGHT // 3)
        inside = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < radius ** 2
        image[inside] = rng.integers(0, 256, 3)
        labels[inside] = label
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def workloads(rng):
    image, labels = natural_image(rng)
    scores = np.eye(LABELS)[labels].transpose(2, 0, 1) + rng.normal(0, 1, (LABELS, HEIGHT, WIDTH))
    yield "natural (discs + noise)", image, scores.astype(np.float32)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    yield "random colours", image, rng.normal(size=(LABELS, HEIGHT, WIDTH)).astype(np.float32)


def pydensecrf_run(densecrf, scores, image, iterations):
    """(setup seconds, inference seconds, Q (C, H, W))."""
    start = time.perf_counter()
    crf = densecrf.DenseCRF2D(WIDTH, HEIGHT, LABELS)
    crf.setUnaryEnergy(np.ascontiguousarray(-scores.reshape(LABELS, -1)))
    crf.addPairwiseGaussian(sxy=GAUSSIAN[0], compat=GAUSSIAN[1])
    crf.addPairwiseBilateral(sxy=BILATERAL[0], srgb=BILATERAL[1], rgbim=image,
                             compat=BILATERAL[2])
    built = time.perf_counter()
    q = np.array(crf.inference(iterations))
    return built - start, time.perf_counter() - built, q.reshape(LABELS, HEIGHT, WIDTH)


def dstrain_crf(image, iterations):
    return DenseCRF(torch.from_numpy(image)[None], spatial_sxy=GAUSSIAN[0],
                    bilateral_sxy=BILATERAL[0], bilateral_srgb=BILATERAL[1],
                    iterations=iterations, exclude_self=False, channels_last=True)


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(densecrf, image, scores, repeats):
    """Medians and quartiles (ms) of each timing, over interleaved repeats."""
    unary = torch.from_numpy(scores)[None]
    weights = torch.tensor([GAUSSIAN[1], BILATERAL[2]])
    potts = potts_compatibility(LABELS)
    none, five = dstrain_crf(image, 0), dstrain_crf(image, ITERATIONS)
    rows = {key: [] for key in ("pd_iteration", "pd_build", "pd_total", "iteration", "build_cold",
                                "build_warm", "total")}
    for _ in range(repeats + 1):               # the first round warms up, not recorded
        pd_build, pd_none, _ = pydensecrf_run(densecrf, scores, image, 0)
        pd_build_five, pd_five, _ = pydensecrf_run(densecrf, scores, image, ITERATIONS)
        dense_crf_module._spatial_kernel.cache_clear()
        build_cold = seconds(lambda: dstrain_crf(image, ITERATIONS))
        build_warm = seconds(lambda: dstrain_crf(image, ITERATIONS))
        ours_none = seconds(lambda: none.mean_field(unary, weights, potts))
        ours_five = seconds(lambda: five.mean_field(unary, weights, potts))
        total = seconds(lambda: dense_crf_marginals(scores, image, ITERATIONS, GAUSSIAN,
                                                    BILATERAL))
        rows["pd_iteration"].append((pd_five - pd_none) / ITERATIONS)
        rows["pd_build"].append(0.5 * (pd_build + pd_build_five))
        rows["pd_total"].append(pd_build_five + pd_five)
        rows["iteration"].append((ours_five - ours_none) / ITERATIONS)
        rows["build_cold"].append(build_cold)
        rows["build_warm"].append(build_warm)
        rows["total"].append(total)
    return {key: 1e3 * np.percentile(values[1:], [50, 25, 75]) for key, values in rows.items()}


def agreement(densecrf, image, scores):
    _, _, expected = pydensecrf_run(densecrf, scores, image, ITERATIONS)
    got = dense_crf_marginals(scores, image, ITERATIONS, GAUSSIAN, BILATERAL)
    return float((got.argmax(0) == expected.argmax(0)).mean()), float(np.abs(got - expected).mean())


def cell(stats) -> str:
    median, low, high = stats
    return f"{median:.1f} ({low:.1f}-{high:.1f})"


def worker(threads, repeats):
    """Measure every workload with ``threads`` torch threads; one JSON line per workload."""
    import pydensecrf.densecrf as densecrf
    torch.set_num_threads(threads)
    for name, image, scores in workloads(np.random.default_rng(0)):
        agree, difference = agreement(densecrf, image, scores)
        stats = {key: value.tolist() for key, value in
                 measure(densecrf, image, scores, repeats).items()}
        print(json.dumps({"name": name, "agree": agree, "difference": difference,
                          "stats": stats}), flush=True)


def run_worker(threads, repeats) -> list[dict]:
    """One fresh process per thread count, so that its OpenMP pool is made with that many
    threads and no state carries over from the other count's run."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, __file__, "--worker", str(threads),
                           "--repeats", str(repeats)], env=env, capture_output=True, text=True,
                          check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (medians reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch intra-op thread counts to measure dstrain with")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dense_crf.md"),
                        help="markdown file to write, or - for none")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        sys.exit("bench/dense_crf.py compares against pydensecrf2: pip install pydensecrf2")
    if args.worker is not None:
        worker(args.worker, args.repeats)
        return

    rows, checks = [], {}
    load_before = os.getloadavg()
    for threads in args.threads:
        for result in run_worker(threads, args.repeats):
            name, r = result["name"], {k: np.array(v) for k, v in result["stats"].items()}
            checks.setdefault(name, f"| {name} | {100 * result['agree']:.2f} % | "
                                    f"{result['difference']:.2e} |")
            rows.append(
                f"| {name} | {threads} | {cell(r['iteration'])} | {cell(r['pd_iteration'])} | "
                f"{r['pd_iteration'][0] / r['iteration'][0]:.2f}x | {cell(r['build_cold'])} | "
                f"{cell(r['build_warm'])} | {cell(r['pd_build'])} | {cell(r['total'])} | "
                f"{cell(r['pd_total'])} | {r['pd_total'][0] / r['total'][0]:.2f}x |")
            print(rows[-1], flush=True)
    load_after = os.getloadavg()
    command = "python bench/dense_crf.py" + (" " + " ".join(argv if argv is not None
                                                              else sys.argv[1:])).rstrip()
    write_report([
        "# Dense CRF benchmark (`bench/dense_crf.py`)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}; command `{command}`; "
        f"{HEIGHT} x {WIDTH} image, {LABELS} labels, {ITERATIONS} iterations, Gaussian "
        f"sxy {GAUSSIAN[0]:g} compat {GAUSSIAN[1]:g}, bilateral sxy {BILATERAL[0]:g} "
        f"srgb {BILATERAL[1]:g} compat {BILATERAL[2]:g}; medians (quartiles) of {args.repeats} "
        f"interleaved rounds after one warm-up round, each thread count in a fresh process.  "
        f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after: this "
        f"machine is shared, so compare the two columns of a row (measured in the same rounds), "
        f"not rows of different runs.", "",
        "| image | dstrain threads | dstrain ms/iteration | pydensecrf ms/iteration "
        "| iteration: dstrain faster by | dstrain build ms, cold | dstrain build ms, warm "
        "| pydensecrf setup ms | dstrain total ms (warm) | pydensecrf total ms "
        "| total: dstrain faster by |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "Agreement of the marginals with pydensecrf2 (same image, same parameters):", "",
        "| image | MAP labels equal | mean absolute marginal difference |",
        "|---|---|---|",
        *checks.values(), "",
        "*per iteration*: (5 iterations - 0 iterations) / 5, kernels already built.  *build*: "
        "dstrain's `DenseCRF` construction (both lattices, their normalisation); *cold*: the "
        "spatial kernel's cache cleared first; *warm*: the spatial kernel (which depends on the "
        "image size only) cached, as on every later call at this size.  pydensecrf *setup*: "
        "`DenseCRF2D`, `setUnaryEnergy`, `addPairwiseGaussian`, `addPairwiseBilateral`.  "
        "*total*: pydensecrf setup + `inference(5)` against one `dense_crf_marginals` call "
        "(warm).  pydensecrf runs single-threaded in every row; > 1 in the *faster by* columns "
        "means dstrain is faster.  With 2 threads on 2 cores dstrain needs both cores: runs "
        "made while other jobs were busy here had 2-thread medians up to 10x slower and wide "
        "quartiles; 1-thread rows moved far less.", ""], args.out)


if __name__ == "__main__":
    main()
