"""Issue 13's one benchmark command: the training step of every method against Keras written by hand and PyTorch.

    python benchmarks/step_speed.py                                   # everything (width 1.0 takes ~1 hour)
    python benchmarks/step_speed.py --widths 0.25 --runs kc_simclr keras_io torch
    python benchmarks/step_speed.py --widths 0.25 --rounds 3 --runs kc_simclr torch torch_per_view   # paired rounds

One process per framework and configuration (so that no run inherits another's threads, caches or graph), one
after the other, on the same network (ResNet-18, CIFAR stem, 32x32x3, batch 256, two views, SGD momentum):

* `kc_simclr`, `kc_supcon`, `kc_mocov3`: our trainers through `model.fit` on pre-made views
  (benchmarks/throughput.py's `bench_kc`); `kc_simclr_per_view`: SimCLR with `concatenate_views=False` (one
  encoder call per view, BatchNorm statistics per view: the main job's form, and `torch_per_view`'s);
  `kc_mocov3_vit_tiny`: MoCo v3 on ViT-Tiny, patch 4 (width-free);
* `keras_io`: the same ResNet-18 with Keras' own BatchNormalization, trained the keras-io way (GradientTape,
  a hand-written NT-Xent, `tf.function`; `bench_reference`);
* `torch`: the same network and step in PyTorch with lightly's NTXentLoss (benchmarks/torch_step.py, channels
  last, both views in one call as our trainers do), in the virtualenv that `benchmarks/lightly_reference.py
  --setup` builds; this command runs that setup when the venv is missing, and reports the run as skipped when it
  cannot install; `torch_per_view`: the same with one call per view, as lightly's examples do (PyTorch's best of
  the two is the one to beat).

Each prints images/s (median, min, max over --steps steps after 2 warm-up steps; one step counts its 256 images),
achieved GFLOP/s from a counted FLOP figure (convolutions, dense layers and attention matmuls of every branch the
step runs: forward + backward = 3x the forward for trained branches, 1x for MoCo's momentum branch; both views),
the share of this machine's measured peak in that precision (the fastest of the step's 3x3 convolution shapes at
width 1.0, forward, batch 256, in TensorFlow: the `peak` worker), and the ratios to PyTorch and to the keras-io
step. Figures drift between runs on a shared machine: the ratios of one sitting are what count. With --rounds N the
list runs N times (every other round backwards) and each ratio is also given as the median over rounds of the ratio
within a round, so that the machine's drift over a sitting weighs on both sides of every ratio alike.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_PYTHON = "/tmp/lightly_venv/bin/python"
BATCH, SIZE = 256, 32
KC_RUNS = ("kc_simclr", "kc_simclr_per_view", "kc_supcon", "kc_mocov3", "kc_mocov3_vit_tiny")
RUNS = KC_RUNS + ("keras_io", "torch", "torch_per_view")


# --------------------------------------------------------------------------
# FLOPs, counted from the Keras models' layers (the same rule as torch_step.py).


def forward_flops(model):
    """2 x multiply-adds of one example through `model`'s Conv2D, Dense and MultiHeadAttention layers."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape  # (batch, h, w, filters)
            kh, kw = layer.kernel_size
            total += 2 * out[1] * out[2] * out[3] * kh * kw * layer.kernel.shape[2]
        elif isinstance(layer, keras.layers.Dense):  # on [batch, ..., features]: once per token
            rows = int(np.prod(layer.input.shape[1:-1]))
            total += 2 * rows * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, keras.layers.MultiHeadAttention):
            query_shape = layer._build_shapes_dict["query_shape"]  # (batch, tokens, dim), recorded when built
            tokens, dim = query_shape[1], query_shape[2]
            inner = layer._num_heads * layer._key_dim
            total += 2 * tokens * dim * inner * 4  # query, key, value and output projections
            total += 2 * 2 * tokens * tokens * inner  # scores and the weighted sum
    return total


def trainer_flops_per_image(model, method):
    """Forward + backward FLOPs of one image's two views through the branches `model`'s step runs."""
    encoder = forward_flops(model.encoder)
    if method.startswith("kc_mocov3"):  # + the momentum encoder and projector: forward only
        projector = _head_flops(model.projector)
        return 2 * (3 * (encoder + projector + _head_flops(model.predictor)) + encoder + projector)
    return 2 * 3 * (encoder + _head_flops(model.projection_head))


