"""What every recipe shares: flags, data, encoder, optimizer, callbacks, evaluation, export.

Recipes stay stories (data, augmenter, encoder, trainer, callbacks, fit,
evaluation, export, top to bottom); the steps that read the same in every
story live here so that a flag means the same thing in all of them.
"""

import argparse
import contextlib
import json
import os
import shlex
import sys
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ info/warning logs out of the story

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_contrastive as kc  # noqa: E402
from keras_contrastive import inspect as kc_inspect  # noqa: E402


def at_least(minimum, kind=int):
    """An argparse type: a number of `kind` >= `minimum`, so a bad flag is one line of usage, not a traceback."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    return parse


def positive(text):
    """An argparse type: a float > 0 (temperatures, learning rates, widths)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_common_flags(parser, method, epochs=2, batch_size=256, learning_rate=1.0, temperature=0.5):
    """The flags every recipe takes, with this method's defaults."""
    name = f"{method}_fashion_mnist"
    p = parser
    p.add_argument(
        "--dataset", default="fashion_mnist", help="fashion_mnist (local files), a tfds name, or an image folder"
    )
    p.add_argument("--epochs", type=at_least(1), default=epochs)
    p.add_argument("--batch_size", type=at_least(1), default=batch_size, help="global batch size (all replicas)")
    p.add_argument(
        "--steps_per_epoch", type=at_least(1), default=None, help="default: one pass over the training split"
    )
    p.add_argument("--image_size", type=at_least(1), default=32, help="Fashion-MNIST's 28x28 is zero-padded to 32x32")
    p.add_argument(
        "--encoder", default="resnet18", choices=["resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base"]
    )
    p.add_argument("--patch_size", type=at_least(1), default=4, help="ViT patch size (16 for 224x224 images)")
    p.add_argument("--vit_depth", type=at_least(1), default=12, help="ViT blocks (12 in every published size)")
    p.add_argument(
        "--jit_compile",
        action="store_true",
        help="compile the training step with XLA (what a TPU runs: static shapes, no host round trips)",
    )
    p.add_argument("--model_dir", default=f"runs/{name}")
    p.add_argument("--export_dir", default=f"saved_models/{name}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="auto", choices=kc.distribute.STRATEGIES)
    p.add_argument("--tpu", default=None, help="TPU address or 'local' (with --strategy tpu)")
    p.add_argument(
        "--collective_timeout",
        type=float,
        default=None,
        help="multi-worker: seconds a collective may wait for a worker before the run fails (default: forever)",
    )
    p.add_argument(
        "--precision",
        default="float32",
        choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
        help="Keras dtype policy for training (evaluation and export run in float32); mixed_bfloat16 on TPUs "
        "(and CPUs with AMX or AVX-512 BF16), mixed_float16 (loss-scaled) on GPUs; auto: mixed_bfloat16 on a TPU "
        "or, without GPU, on a CPU with AMX or AVX-512 BF16, float32 elsewhere",
    )
    p.add_argument(
        "--channels", type=int, default=3, choices=[0, 1, 3], help="3 repeats grayscale images to RGB; 0 keeps them"
    )
    p.add_argument("--augment", default="grayscale_small", choices=sorted(kc.augment.PRESETS))
    p.add_argument(
        "--augment_with",
        default="keras_contrastive",
        choices=kc.augment.IMPLEMENTATIONS,
        help="the preset built from our batched ops (default) or from keras-cv 0.9 layers "
        "(5-10x slower at 32x32, 2x at 96x96: benchmarks/RESULTS.md)",
    )
    p.add_argument(
        "--crop_min", type=float, default=None, help="smallest crop area fraction (default: the --augment preset's)"
    )
    p.add_argument(
        "--jitter_strength",
        type=float,
        default=None,
        help="colour jitter strength s, SimCLR's (maxima 0.8s brightness, contrast, saturation, 0.2s hue; "
        "default: the --augment preset's)",
    )
    p.add_argument("--max_train_examples", type=at_least(1), default=None, help="use only the first N training images")
    p.add_argument(
        "--shuffle_buffer",
        type=at_least(1),
        default=20_000,
        help="training examples shuffled at a time (encoded files for folders and tfds datasets: about 2 GB for "
        "ImageNet's JPEGs at the default); a constant, so memory does not grow with the dataset",
    )
    p.add_argument(
        "--shard_input",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="each worker (input pipeline) reads, crops and augments only its own share of the training files, "
        "through strategy.distribute_datasets_from_function (for several hosts or a TPU pod that are input-bound); "
        "off: every worker runs the whole pipeline and keeps its part of each global batch, so N workers compute "
        "exactly what one does",
    )
    p.add_argument(
        "--eval_dataset",
        default=None,
        help="where the evaluation split comes from (default: --dataset; a folder has one split, so name a second "
        "folder)",
    )
    p.add_argument(
        "--eval_split",
        default=None,
        help="default: test, or validation for datasets without one and for imagenet2012 (whose test images have no "
        "labels); train for an --eval_dataset folder",
    )
    p.add_argument(
        "--eval_crop_fraction",
        type=positive,
        default=0.875,
        help="folders and tfds datasets: evaluation resizes the central fraction of each image's shorter side to "
        "--image_size (ImageNet's resize 256, crop 224)",
    )
    p.add_argument(
        "--data_service",
        default=None,
        help="grpc://host:port of a tf.data service dispatcher: the views are made on its workers",
    )
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--width_multiplier", type=positive, default=0.25)
    p.add_argument(
        "--zero_init_residual",
        action="store_true",
        help="start residual branches at zero as SimCLR's ResNet does; off here because at 4 epochs on "
        "Fashion-MNIST it measured 2.6 points lower kNN accuracy (benchmarks/RESULTS.md)",
    )
    p.add_argument("--projection_dim", type=at_least(1), default=128)
    p.add_argument("--temperature", type=positive, default=temperature)
    p.add_argument("--optimizer", default="lars", choices=["lars", "sgd", "adamw"])
    p.add_argument("--learning_rate", type=positive, default=learning_rate, help="base rate, scaled by --lr_scaling")
    p.add_argument("--lr_scaling", default="linear", choices=["linear", "sqrt"])
    p.add_argument("--weight_decay", type=at_least(0.0, float), default=1e-6)
    p.add_argument(
        "--weight_decay_type",
        default="auto",
        choices=["auto", *kc.optimizers.WEIGHT_DECAY_TYPES],
        help="coupled: weight_decay * w added to the gradient before momentum (PyTorch's SGD, SimCLR's LARS); "
        "decoupled: w shrunk outside the momentum (Keras' SGD, AdamW). auto: coupled for lars/sgd, decoupled for adamw",
    )
    p.add_argument("--warmup_epochs", type=at_least(0.0, float), default=0.2)
    p.add_argument("--knn_k", type=at_least(1), default=200)
    p.add_argument("--linear_probe_epochs", type=at_least(0), default=50, help="0 skips the linear probe")
    p.add_argument(
        "--linear_probe_solver",
        default="lbfgs",
        choices=list(kc.evaluation.PROBE_SOLVERS),
        help="lbfgs: scikit-learn's LogisticRegression to convergence (the reference protocol); adamw: in batches",
    )
    p.add_argument(
        "--knn_monitor_every",
        type=at_least(0),
        default=1,
        help="epochs between the online kNN accuracy (logged as knn_accuracy; 0: off)",
    )
    p.add_argument(
        "--knn_monitor_size",
        type=at_least(1),
        default=10_000,
        help="the online kNN's bank: the first N training examples; it scores the first N/5 evaluation ones",
    )
    p.add_argument(
        "--no_pictures",
        action="store_true",
        help="skip the pictures written after evaluation (retrieval grid, embedding map, similarity matrix, "
        "first-layer kernels: PNG files under --model_dir/pictures and TensorBoard images)",
    )
    p.add_argument("--no_export", action="store_true")
    p.add_argument("--no_eval", action="store_true", help="skip the kNN / linear-probe evaluation")
    p.add_argument("--verbose", type=int, default=1)
    p.add_argument(
        "--backup_every",
        type=int,
        default=50,
        help="back up every N steps (and each epoch); a killed run loses at most N",
    )
    return p


def add_head_flags(parser, head="bn", per_view_bn=True, choices=("bn", "v1", "v2")):
    """--head and --per_view_bn, for recipes whose trainer takes `projection_head` and `concatenate_views`."""
    help_by_name = {
        "bn": "Dense-BN-ReLU-Dense (kc.heads.batch_norm_projection_head)",
        "v1": "Dense-ReLU-Dense (SimCLR v1, SupCon)",
        "v2": "three Dense layers with BN on each (SimCLR v2)",
    }
    parser.add_argument(
        "--head", default=head, choices=list(choices), help="; ".join(f"{c}: {help_by_name[c]}" for c in choices)
    )
    parser.add_argument(
        "--per_view_bn",
        action=argparse.BooleanOptionalAction,
        default=per_view_bn,
        help="encode and project each view in its own call, so BatchNorm statistics are per view "
        "(lightly's examples) instead of over all views together (SimCLR's and SupCon's code)",
    )
    return parser


def bn_projection_head(args, encoder):
    """The --head bn layer for `encoder`, or None for the trainer's own head."""
    if args.head != "bn":
        return None
    return kc.heads.batch_norm_projection_head(kc.encoders.feature_dim(encoder), args.projection_dim)


def add_queue_flag(parser, mochi=True):
    """`--queue_size` (and `--mochi`), for the contrastive recipes."""
    parser.add_argument(
        "--queue_size",
        type=at_least(0),
        default=0,
        help="keys of earlier steps kept as more negatives (kc.negatives.Queue, MoCo v2 style); 0: the batch only",
    )
    parser.add_argument(
        "--memory_bank",
        type=at_least(0),
        default=0,
        metavar="NEGATIVES",
        help="a memory bank of one key per training example (kc.negatives.MemoryBank, Wu et al.), this many rows "
        "drawn as negatives each step (Wu et al.: 4096); 0: no bank",
    )
    parser.add_argument(
        "--memory_bank_momentum",
        type=float,
        default=0.5,
        help="weight of a bank row's old value when its example comes again (Wu et al. and PIRL: 0.5)",
    )
    if mochi:
        parser.add_argument(
            "--mochi",
            type=at_least(0),
            nargs=3,
            metavar=("N", "S", "S_PRIME"),
            default=None,
            help="hard negative mixing from the queue (kc.negatives.MoCHi): the N hardest keys, s mixes of two, "
            "s' mixes with the anchor; the paper's ImageNet-100 setting is 1024 1024 512",
        )
    return parser


def negatives(args, num_examples, keep_labels=False):
    """The --queue_size queue or the --memory_bank bank (with --mochi's mixing), or None for in-batch negatives
    only. The bank has a row per example of the `num_examples` training examples."""
    mochi = getattr(args, "mochi", None)
    if args.queue_size and args.memory_bank:
        raise SystemExit("--queue_size and --memory_bank are two ways to keep negatives: choose one.")
    if not (args.queue_size or args.memory_bank):
        if mochi:
            raise SystemExit("--mochi mixes keys of a queue or a bank: give --queue_size or --memory_bank too.")
        return None
    if mochi:
        mochi = kc.negatives.MoCHi(N=mochi[0], s=mochi[1], s_prime=mochi[2])
    if args.queue_size:
        return kc.negatives.Queue(args.queue_size, keep_labels=keep_labels, mochi=mochi or None)
    if not 0 <= args.memory_bank_momentum < 1:
        raise SystemExit(f"--memory_bank_momentum must be in [0, 1); got {args.memory_bank_momentum}.")
    # Sharded input numbers example p of pipeline i of n as p * n + i: below num_examples + n - 1, and n is at most
    # the number of replicas.
    rows = num_examples + (tf.distribute.get_strategy().num_replicas_in_sync if args.shard_input else 0)
    return kc.negatives.MemoryBank(
        rows,
        num_negatives=args.memory_bank,
        momentum=args.memory_bank_momentum,
        keep_labels=keep_labels,
        mochi=mochi or None,
        seed=args.seed,
    )


def parse_args(parser, argv=None):
    """Parses the flags; `args.flags` keeps them as given (the export's metadata records them for model cards)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    args.flags = shlex.join(argv)
    return args


def start(args):
    """Strategy first (a multi-worker strategy must exist before any TensorFlow op), then precision and seed."""
    strategy = make_strategy(args)
    args.precision = resolve_precision(args.precision, strategy)  # the resolved one goes into the export's metadata
    keras.mixed_precision.set_global_policy(args.precision)
    keras.utils.set_random_seed(args.seed)
    return strategy


def resolve_precision(precision, strategy, cpuinfo="/proc/cpuinfo"):
    """`--precision auto`: `mixed_bfloat16` where bfloat16 matmuls run in hardware (a TPU; when no GPU is visible,
    a CPU with AMX or with AVX-512 BF16 dot products, `bfloat16_hardware`), `float32` elsewhere; any other value
    is returned as given.

    Measured on this project's CPUs (benchmarks/RESULTS.md): with AMX, bfloat16 trained SimCLR 1.2x faster per step
    to the same accuracy; with AVX-512 BF16 and no AMX, since BatchNorm runs fused in bfloat16 (`kc.layers`), the
    step is 1.9x faster at width 0.25 (0.7x before, when BatchNorm computed op by op in float32 between casts).
    Without either, the CPU emulates bfloat16 and is slower than float32.
    """
    if precision != "auto":
        return precision
    if "TPUStrategy" in type(strategy).__name__:
        return "mixed_bfloat16"
    if tf.config.list_physical_devices("GPU"):
        return "float32"
    return "mixed_bfloat16" if bfloat16_hardware(cpuinfo) else "float32"


def bfloat16_hardware(cpuinfo="/proc/cpuinfo"):
    """The CPU's bfloat16 matmul unit from its flags: "AMX" (`amx_bf16`), "AVX-512 BF16" (`avx512_bf16`), ""
    (neither), or None where `cpuinfo` cannot be read."""
    try:
        with open(cpuinfo) as f:
            flags = set(f.read().split())
    except OSError:
        return None
    return "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else ""


def make_strategy(args):
    """The tf.distribute strategy of --strategy; the global batch must split evenly over its replicas."""
    strategy = kc.distribute.strategy(args.strategy, tpu=args.tpu, collective_timeout=args.collective_timeout)
    replicas = strategy.num_replicas_in_sync
    if args.batch_size % replicas:
        raise SystemExit(
            f"--batch_size {args.batch_size} does not split evenly over {replicas} replicas; "
            f"use a multiple of {replicas}."
        )
    print(f"Strategy: {type(strategy).__name__}, {replicas} replica(s), global batch {args.batch_size}.")
    return strategy


@keras.saving.register_keras_serializable(package="keras_contrastive_recipes")
class Classifier(kc.distribute.MultiWorkerFit, keras.Model):
    """A Functional classifier (`Classifier(inputs, logits)`) whose `fit` also runs multi-worker."""


def augmenter(args, channels=3, crop=None):
    """The `--augment` preset with `--crop_min` / `--jitter_strength` where given, built `--augment_with`.

    `channels`: of the training images (keras-cv's colour layers need to know). `crop`: the per-image crop of
    full-resolution data (`TrainData.crop`); the augmenter then keeps the whole crop it gets.
    """
    overrides = {}
    if crop is not None:
        overrides.update(WHOLE_IMAGE)
    elif args.crop_min is not None:
        overrides["crop_area"] = (args.crop_min, 1.0)
    if args.jitter_strength is not None:
        overrides["color_jitter_strength"] = args.jitter_strength
    return kc.augment.simclr_preset(
        args.augment,
        args.image_size,
        implementation=args.augment_with,
        channels=channels,
        seed=args.seed,
        **overrides,
    )


#: Augmenter arguments that keep the whole image: the crop was drawn per image before (full-resolution data).
WHOLE_IMAGE = {"crop_area": (1.0, 1.0), "crop_aspect_ratio": (1.0, 1.0)}


class TrainData(typing.NamedTuple):
    """The training split as a stream, and what the recipe needs to know about it without reading it whole.

    `dataset` yields `(image, label)` or images alone: uint8 `[H, W, C]` for in-memory sources, the encoded file
    for folders and tfds datasets (`crop` then decodes and crops each one at its own size). `image_shape` is
    what the encoder sees: `(image_size, image_size, channels)`.
    """

    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int | None
    image_shape: tuple
    crop: kc.crops.RandomResizedCrop | None


def train_split(args):
    return "train" if not args.max_train_examples else f"train[:{args.max_train_examples}]"


def full_resolution(name):
    """Whether `name`'s images are cropped one by one at their own size (folders, tfds datasets: SimCLR's random
    resized crop on the decoded image; JPEGs decode only the crop) rather than in batches by the augmenter
    (local in-memory sources such as Fashion-MNIST's files, whose images share one small size)."""
    return name not in kc.data.LOCAL_SOURCES


@contextlib.contextmanager
def data_errors(name, split):
    """Data the user named wrongly (no such folder or tfds name, no images, a file that is not an image)
    ends the run with one line saying so, not a traceback."""
    try:
        yield
    except (FileNotFoundError, ValueError, tf.errors.InvalidArgumentError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise SystemExit(f"error: --dataset {name} (split {split!r}): {message.strip().splitlines()[0]}") from None


def crop_geometry(args):
    """`(area, aspect_ratio)` of the random resized crop: `--crop_min`, else the `--augment` preset's."""
    preset = kc.augment.PRESETS[args.augment]
    area = (args.crop_min, 1.0) if args.crop_min is not None else preset.get("crop_area", kc.crops.DEFAULT_AREA)
    return area, preset.get("crop_aspect_ratio", kc.crops.DEFAULT_ASPECT_RATIO)


def _decoded_channels(dataset):
    """1 or 3: the channels of the first encoded image (alpha dropped), for `--channels 0` (keep)."""
    first = next(iter(dataset.take(1)))
    image = first[0] if isinstance(first, tuple) else first
    return {1: 1, 2: 1, 3: 3, 4: 3}[int(tf.io.decode_image(image, expand_animations=False).shape[-1])]


def _training_split(args, split, subset=None, input_context=None):
    """`(dataset, channels, crop)` of the training split (this input pipeline's shard under `input_context`)."""
    if full_resolution(args.dataset):
        dataset = kc.data.load(args.dataset, split, subset=subset, decode=False, input_context=input_context)
        channels = args.channels or _decoded_channels(dataset)
        area, aspect_ratio = crop_geometry(args)
        crop = kc.crops.RandomResizedCrop(args.image_size, area=area, aspect_ratio=aspect_ratio, channels=channels)
        return dataset, channels, crop
    dataset = kc.data.load(
        args.dataset,
        split,
        image_size=args.image_size,
        channels=args.channels or None,
        subset=subset,
        input_context=input_context,
    )
    spec = dataset.element_spec
    return dataset, (spec[0] if isinstance(spec, tuple) else spec).shape[-1], None


def train_data(args, subset=None):
    """The training split, streamed (never held in memory): see `TrainData`.

    `subset`: example ids or a file of them (`kc.data.load`'s `subset`). Also checks that the evaluation split
    can be named (`eval_splits`), so that a run does not fail after training.
    """
    eval_splits(args)
    split = train_split(args)
    with data_errors(args.dataset, split):
        dataset, channels, crop = _training_split(args, split, subset)
        num_classes = kc.data.num_classes(args.dataset) if isinstance(dataset.element_spec, tuple) else None
        num_examples = kc.data.num_examples(dataset)
    return TrainData(dataset, num_examples, num_classes, (args.image_size, args.image_size, channels), crop)


def train_labels(args):
    """Every label of the training split as int32 numpy `[N]` (no image decoded), or None without labels."""
    split = train_split(args)
    with data_errors(args.dataset, split):
        return kc.data.load_labels(args.dataset, split)


#: tfds datasets evaluated on `validation` although they have a `test` split: ImageNet's test images carry no
#: labels (-1 in tfds), so every ImageNet paper reports the validation split.
VALIDATION_EVALUATED = ("imagenet2012", "imagenet2012_subset", "imagenet2012_real", "imagenet2012_multilabel")


def eval_splits(args):
    """The evaluation splits to try in order; a folder as --dataset without --eval_dataset ends the run here
    (recipes call this before training, so the run does not fail after it)."""
    name = args.eval_dataset or args.dataset
    if args.eval_split:
        return [args.eval_split]
    if name in kc.data.LOCAL_SOURCES:
        return ["test"]
    if tf.io.gfile.isdir(name):
        if args.eval_dataset is None and not args.no_eval:
            raise SystemExit(
                f"error: --dataset {name} is a folder, which has one split (train): name a folder of evaluation "
                "images with --eval_dataset, or pass --no_eval."
            )
        return ["train"]
    base = name.split(":")[0].split("/")[0]
    if base in VALIDATION_EVALUATED:
        return ["validation"]
    return ["test", "validation"]


def eval_data(args, bank=False, quiet=False):
    """`(image, label)` pairs for evaluation at the training size, streamed: the test split of
    `--eval_dataset` (default `--dataset`), or with `bank=True` the training split (the kNN bank and the probe's
    training set). Folders and tfds datasets are resized and center-cropped (`--eval_crop_fraction`); in-memory
    sources padded or resized as for training."""
    name = args.dataset if bank else (args.eval_dataset or args.dataset)
    kwargs = dict(image_size=args.image_size, channels=args.channels or None)
    if full_resolution(name):
        kwargs["crop_fraction"] = args.eval_crop_fraction
    candidates = [train_split(args)] if bank else eval_splits(args)
    for i, split in enumerate(candidates):
        try:
            with data_errors(name, split):
                dataset = kc.data.load(name, split, **kwargs)
        except SystemExit:
            if i == len(candidates) - 1:
                raise
            continue
        if not bank and not quiet:
            print(f"Evaluation split: {name} {split}.")
        return dataset


def build_encoder(args, image_shape):
    if args.encoder.startswith("vit"):
        build = {"vit_tiny": kc.encoders.ViTTiny, "vit_small": kc.encoders.ViTSmall, "vit_base": kc.encoders.ViTBase}
        return build[args.encoder](tuple(image_shape), patch_size=args.patch_size, depth=args.vit_depth)
    build = {"resnet18": kc.encoders.ResNet18, "resnet50": kc.encoders.ResNet50}[args.encoder]
    return build(
        image_shape, stem=args.stem, width_multiplier=args.width_multiplier, zero_init_residual=args.zero_init_residual
    )


def schedule_and_optimizer(args, steps_per_epoch, exclude_names=()):
    """Learning rate scaled by the global batch, linear warmup + cosine; LARS or SGD."""
    total_steps = steps_per_epoch * args.epochs
    peak = kc.optimizers.scale_learning_rate(args.learning_rate, args.batch_size, args.lr_scaling)
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total_steps - 1)
    schedule = kc.optimizers.warmup_cosine(peak, total_steps, warmup)
    decay_type = args.weight_decay_type
    if decay_type == "auto":
        decay_type = "decoupled" if args.optimizer == "adamw" else "coupled"
    if args.optimizer == "lars":
        if decay_type != "coupled":
            raise SystemExit(
                "--optimizer lars decays coupled (inside the trust ratio); use --weight_decay_type coupled."
            )
        return kc.optimizers.LARS(
            schedule, momentum=0.9, weight_decay=args.weight_decay, exclude_names=list(exclude_names)
        )
    if args.optimizer == "adamw":
        if decay_type != "decoupled":
            raise SystemExit("--optimizer adamw decays decoupled; use --optimizer sgd for coupled decay.")
        return keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
    return kc.optimizers.SGD(schedule, momentum=0.9, weight_decay=args.weight_decay, weight_decay_type=decay_type)


def backup(args):
    """The run's backups: a killed run started again with the same command resumes from the last one.

    Read `.resume_step` before building the training input pipeline, so that
    the resumed run continues with the batches the killed one would have seen.
    """
    return kc.callbacks.BackupAndRestore(os.path.join(args.model_dir, "backup"), save_freq=args.backup_every)


def callbacks(args, sample_views=None, backup_callback=None, encoder=None):
    """Backup to resume a killed run, NaN and collapse alarms; on the chief also the online kNN accuracy of
    `encoder` (default: the trainer's), TensorBoard (+ views) and a checkpoint per epoch."""
    result = [
        kc.callbacks.LearningRateLogger(),
        backup_callback or backup(args),
        # Raise on a NaN loss rather than stop gracefully, which would end the
        # run normally and make the backup callback delete the last good backup.
        kc.callbacks.TerminateOnNaN(
            hint=f"With --learning_rate {args.learning_rate} (scaled to the batch by --lr_scaling {args.lr_scaling}): "
            "lower --learning_rate, or raise --warmup_epochs; delete the run's backup directory under "
            "--model_dir to start again rather than resume."
        ),
        # Warns when the embeddings collapse (kc.monitor's metrics, which every trainer logs).
        kc.callbacks.CollapseMonitor(),
    ]
    if not kc.distribute.is_chief():
        return result  # other workers of a multi-worker run write nothing
    os.makedirs(os.path.join(args.model_dir, "checkpoints"), exist_ok=True)
    log_dir = os.path.join(args.model_dir, "logs")
    result.insert(1, kc.callbacks.TensorBoard(log_dir, update_freq=20))
    result.append(
        keras.callbacks.ModelCheckpoint(os.path.join(args.model_dir, "checkpoints", "epoch_{epoch:03d}.keras"))
    )
    if sample_views is not None:
        png = os.path.join(args.model_dir, "views.png")
        result.insert(2, kc.callbacks.ViewPairsImage(sample_views, log_dir, png_path=png))
    monitor = knn_monitor(args, encoder)
    if monitor is not None:
        result.insert(0, monitor)  # before TensorBoard, which then logs its figure
    return result


def knn_monitor(args, encoder=None):
    """The online kNN accuracy of `encoder` (`--knn_monitor_every`), or None when off or without labels."""
    if not args.knn_monitor_every or args.no_eval:
        return None
    bank, test = eval_data(args, bank=True, quiet=True), eval_data(args, quiet=True)
    if not isinstance(bank.element_spec, tuple) or not isinstance(test.element_spec, tuple):
        return None
    size = args.knn_monitor_size
    return kc.callbacks.KNNMonitor(
        bank.take(size), test.take(max(1, size // 5)), every=args.knn_monitor_every, k=args.knn_k, encoder=encoder
    )


def first_views(views_dataset):
    sample = next(iter(views_dataset))
    sample = sample[0] if isinstance(sample, tuple) else sample
    return sample["views"] if isinstance(sample, dict) else sample  # without a memory bank's example indices


def fit(args, model, views, steps_per_epoch, backup_callback=None, sample_views=None):
    """`model.fit` on a repeated views dataset with the recipes' callbacks (`sample_views` shown in TensorBoard).

    `sample_views` is a separate dataset of the same views: reading a batch
    from `views` itself would advance its shuffle state (see
    `kc.data.contrastive_views`' `start_batch`).
    """
    history = model.fit(
        views,
        epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks(args, None if sample_views is None else first_views(sample_views), backup_callback),
        verbose=args.verbose,
        shuffle=False,
    )
    float32_after_training(args, model)
    return history


def float32_after_training(args, model):
    """After a `--precision mixed_*` run, `model` computes in float32: evaluation and export see the trained
    float32 weights without bfloat16/float16 rounding, and the export is a float32 graph that any CPU serves."""
    if args.precision != "float32":
        kc.layers.set_compute_dtype(model, "float32")
        keras.mixed_precision.set_global_policy("float32")
    return model


def fit_views(args, model, data, steps_per_epoch, shuffle=True, repeat=True, stream=None):
    """Trains a contrastive trainer on augmented views of `data` (`TrainData`), resuming a killed run.

    The views pipeline starts at the step of the last backup, so that a run
    started again with the same command continues with the batches the
    killed one would have seen next; TensorBoard's sample views come from a
    pipeline of their own (see `fit`). `stream`: a function applied to the
    training dataset first (e.g. a class-balanced stream of it). With
    `--shard_input`, each input pipeline (worker) builds its views from its
    own shard (`sharded_views`).
    """
    stream = stream or (lambda dataset: dataset)
    backup_callback = backup(args)
    views = training_views(args, model, data, backup_callback.resume_step, shuffle, repeat, stream)
    samples = model.views_dataset(stream(data.dataset), 8, seed=args.seed, crop=data.crop)
    return fit(args, model, views, steps_per_epoch, backup_callback, sample_views=samples)


def training_views(args, model, data, resume_step=0, shuffle=True, repeat=True, stream=None):
    """The recipe's training input: batches of augmented views of `data` from batch `resume_step` on, through
    `model.views_dataset` (sharded per worker with `--shard_input`, `--data_service` where given)."""
    stream = stream or (lambda dataset: dataset)
    options = dict(
        shuffle_buffer=min(data.num_examples, args.shuffle_buffer) if shuffle else None,
        seed=args.seed,
        repeat=repeat,
        crop=data.crop,
    )
    if args.shard_input:
        return sharded_views(args, model.distribute_strategy, model.views_dataset, stream, resume_step, **options)
    return model.views_dataset(
        stream(data.dataset),
        args.batch_size,
        start_batch=resume_step,
        data_service=args.data_service,
        **options,
    )


def sharded_views(args, strategy, views_dataset, stream, resume_step, **options):
    """A distributed dataset in which every input pipeline (worker, TPU host) reads, crops and augments only its
    own shard of the training split: `strategy.distribute_datasets_from_function` with the `InputContext` it
    gives each pipeline, TensorFlow's own per-worker input. `views_dataset(dataset, batch_size, **options)`
    makes the views (a trainer's `views_dataset`); each pipeline batches per replica and starts `resume_step`
    steps in (its replicas' batches of each step)."""
    if args.data_service:
        raise SystemExit("--shard_input and --data_service both split the input: choose one.")
    stream = stream or (lambda dataset: dataset)

    def pipeline(input_context):
        dataset, _, _ = _training_split(args, train_split(args), input_context=input_context)
        replicas_here = input_context.num_replicas_in_sync // input_context.num_input_pipelines
        return views_dataset(
            stream(dataset),
            args.batch_size,
            input_context=input_context,
            start_batch=resume_step * replicas_here,
            **options,
        )

    return strategy.distribute_datasets_from_function(pipeline)


def evaluate_frozen(args, encoder, labelled=True):
    """Weighted kNN and linear-probe accuracy of a frozen encoder on the evaluation split (weights checked
    unchanged), both splits streamed through the encoder in batches (`eval_data`)."""
    if not labelled or args.no_eval or not kc.distribute.is_chief():
        return {}
    bank, test = eval_data(args, bank=True), eval_data(args)
    if not isinstance(bank.element_spec, tuple) or not isinstance(test.element_spec, tuple):
        print("No labels to evaluate with: kNN and the linear probe skipped.")
        return {}
    print("Extracting features for the kNN bank and the test split...")
    results = kc.evaluation.evaluate_frozen(
        encoder,
        bank,
        test,
        k=args.knn_k,
        probe_epochs=args.linear_probe_epochs,
        solver=args.linear_probe_solver,
        verbose=args.verbose,
    )
    print(f"kNN accuracy (k={args.knn_k}, cosine, temperature 0.1): {results['knn_accuracy']:.4f}")
    if "linear_probe_accuracy" in results:
        print(f"Linear probe accuracy: {results['linear_probe_accuracy']:.4f}")
    retrieval = "  ".join(
        f"{name} {value:.4f}" for name, value in results.items() if name.startswith(("recall@", "map@"))
    )
    print(f"Retrieval of the test split in the bank (cosine): {retrieval}")
    return results


def pictures(args, model, queries=8, neighbours=8, mapped=1000):
    """What the encoder learned, as pictures (`kc.inspect.pictures`, the same as `python -m
    keras_contrastive.inspect` draws), after evaluation on the chief.

    Written as PNG files under `--model_dir/pictures/` and as TensorBoard images
    (`logs/pictures`): a few test images' two augmented views, their nearest
    neighbours in the bank (other classes framed red), a 2-D map of `mapped`
    test embeddings by label, the cosine similarities of the views' embeddings
    (a trainer's projections; an image's two views on the off-diagonals when
    training works), and a ResNet's first-layer kernels and feature maps or a
    ViT's class-token attention maps. The same `mapped` test embeddings go to
    TensorBoard's embedding projector (`logs/projector`, with a sprite of the
    images). Returns `{name: png path}`.
    """
    if args.no_pictures or args.no_eval or not kc.distribute.is_chief():
        return {}
    encoder = getattr(model, "encoder", model)
    bank = eval_data(args, bank=True, quiet=True).take(args.knn_monitor_size)
    test = eval_data(args, quiet=True).take(mapped)
    if not isinstance(bank.element_spec, tuple):
        return {}
    bank_images, bank_labels = (np.concatenate(a) for a in zip(*bank.batch(1024).as_numpy_iterator()))
    test_images, test_labels = (np.concatenate(a) for a in zip(*test.batch(1024).as_numpy_iterator()))
    bank_features = kc.evaluation.extract_features(encoder, bank_images, verbose=0)
    test_features = kc.evaluation.extract_features(encoder, test_images, verbose=0)
    indices, _ = kc.evaluation.nearest_neighbours(bank_features, test_features[:queries], neighbours)
    views = embed_views = None
    if getattr(model, "augmenter", None) is not None:
        batch = test_images[:32]  # however few the evaluation images are
        views = first_views(model.views_dataset(tf.data.Dataset.from_tensor_slices(batch), len(batch), seed=args.seed))
        views = np.asarray(views[:, :2], "float32")
        if hasattr(model, "projection_head"):
            embed_views = lambda x: model.project([encoder(x, training=False)], training=False)  # noqa: E731
    drawn = kc_inspect.pictures(
        encoder,
        (bank_images, bank_labels),
        (test_images, test_labels),
        indices,
        test_features,
        views,
        embed_views,
        queries=queries,
        neighbours=neighbours,
        mapped=mapped,
        seed=args.seed,
    )
    logs = os.path.join(args.model_dir, "logs")
    paths = kc_inspect.save_pictures(drawn, os.path.join(args.model_dir, "pictures"), os.path.join(logs, "pictures"))
    kc.pictures.write_projector(os.path.join(logs, "projector"), test_features, test_labels, test_images)
    print(f"Pictures: {', '.join(paths.values())}; embedding projector: tensorboard --logdir {logs}")
    return paths


def export_and_save_results(args, model, method, recipe, results):
    """Exports the encoder (no projection head) unless --no_export; writes results.json (on the chief only)."""
    if not kc.distribute.is_chief():
        return results
    if not args.no_export:
        metadata = {"method": method, "recipe": recipe, "args": vars(args), "evaluation": results}
        results["export_path"] = kc.export.export_encoder(model, args.export_dir, metadata=metadata)
        print(f"Exported the encoder to {results['export_path']}")
    os.makedirs(args.model_dir, exist_ok=True)
    with open(os.path.join(args.model_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
