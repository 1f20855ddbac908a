"""Semi-supervised fine-tuning: a pretrained encoder against the same network from scratch.

Command (after `python recipes/simclr.py` has exported an encoder):

    python recipes/finetune.py --encoder_path saved_models/simclr_fashion_mnist

The SimCLR paper's protocol (section 6, appendix B.5): take a class-balanced
labelled subset (1%, 10% or 100% of the training labels), fine-tune the
pretrained encoder with a linear classification head on it, and compare with the
same architecture trained from scratch on the same labels and budget. The encoder
comes from any trainer, as an export (SavedModel: its BN then runs in inference
mode) or a `.keras` file (an encoder or a trainer). Prints one line per fraction.

Expected on 2 CPU cores with the defaults (1% and 10%): a few minutes; figures in
benchmarks/RESULTS.md.
"""

import argparse
import json
import os

import common
import keras
import numpy as np
import tensorflow as tf

import keras_contrastive as kc


def scratch_encoder(args, metadata):
    """The export's architecture with fresh weights (from the recipe args in its metadata)."""
    trained = metadata.get("args", {}) if metadata else {}
    for flag in ("encoder", "width_multiplier", "stem", "zero_init_residual"):
        if flag in trained and not args.override_architecture:
            setattr(args, flag, trained[flag])
    return args


def classifier_from(encoder_uint8, num_classes):
    inputs = keras.Input(encoder_uint8.input_shape[1:], dtype="uint8", name="images")
    logits = keras.layers.Dense(num_classes, name="classifier")(encoder_uint8(inputs))
    return common.Classifier(inputs, logits)


def train_and_test(model, train_ds, steps, batch, args, test):
    peak = kc.optimizers.scale_learning_rate(args.learning_rate, batch, args.lr_scaling)
    schedule = keras.optimizers.schedules.CosineDecay(peak, steps)
    model.compile(
        keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_ds, epochs=1, steps_per_epoch=steps, verbose=args.verbose)
    logits, labels = kc.evaluation.extract_features(model, test, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def main(argv=None):
    parser = common.add_common_flags(
        argparse.ArgumentParser(description=__doc__.split("\n")[0]), "finetune", batch_size=128
    )
    parser.add_argument(
        "--encoder_path", default="saved_models/simclr_fashion_mnist", help="export dir/version or .keras"
    )
    parser.add_argument(
        "--label_fractions",
        default="0.01,0.1",
        help="comma-separated, e.g. 0.01,0.1,1.0: class-balanced fractions of the labels, drawn with --seed",
    )
    parser.add_argument(
        "--label_subset",
        default=None,
        help="instead of --label_fractions: a file of example ids, one per line (SimCLR's 1%% / 10%% ImageNet "
        "lists: file names; example indices for Fashion-MNIST)",
    )
    parser.add_argument("--finetune_epochs", type=int, default=20, help="passes over each labelled subset")
    parser.add_argument("--min_steps", type=int, default=100)
    parser.add_argument(
        "--scratch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the same network from scratch on each subset, the paper's baseline (--no-scratch: "
        "fine-tune only, half the time)",
    )
    parser.add_argument(
        "--override_architecture",
        action="store_true",
        help="use --encoder/--width_multiplier/--stem for the scratch model",
    )
    # SimCLR's fine-tuning rate, 0.05 x batch / 256 (appendix B.5): base 0.1 at the default batch 128.
    parser.set_defaults(learning_rate=0.1, image_size=None, channels=None)
    args = common.parse_args(parser, argv)
    if args.shard_input:
        parser.error("--shard_input splits pre-training input; this recipe reads its (small) data on every worker")
    strategy = common.start(args)  # first: multi-worker strategies must exist before any TF op
    # The images at the pretrained encoder's input size and channels unless given (as recipes/linear_eval.py).
    height, _, channels = kc.downstream.load_encoder(args.encoder_path, trainable=False).input_shape[1:]
    args.image_size = args.image_size or height
    args.channels = args.channels if args.channels is not None else channels

    # 1. Data, streamed: the labelled subsets of the training split (drawn from its labels alone) and the test split.
    full = common.train_data(args)
    if full.num_classes is None:
        raise SystemExit(f"Fine-tuning needs labels and {args.dataset} has none.")
    test = common.eval_data(args)
    augmenter = common.augmenter(args, channels=full.image_shape[-1], crop=full.crop)
    if args.label_subset:  # a published list of labelled examples
        subsets = [(os.path.basename(args.label_subset), args.label_subset)]
    else:  # class-balanced fractions drawn with the seed, as example indices
        labels = common.train_labels(args)
        subsets = [
            (f"{fraction:g}", kc.data.balanced_fraction(labels, fraction, args.seed).tolist())
            for fraction in [float(f) for f in args.label_fractions.split(",")]
        ]

    metadata = None
    if not args.encoder_path.endswith(".keras"):
        metadata = kc.export.load_metadata(kc.downstream.resolve_version(args.encoder_path))
    scratch_encoder(args, metadata)

    results = {}
    for name, ids in subsets:
        # 2. The labelled subset, augmented (one view per image) on the host.
        subset = common.train_data(args, subset=ids)
        batch = min(args.batch_size, subset.num_examples)
        views = kc.data.contrastive_views(
            subset.dataset,
            augmenter,
            batch,
            num_views=1,
            shuffle_buffer=min(subset.num_examples, args.shuffle_buffer),
            seed=args.seed,
            repeat=True,
            crop=subset.crop,
        ).map(lambda v, y: (tf.cast(tf.round(v[:, 0] * 255.0), tf.uint8), y))
        steps = max(args.min_steps, args.finetune_epochs * (subset.num_examples // batch))

        # 3. Fine-tune the pretrained encoder, and train the same network from scratch.
        with strategy.scope():
            pretrained = classifier_from(
                kc.downstream.load_encoder(args.encoder_path, trainable=True), full.num_classes
            )
            if args.scratch:
                fresh = common.build_encoder(args, full.image_shape)
                scratch_inputs = keras.Input(full.image_shape, dtype="uint8")
                scratch = classifier_from(
                    keras.Model(scratch_inputs, fresh(keras.layers.Rescaling(1.0 / 255.0)(scratch_inputs))),
                    full.num_classes,
                )
            row = {
                "labels": subset.num_examples,
                "pretrained": train_and_test(pretrained, views, steps, batch, args, test),
            }
            if args.scratch:
                row["scratch"] = train_and_test(scratch, views, steps, batch, args, test)
        results[name] = row
        label = f"{float(name):>6.1%}" if not args.label_subset else name
        baseline = f"   from scratch {row['scratch']:.4f}" if args.scratch else ""
        print(
            f"{label} labels ({row['labels']} images, {steps} steps): fine-tuned {row['pretrained']:.4f}{baseline}",
            flush=True,
        )

    if kc.distribute.is_chief():  # other workers of a multi-worker run write nothing
        os.makedirs(args.model_dir, exist_ok=True)
        with open(os.path.join(args.model_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
