"""Representation quality on the real Fashion-MNIST: one command, one table.

Run:
    python benchmarks/fashion_mnist_quality.py                      # every row (~1 hour on 2 cores)
    python benchmarks/fashion_mnist_quality.py --rows simclr --weight_decay_type decoupled   # one ablation
    python benchmarks/fashion_mnist_quality.py --results_md benchmarks/RESULTS.md            # also record it

Rows (`--rows`, comma-separated):
  pixels      raw pixels (the floor every encoder must clear)
  random      the randomly initialized encoder
  simclr      `kc.SimCLR` under the reference protocol below, with one knob per
              flag for ablations against lightly's step
  supervised  cross-entropy on the same encoder, epochs and optimizer (the ceiling)
  recipe_simclr, recipe_mocov3, recipe_supcon, recipe_supervised
              the recipes themselves (`recipes/<name>.py`), run as a user runs
              them, with `--epochs` from `--recipe_epochs` (default: each recipe's own)

Reference protocol (shared/BENCHMARKS.md, lightly's settings): images zero-padded to
32x32 and repeated to 3 channels; ResNet-18 CIFAR stem at width 0.25; 4 epochs at
batch 256; SGD lr 0.12, momentum 0.9, cosine to 0, weight decay 5e-4 (coupled, as
PyTorch's SGD); temperature 0.5; views: random resized crop (0.2-1), horizontal flip,
brightness/contrast jitter 0.4 with p=0.8 (no grayscale, no blur). Every row is scored
the same way: frozen pooled features (before any projection head) of the 10k test
split by weighted kNN (k=200, cosine, temperature 0.1, the 60k train features as the
bank) and a linear probe on standardized features, through
`kc.evaluation.evaluate_frozen`, which also checks that the encoder's weights are
bit-identical before and after. Training rows report their wall time.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import keras_contrastive as kc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
import common  # noqa: E402 (recipes/common.py: the CPU check of --precision auto)

ABLATION_KNOBS = (
    "learning_rate",
    "weight_decay",
    "weight_decay_type",
    "exclude_bias_and_norm",
    "temperature",
    "crop_min",
    "jitter",
    "zero_init_residual",
    "head",
    "per_view_bn",
    "normalize",
    "precision",
    "batch_size",
    "seed",
)
ROWS = [
    "pixels",
    "random",
    "simclr",
    "supervised",
    "recipe_simclr",
    "recipe_mocov3",
    "recipe_supcon",
    "recipe_supervised",
    "recipe_nnclr",
    "recipe_swav",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--rows", default="pixels,random,simclr,supervised,recipe_simclr,recipe_mocov3,recipe_supcon,recipe_supervised"
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="", help="text added to the SimCLR row's name")
    p.add_argument("--results_md", default=None, help="append the table to this markdown file")
    p.add_argument("--recipe_epochs", type=int, default=None, help="--epochs for the recipe rows (default: theirs)")
    p.add_argument(
        "--recipe_args", default="", help="extra flags for every recipe row, e.g. '--precision mixed_bfloat16'"
    )
    # Ablation knobs of the simclr row (defaults: the reference protocol).
    p.add_argument("--learning_rate", type=float, default=0.12)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument(
        "--weight_decay_type",
        default="coupled",
        choices=list(kc.optimizers.WEIGHT_DECAY_TYPES),
        help="coupled: added to the gradient before momentum (PyTorch's SGD); decoupled: Keras' SGD",
    )
    p.add_argument("--exclude_bias_and_norm", action="store_true", help="no weight decay on rank <= 1 weights")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--crop_min", type=float, default=0.2, help="smallest crop area fraction")
    p.add_argument("--jitter", type=float, default=0.5, help="colour jitter strength s (0.5: brightness/contrast 0.4)")
    p.add_argument("--zero_init_residual", action="store_true", help="SimCLR's ResNet init (torchvision's otherwise)")
    p.add_argument(
        "--head",
        default="bn",
        choices=["bn", "v1", "v2"],
        help="bn: Dense(d)-BN-ReLU-Dense(128), kc.heads.batch_norm_projection_head (lightly's "
        "SimCLRProjectionHead without its output BN); v1/v2: SimCLR's heads",
    )
    p.add_argument(
        "--per_view_bn",
        action="store_true",
        help="encode and project each view in its own call, so BatchNorm normalizes each view's batch alone "
        "(lightly's examples) "
        "instead of the 2N views together (SimCLR's reference code)",
    )
    p.add_argument(
        "--normalize",
        action="store_true",
        help="standardize inputs with ImageNet's mean and std before the encoder (lightly's SimCLRTransform default)",
    )
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"])
    return p.parse_args(argv)


def load_data():
    x_train, y_train = kc.data.load_arrays("fashion_mnist", "train", image_size=32, channels=3)
    x_test, y_test = kc.data.load_arrays("fashion_mnist", "test", image_size=32, channels=3)
    return (x_train, y_train), (x_test, y_test)


def encoder(args):
    keras.utils.set_random_seed(args.seed)
    resnet = kc.encoders.ResNet18(
        (32, 32, 3), stem="cifar", width_multiplier=0.25, zero_init_residual=args.zero_init_residual
    )
    if not args.normalize:
        return resnet
    # torchvision's ImageNet statistics, as lightly's transforms apply them.
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    inputs = keras.Input((32, 32, 3))
    normalized = keras.layers.Normalization(mean=mean, variance=std**2)(inputs)
    return keras.Model(inputs, resnet(normalized), name="normalized_resnet18")


def sgd(args, steps):
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    return kc.optimizers.SGD(
        schedule,
        momentum=0.9,
        weight_decay=args.weight_decay,
        weight_decay_type=args.weight_decay_type,
        exclude_bias_and_norm=args.exclude_bias_and_norm,
    )


def pixels_row(args, train, test):
    (x_train, y_train), (x_test, y_test) = train, test
    f_train = x_train.reshape(len(x_train), -1).astype("float32") / 255.0
    f_test = x_test.reshape(len(x_test), -1).astype("float32") / 255.0
    return {
        "knn_accuracy": kc.evaluation.knn_accuracy(f_train, y_train, f_test, y_test, k=200, temperature=0.1, verbose=0),
        "linear_probe_accuracy": kc.evaluation.linear_probe(f_train, y_train, f_test, y_test, verbose=0),
        **kc.evaluation.retrieval_metrics(f_train, y_train, f_test, y_test),
    }


def simclr_row(args, train, test):
    augmenter = kc.augment.SimCLRAugmenter(
        32,
        crop_area=(args.crop_min, 1.0),
        color_jitter_strength=args.jitter,
        grayscale_probability=0.0,
        blur=False,
        seed=args.seed,
    )
    enc = encoder(args)
    head = None
    if args.head == "bn":
        head = kc.heads.batch_norm_projection_head(kc.encoders.feature_dim(enc))
    model = kc.SimCLR(
        enc,
        augmenter,
        temperature=args.temperature,
        head_version=2 if args.head == "v2" else 1,
        projection_head=head,
        concatenate_views=not args.per_view_bn,
    )
    steps = len(train[0]) // args.batch_size
    model.compile(optimizer=sgd(args, args.epochs * steps))
    views = model.views_dataset(
        kc.data.load("fashion_mnist", "train", image_size=32, channels=3),
        args.batch_size,
        shuffle_buffer=60_000,
        seed=args.seed,
        repeat=True,
    )
    start = time.perf_counter()
    model.fit(views, epochs=args.epochs, steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - start
    return {**kc.evaluation.evaluate_frozen(model.encoder, train, test, verbose=0), "seconds": seconds}


def supervised_row(args, train, test):
    enc = encoder(args)
    classifier = keras.Sequential([enc, keras.layers.Dense(10)])
    steps = len(train[0]) // args.batch_size
    classifier.compile(sgd(args, args.epochs * steps), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    classifier.fit(train[0] / 255.0, train[1], batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    seconds = time.perf_counter() - start
    return {**kc.evaluation.evaluate_frozen(enc, train, test, verbose=0), "seconds": seconds}


def recipe_row(args, name):
    """Runs `recipes/<name>.py` in its own process as a user would; its results.json holds the figures."""
    with tempfile.TemporaryDirectory() as model_dir:
        command = [sys.executable, os.path.join(ROOT, "recipes", f"{name}.py"), "--model_dir", model_dir]
        command += ["--no_export", "--verbose", "0", "--seed", str(args.seed)]
        if args.recipe_epochs:
            command += ["--epochs", str(args.recipe_epochs)]
        command += shlex.split(args.recipe_args)
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        with open(os.path.join(model_dir, "results.json")) as f:
            results = json.load(f)
    results["seconds"] = seconds
    results["command"] = "python " + " ".join(["recipes/" + name + ".py", *command[2:]]).replace(model_dir, "<tmp>")
    return results


def row_name(args, row):
    if row == "simclr":
        # Name the knobs that differ from the reference protocol, so every ablation row says what it changed.
        defaults = vars(parse_args([]))
        knobs = [
            f"--{key}" + ("" if value is True else f" {value}")
            for key, value in vars(args).items()
            if key in ABLATION_KNOBS and value != defaults[key]
        ]
        name = f"keras_contrastive SimCLR, reference protocol ({args.epochs} epochs)"
        return name + "".join(f", {text}" for text in [*knobs, args.label] if text)
    return {
        "pixels": "raw pixels",
        "random": "random-init encoder",
        "supervised": f"supervised cross-entropy, same encoder and optimizer ({args.epochs} epochs)",
        "recipe_simclr": "recipes/simclr.py (the README's main job)",
        "recipe_mocov3": "recipes/mocov3.py",
        "recipe_supcon": "recipes/supcon.py (two stages)",
        "recipe_supervised": "recipes/supervised.py (cross-entropy)",
        "recipe_nnclr": "recipes/nnclr.py",
        "recipe_swav": "recipes/swav.py",
    }[row]


def format_line(name, result):
    other = ""
    if "test_accuracy" in result:
        other = f"   classifier {result['test_accuracy']:.2%}"
    took = f"{result['seconds']:.0f} s" if "seconds" in result else "-"
    return (
        f"{name:<72} kNN {result['knn_accuracy']:.2%}   linear probe "
        f"{result.get('linear_probe_accuracy', float('nan')):.2%}   recall@1 {_percent(result, 'recall@1')}   "
        f"mAP@100 {_percent(result, 'map@100')}{other}   wall {took}"
    )


def _percent(result, key):
    """A retrieval figure as a percentage, "-" where the row has none (results recorded before it existed)."""
    return f"{result[key]:.2%}" if key in result else "-"


def cpu_kind():
    """The CPU's bfloat16 hardware, which decides what `--precision auto` trains in (recipes/common.py)."""
    unit = common.bfloat16_hardware()
    return "CPU flags unknown" if unit is None else (f"with {unit}" if unit else "without bfloat16 hardware")