def _head_flops(head):
    """A head maps [batch, dim] through Dense layers: 2 x in x out each."""
    import keras

    if head is None:
        return 0
    return sum(
        2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        for layer in head._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Dense)
    )


# --------------------------------------------------------------------------
# Workers: one configuration each, one JSON line out.


def keras_worker(run, width, precision, steps):
    sys.path.insert(0, HERE)
    import keras
    import throughput

    if run == "keras_io":
        seconds = throughput.bench_reference(width, steps + 2, precision)
        encoder = throughput.resnet18(width, batch_norm="keras")
        dim = encoder.output_shape[-1]
        flops = 2 * 3 * (forward_flops(encoder) + 2 * dim * dim + 2 * dim * 128)
    else:
        method = run[len("kc_") :]
        seconds = throughput.bench_kc(width, steps + 2, precision, method)
        model = throughput.build_trainer(method, width)  # built again, only to count its layers
        flops = trainer_flops_per_image(model, run)
    keras.mixed_precision.set_global_policy("float32")
    return {"run": run, "seconds": seconds, "flops_per_image": int(flops)}


# The 3x3 convolutions of the width-1.0 step (batch 256 of one view): (height = width, channels).
PEAK_SHAPES = ((32, 64), (32, 128), (16, 128), (8, 256), (4, 512))


def peak_worker(precision):
    """Best GFLOP/s of TensorFlow's forward 3x3 convolution over PEAK_SHAPES, median of 10 calls each."""
    import tensorflow as tf

    dtype = "bfloat16" if precision == "mixed_bfloat16" else "float32"
    conv = tf.function(lambda a, k: tf.nn.conv2d(a, k, 1, "SAME"))
    best = {}
    for size, channels in PEAK_SHAPES:
        x = tf.cast(tf.random.normal((BATCH, size, size, channels)), dtype)
        kernel = tf.cast(tf.random.normal((3, 3, channels, channels)) * 0.05, dtype)
        conv(x, kernel).numpy()
        times = []
        for _ in range(10):
            started = time.perf_counter()
            conv(x, kernel).numpy()
            times.append(time.perf_counter() - started)
        best[f"{size}x{size}x{channels}"] = 2 * BATCH * size * size * channels * channels * 9 / np.median(times) / 1e9
    shape = max(best, key=best.get)
    return {"run": "peak", "gflops": best[shape], "shape": shape, "by_shape": best}


def worker(args):
    if args.worker == "peak":
        result = peak_worker(args.precision[0])
    else:
        result = keras_worker(args.worker, args.widths[0], args.precision[0], args.steps)
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------
# The driver.


def launch(command):
    """Runs `command`, returns the JSON of its last RESULT line (or None) and its tail on failure."""
    # This checkout's package first, whatever an editable install points to (a clean-clone CI re-points it).
    root = os.path.dirname(HERE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :]), None
        if line.startswith("{"):
            return json.loads(line), None
    return None, (proc.stdout + proc.stderr)[-2000:]


def torch_python():
    """The lightly venv's python, set up on first use; None when it cannot be installed."""
    if not os.path.exists(VENV_PYTHON):
        print(
            "Setting up PyTorch + lightly in their own venv (benchmarks/lightly_reference.py --setup) ...", flush=True
        )
        subprocess.run([sys.executable, os.path.join(HERE, "lightly_reference.py"), "--setup"], check=False)
    return VENV_PYTHON if os.path.exists(VENV_PYTHON) else None


def measure(run, width, precision, steps):
    if run.startswith("torch"):
        python = torch_python()
        if python is None:
            return None, "skipped: PyTorch + lightly could not be installed (see the setup's message above)"
        result, failure = launch(
            [python, os.path.join(HERE, "torch_step.py"), "--json", "--width", str(width), "--steps", str(steps)]
            + ["--warmup", "2", "--precision", "bfloat16" if precision == "mixed_bfloat16" else "float32"]
            + (["--per_view_calls"] if run == "torch_per_view" else [])
        )
        if result is not None and "skipped" in result:
            return None, result["skipped"]
        if result is not None:
            rates = [result["images_per_s_median"], result["images_per_s_min"], result["images_per_s_max"]]
            return {"rates": rates, "flops_per_image": result["flops_per_image"]}, None
        return None, failure
    command = [sys.executable, __file__, "--worker", run, "--widths", str(width), "--precision", precision]
    result, failure = launch(command + ["--steps", str(steps)])
    if result is None:
        return None, failure
    rates = BATCH / np.asarray(result["seconds"])
    return {"rates": [float(np.median(rates)), float(rates.min()), float(rates.max())], **result}, None


