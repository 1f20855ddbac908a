"""Input against compute in a recipe: the share of each training step spent waiting for data.

Run:
    python benchmarks/input_wait.py                        # the main job (recipes/simclr.py, its defaults)
    python benchmarks/input_wait.py --recipe supcon --steps 30
    python benchmarks/input_wait.py -- --precision mixed_bfloat16 --width_multiplier 1

Flags after `--` go to the recipe. The recipe's own `main()` builds its data,
augmenter, trainer and optimizer (so the figures follow its defaults); where it
would train, this script measures instead, on the same compiled trainer:

  1. `fit` on the recipe's views pipeline: median seconds per step (`with input`);
  2. `fit` on one batch of those views kept in memory and repeated: the step
     alone (`compute only`);
  3. the views pipeline alone, iterated on the whole machine: views/s.

It prints the wait share, 1 - compute only / with input (the time a step spends
on input, waiting for it or sharing the cores with it), and the pipeline's view
rate against the step's (issue 13 asks for at least 2x). On a CPU the pipeline
and the step share the cores, so the share counts contention too; on an
accelerator it is the time the device waits for the host.
"""

import argparse
import importlib
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 (recipes/common.py)
from throughput import StepTimer  # noqa: E402


class Measured(Exception):
    """Raised in place of the recipe's training once the figures are in."""

    def __init__(self, figures):
        super().__init__("measured")
        self.figures = figures


def timed_fit(model, dataset, steps, warmup):
    timer = StepTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[timer], shuffle=False)
    return float(np.median(timer.times[warmup:]))


def pipeline_rate(views, batches, warmup=3):
    """Views per second of the pipeline alone; the first `warmup` batches (buffers filling) are not counted."""
    iterator = iter(views)
    for _ in range(warmup):
        batch = next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    seconds = time.perf_counter() - start
    images = batch[0] if isinstance(batch, tuple) else batch
    return batches * images.shape[0] * images.shape[1] / seconds, images.shape


def measurer(steps, warmup):
    def measure(args, model, data, steps_per_epoch, shuffle=True, repeat=True, stream=None):
        views = common.training_views(args, model, data, 0, shuffle, True, stream)
        with_input = timed_fit(model, views, steps, warmup)
        held = views.take(1).cache().repeat()
        compute_only = timed_fit(model, held, steps, warmup)
        rate, shape = pipeline_rate(views, 2 * steps)
        raise Measured(dict(with_input=with_input, compute_only=compute_only, pipeline=rate, shape=shape))

    return measure


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="simclr", choices=["simclr", "supcon", "mocov3"])
    p.add_argument("--steps", type=int, default=20, help="timed steps of each fit, after --warmup")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("recipe_flags", nargs="*", help="flags for the recipe, after `--`")
    args = p.parse_args(argv)
    recipe = importlib.import_module(args.recipe)
    common.fit_views = measurer(args.steps, args.warmup)
    with tempfile.TemporaryDirectory() as model_dir:
        try:
            recipe.main(["--model_dir", model_dir, "--verbose", "0", *args.recipe_flags])
        except Measured as done:
            f = done.figures
        else:
            raise SystemExit(f"recipes/{args.recipe}.py finished without reaching common.fit_views")
    batch, views_per_image = f["shape"][0], f["shape"][1]
    step_views = batch * views_per_image / f["compute_only"]
    print(f"recipes/{args.recipe}.py {' '.join(args.recipe_flags)}".rstrip())
    print(f"  views per step: {batch} x {views_per_image} of {tuple(f['shape'][2:])}")
    print(f"  step with input:   {f['with_input']:.3f} s (median of {args.steps})")
    print(f"  step compute only: {f['compute_only']:.3f} s ({step_views:,.0f} views/s)")
    print(f"  wait share: {1 - f['compute_only'] / f['with_input']:.1%}")
    print(f"  pipeline alone: {f['pipeline']:,.0f} views/s = {f['pipeline'] / step_views:.2f}x the step's view rate")


if __name__ == "__main__":
    main()