def write_markdown(path, args, results, argv):
    versions = f"TensorFlow {tf.__version__}, Keras {keras.__version__}, Python {platform.python_version()}"
    lines = [
        "",
        f"### `benchmarks/fashion_mnist_quality.py`, {datetime.date.today().isoformat()}",
        "",
        f"Command: `python benchmarks/fashion_mnist_quality.py {' '.join(argv)}`; seed {args.seed}; {versions}; "
        f"{os.cpu_count()} CPU cores, {cpu_kind()}.",
        "",
        "| row | kNN | linear probe | recall@1 | mAP@100 | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results:
        took = f"{result['seconds']:.0f} s" if "seconds" in result else "-"
        probe = result.get("linear_probe_accuracy")
        probe = "-" if probe is None else f"{probe:.2%}"
        retrieval = f"{_percent(result, 'recall@1')} | {_percent(result, 'map@100')}"
        lines.append(f"| {name} | {result['knn_accuracy']:.2%} | {probe} | {retrieval} | {took} |")
    # What each recipe row ran, and what its classifier scored where it has one (recipes/supervised.py).
    notes = []
    for name, result in results:
        if "command" in result:
            extra = f"; its classifier: {result['test_accuracy']:.2%}" if "test_accuracy" in result else ""
            notes.append(f"- {name}: `{result['command']}`{extra}")
    if notes:
        lines += ["", *notes]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"Unknown rows {unknown}; choose from {ROWS}.")
    keras.mixed_precision.set_global_policy(args.precision)
    train, test = load_data()
    results = []
    for row in rows:
        if row == "pixels":
            result = pixels_row(args, train, test)
        elif row == "random":
            result = kc.evaluation.evaluate_frozen(encoder(args), train, test, verbose=0)
        elif row == "simclr":
            result = simclr_row(args, train, test)
        elif row == "supervised":
            result = supervised_row(args, train, test)
        else:
            result = recipe_row(args, row[len("recipe_") :])
        name = row_name(args, row)
        print(format_line(name, result), flush=True)
        results.append((name, result))
    if args.results_md:
        write_markdown(args.results_md, args, results, argv)
    return results


if __name__ == "__main__":
    main()
