"""NNCLR pretraining with `model.fit`, then kNN / linear-probe evaluation and export.

Command (default: the real Fashion-MNIST that Debian's `dataset-fashion-mnist` installs):

    python recipes/nnclr.py

NNCLR (Dwibedi et al. 2021) is SimCLR with the positive replaced by the nearest neighbour of a view in a
support set of past projections (`kc.negatives.Queue`, `--support_size`), a predictor MLP on top of the
projector, and temperature 0.1. The data, augmentation, optimizer and budget are SimCLR's recipe defaults
for Fashion-MNIST (recipes/simclr.py; 2 epochs at batch 256, SGD 0.3 with coupled weight decay 5e-4, colour
jitter 1.5, `--precision auto`), so the two read side by side; the support set holds 8,192 keys, 32 steps
of first views (the paper keeps 98,304 of ImageNet's 1.28M images, about 8%; this is 14% of 60k). Expected
on 2 CPU cores: see benchmarks/RESULTS.md.

Scaled to the paper's ImageNet setting (on accelerators, data prepared for tfds):

    python recipes/nnclr.py --dataset imagenet2012 --image_size 224 --channels 3 \
        --encoder resnet50 --stem imagenet --width_multiplier 1 --augment imagenet \
        --batch_size 4096 --epochs 1000 --optimizer lars --learning_rate 0.3 --weight_decay 1e-6 \
        --warmup_epochs 10 --support_size 98304 --projection_hidden_dim 2048 --prediction_hidden_dim 4096

Outputs under --model_dir: as recipes/simclr.py (TensorBoard logs with the `neighbour_accuracy` of the
support set, backups, checkpoints, results.json, pictures/), and the exported encoder under --export_dir.
"""

import argparse

import common

import keras_contrastive as kc


def build_parser():
    """The recipe's flags with its defaults (tests read the defaults from here)."""
    parser = common.add_common_flags(
        argparse.ArgumentParser(description=__doc__.split("\n")[0]), "nnclr", temperature=0.1
    )
    parser.add_argument("--support_size", type=common.at_least(1), default=8192, help="keys in the support set")
    parser.add_argument("--projection_hidden_dim", type=common.at_least(1), default=2048)
    parser.add_argument("--prediction_hidden_dim", type=common.at_least(1), default=4096)
    # SimCLR's Fashion-MNIST defaults (recipes/simclr.py), and the paper's 256-d projections.
    parser.set_defaults(
        epochs=2,
        image_size=28,
        optimizer="sgd",
        learning_rate=0.3,
        weight_decay=5e-4,
        jitter_strength=1.5,
        precision="auto",
        projection_dim=256,
    )
    return parser


def main(argv=None):
    args = common.parse_args(build_parser(), argv)
    strategy = common.start(args)  # first: multi-worker strategies must exist before any TF op

    # 1. Data, streamed; labels feed only the online probe, the neighbours' label accuracy and the evaluation.
    data = common.train_data(args)

    # 2. Augmentation: two views per image, made on the host in tf.data.
    augmenter = common.augmenter(args, channels=data.image_shape[-1], crop=data.crop)

    # 3. Encoder and trainer: projector, predictor and the support set of past first-view projections.
    with strategy.scope():
        encoder = common.build_encoder(args, data.image_shape)
        labelled = data.num_classes is not None
        model = kc.NNCLR(
            encoder,
            augmenter,
            support_set=kc.negatives.Queue(args.support_size, keep_labels=labelled),
            temperature=args.temperature,
            projection_dim=args.projection_dim,
            projection_hidden_dim=args.projection_hidden_dim,
            prediction_hidden_dim=args.prediction_hidden_dim,
            num_classes=data.num_classes,
            seed=args.seed,
        )

        # 4. Optimizer and schedule (the rate scaled by the global batch, warmup + cosine).
        steps_per_epoch = args.steps_per_epoch or max(1, data.num_examples // args.batch_size)
        model.compile(
            optimizer=common.schedule_and_optimizer(args, steps_per_epoch, exclude_names=["online_probe"]),
            jit_compile=args.jit_compile,
        )

    # 5. Train, with logs, checkpoints and backups (the support set is saved and restored with the weights).
    common.fit_views(args, model, data, steps_per_epoch)

    # 6. Evaluate the frozen encoder, draw the pictures.
    results = common.evaluate_frozen(args, model.encoder, labelled=labelled)
    common.pictures(args, model)

    # 7. Export the encoder (no projector or predictor) for TF Serving and downstream use.
    return common.export_and_save_results(args, model, "NNCLR", "recipes/nnclr.py", results)


if __name__ == "__main__":
    main()
