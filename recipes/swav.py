"""SwAV pretraining with `model.fit`, then kNN / linear-probe evaluation and export.

Command (default: the real Fashion-MNIST that Debian's `dataset-fashion-mnist` installs):

    python recipes/swav.py

SwAV (Caron et al. 2020) clusters online instead of contrasting pairs: the projections of two views are
scored against trainable unit prototypes (`--num_prototypes`), Sinkhorn-Knopp spreads the global batch
evenly over them (the codes), and each view predicts the other's codes. The prototypes get no gradient
for the first `--freeze_prototypes_steps`. `--queue_size` adds the paper's feature queue of earlier
projections to Sinkhorn's equipartition (it joins once full). The data, augmentation, optimizer and budget
are SimCLR's recipe defaults for Fashion-MNIST (recipes/simclr.py; 2 epochs at batch 256, SGD 0.3 with
coupled weight decay 5e-4, colour jitter 1.5, `--precision auto`), so the two read side by side; 300
prototypes (30 per class, as the paper's 3,000 for ImageNet's 1,000 classes is 3 per class: over-clustering
helps, its table 8), frozen for 100 steps (a fifth of the run, as the paper's one epoch of 400-800).
`--num_local_crops K` adds multi-crop's K small views (`--local_size`, crops of 5-14% of the image). Expected
on 2 CPU cores: see benchmarks/RESULTS.md.

Scaled to the paper's ImageNet setting without multi-crop (on accelerators, data prepared for tfds):

    python recipes/swav.py --dataset imagenet2012 --image_size 224 --channels 3 \
        --encoder resnet50 --stem imagenet --width_multiplier 1 --augment imagenet \
        --batch_size 4096 --epochs 400 --optimizer lars --learning_rate 4.8 --weight_decay 1e-6 \
        --warmup_epochs 10 --num_prototypes 3000 --freeze_prototypes_steps 313 --epsilon 0.05

Outputs under --model_dir: as recipes/simclr.py (TensorBoard logs with `prototype_usage`, backups,
checkpoints, results.json, pictures/), and the exported encoder under --export_dir.
"""

import argparse

import common

import keras_contrastive as kc


def build_parser():
    """The recipe's flags with its defaults (tests read the defaults from here)."""
    parser = common.add_common_flags(
        argparse.ArgumentParser(description=__doc__.split("\n")[0]), "swav", temperature=0.1
    )
    parser.add_argument("--num_prototypes", type=common.at_least(2), default=300)
    parser.add_argument("--epsilon", type=common.positive, default=0.05, help="Sinkhorn's entropy regularization")
    parser.add_argument("--sinkhorn_iterations", type=common.at_least(1), default=3)
    parser.add_argument("--freeze_prototypes_steps", type=common.at_least(0), default=100)
    parser.add_argument(
        "--queue_size",
        type=common.at_least(0),
        default=0,
        help="earlier projections that join Sinkhorn's equipartition (the paper: 3840 at batch 256); 0: none",
    )
    parser.add_argument(
        "--queue_start_step",
        type=common.at_least(0),
        default=234,
        help="the step from which the queue joins (once full); the reference code: epoch 15. Default: epoch 2",
    )
    parser.add_argument(
        "--num_local_crops",
        type=common.at_least(0),
        default=0,
        help="multi-crop: small views per image besides the 2 global ones (the paper: 6); 0: 2 views",
    )
    parser.add_argument(
        "--local_size", type=common.at_least(1), default=None, help="their size; default: image_size * 96 / 224"
    )
    parser.add_argument("--projection_hidden_dim", type=common.at_least(1), default=2048)
    # SimCLR's Fashion-MNIST defaults (recipes/simclr.py).
    parser.set_defaults(
        epochs=2,
        image_size=28,
        optimizer="sgd",
        learning_rate=0.3,
        weight_decay=5e-4,
        jitter_strength=1.5,
        precision="auto",
        projection_dim=128,
    )
    return parser


def multi_crop(args, augmenter, data):
    """The 2 global views as --augment makes them, and --num_local_crops small ones of the paper's areas (5-14%)."""
    if data.crop is not None or not isinstance(augmenter, kc.augment.SimCLRAugmenter):
        raise SystemExit(
            "--num_local_crops needs the batched augmenter (Fashion-MNIST or arrays, --augment_with keras_contrastive): "
            "crops drawn per image at full resolution (folders, tfds) make views of one size for now."
        )
    size = args.local_size or max(1, round(args.image_size * 96 / 224))
    config = dict(augmenter.get_config(), image_size=(size, size), crop_area=(0.05, 0.14), name="local_crops")
    return [augmenter, augmenter] + [kc.augment.SimCLRAugmenter.from_config(config)] * args.num_local_crops


def main(argv=None):
    args = common.parse_args(build_parser(), argv)
    strategy = common.start(args)  # first: multi-worker strategies must exist before any TF op

    # 1. Data, streamed; labels feed only the online probe and the evaluation.
    data = common.train_data(args)

    # 2. Augmentation: two views per image, made on the host in tf.data.
    augmenter = common.augmenter(args, channels=data.image_shape[-1], crop=data.crop)
    if args.num_local_crops:
        augmenter = multi_crop(args, augmenter, data)

    # 3. Encoder and trainer: projection head, prototypes and the optional feature queue.
    with strategy.scope():
        encoder = common.build_encoder(args, data.image_shape)
        model = kc.SwAV(
            encoder,
            augmenter,
            num_prototypes=args.num_prototypes,
            temperature=args.temperature,
            epsilon=args.epsilon,
            sinkhorn_iterations=args.sinkhorn_iterations,
            freeze_prototypes_steps=args.freeze_prototypes_steps,
            queue=kc.negatives.Queue(args.queue_size) if args.queue_size else None,
            queue_start_step=args.queue_start_step,
            projection_dim=args.projection_dim,
            projection_hidden_dim=args.projection_hidden_dim,
            num_classes=data.num_classes,
            seed=args.seed,
            num_views=2 + args.num_local_crops,
        )

        # 4. Optimizer and schedule (the rate scaled by the global batch, warmup + cosine).
        steps_per_epoch = args.steps_per_epoch or max(1, data.num_examples // args.batch_size)
        model.compile(
            optimizer=common.schedule_and_optimizer(args, steps_per_epoch, exclude_names=["online_probe"]),
            jit_compile=args.jit_compile,
        )

    # 5. Train, with logs, checkpoints and backups (prototypes and queue are saved and restored with the weights).
    common.fit_views(args, model, data, steps_per_epoch)

    # 6. Evaluate the frozen encoder, draw the pictures.
    results = common.evaluate_frozen(args, model.encoder, labelled=data.num_classes is not None)
    common.pictures(args, model)

    # 7. Export the encoder (no head or prototypes) for TF Serving and downstream use.
    return common.export_and_save_results(args, model, "SwAV", "recipes/swav.py", results)


if __name__ == "__main__":
    main()