# Our steps on the same ResNet-18 as PyTorch's and keras-io's (ViT-Tiny is another network: no ratio).
SAME_NETWORK = ("kc_simclr", "kc_simclr_per_view", "kc_supcon", "kc_mocov3")


def print_ratios(width, rows):
    """Each of our runs against each reference run of the same round."""
    for base in ("torch", "torch_per_view", "keras_io"):
        if base in rows:
            ratios = "  ".join(
                f"{run} {rows[run]['rates'][0] / rows[base]['rates'][0]:.2f}x" for run in rows if run in SAME_NETWORK
            )
            print(f"  width {width:<4} ratio to {base:<14} {ratios}", flush=True)


def round_ratios(by_round, run, bases):
    """Per round: `run`'s median images/s over the best of `bases` in that round (rounds missing either: none)."""
    ratios = []
    for rows in by_round:
        best = max((rows[b]["rates"][0] for b in bases if b in rows), default=None)
        if run in rows and best:
            ratios.append(rows[run]["rates"][0] / best)
    return ratios


def print_round_summary(width, precision, by_round):
    """The ratios paired within each round, summarised over rounds: median (min-max)."""
    print(f"  width {width} {precision}, over {len(by_round)} rounds (median of per-round ratios, min-max):")
    for run in SAME_NETWORK:
        parts = []
        for name, bases in (("PyTorch's best", ("torch", "torch_per_view")), ("keras-io", ("keras_io",))):
            ratios = round_ratios(by_round, run, bases)
            if ratios:
                parts.append(f"/ {name} {np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        if parts:
            print(f"    {run:<20} " + "  ".join(parts), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (after 2 warm-up steps)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the list this many times, every other round backwards, and report each ratio's median over rounds",
    )
    parser.add_argument("--json_out", help="also write every figure to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    print(f"Training step, ResNet-18 CIFAR stem, {SIZE}x{SIZE}x3, batch {BATCH}, 2 views; {args.steps} steps")
    everything = []
    for precision in args.precision:
        peak, failure = launch([sys.executable, __file__, "--worker", "peak", "--precision", precision])
        peak_gflops = peak["gflops"] if peak else float("nan")
        shapes = ", ".join(f"{k} {v:,.0f}" for k, v in peak["by_shape"].items()) if peak else failure
        print(
            f"\n{precision}: measured peak {peak_gflops:,.0f} GFLOP/s (3x3 conv forward, batch 256: {shapes})",
            flush=True,
        )
        for width in args.widths:
            runs = [r for r in args.runs if r != "kc_mocov3_vit_tiny" or width == args.widths[0]]  # ViT: no width
            by_round = []
            for round_ in range(args.rounds):
                # Odd rounds run the list backwards, so that a drift of the machine's speed within the sitting
                # favours no run on average.
                order = runs if round_ % 2 == 0 else runs[::-1]
                rows = {}
                for run in order:
                    result, failure = measure(run, width, precision, args.steps)
                    label = f"  width {width:<4} {run:<20}" + (f" round {round_ + 1}" if args.rounds > 1 else "")
                    if result is None:
                        print(f"{label} {failure.strip().splitlines()[-1]}", flush=True)
                        continue
                    rows[run] = result
                    median, low, high = result["rates"]
                    gflops = result["flops_per_image"] * median / 1e9
                    print(
                        f"{label} {median:7.1f} images/s (min {low:.1f}, max {high:.1f})  "
                        f"{result['flops_per_image'] / 1e9:.3f} GFLOP/image  {gflops:6.1f} GFLOP/s  "
                        f"{100 * gflops / peak_gflops:4.1f}% of peak",
                        flush=True,
                    )
                    everything.append({"precision": precision, "width": width, "run": run, "round": round_, **result})
                print_ratios(width, rows)
                by_round.append(rows)
            if args.rounds > 1:
                print_round_summary(width, precision, by_round)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
