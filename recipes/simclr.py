"""SimCLR pretraining with `model.fit`, then kNN / linear-probe evaluation and export.

Command (default: the real Fashion-MNIST that Debian's `dataset-fashion-mnist` installs):

    python recipes/simclr.py

Expected on 2 CPU cores (measured, see benchmarks/RESULTS.md): about 10 minutes
in all; kNN accuracy about 0.78 and linear probe about 0.82 on the 10k test
images after 2 epochs, ResNet-18 (CIFAR stem, width 0.25).

Scaled to the paper's ImageNet setting (on accelerators, data prepared for tfds):

    python recipes/simclr.py --dataset imagenet2012 --image_size 224 --channels 3 \
        --encoder resnet50 --stem imagenet --width_multiplier 1 --augment imagenet \
        --batch_size 4096 --epochs 100 --optimizer lars --learning_rate 0.3 \
        --lr_scaling linear --weight_decay 1e-6 --warmup_epochs 10 --temperature 0.1

Outputs under --model_dir: TensorBoard logs (loss, contrastive and probe
accuracy, learning rate, an image of augmented view pairs), a backup that
resumes an interrupted run, a checkpoint per epoch; the encoder (projection
head removed) is exported as a versioned SavedModel under --export_dir.
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ info/warning logs out of the story

import keras  # noqa: E402

import keras_contrastive as kc  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Flags every recipe shares.
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (local files), a tfds name, or an image folder")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=256, help="global batch size (all replicas)")
    p.add_argument("--steps_per_epoch", type=int, default=None, help="default: one pass over the training split")
    p.add_argument("--image_size", type=int, default=32, help="Fashion-MNIST's 28x28 is zero-padded to 32x32")
    p.add_argument("--encoder", default="resnet18", choices=["resnet18", "resnet50"])
    p.add_argument("--model_dir", default="runs/simclr_fashion_mnist")
    p.add_argument("--export_dir", default="saved_models/simclr_fashion_mnist")
    p.add_argument("--seed", type=int, default=0)
    # Data and augmentation.
    p.add_argument("--channels", type=int, default=3, help="3 repeats grayscale images to RGB; 0 keeps them")
    p.add_argument("--augment", default="grayscale_small", choices=sorted(kc.augment.PRESETS))
    p.add_argument("--max_train_examples", type=int, default=None, help="use only the first N training images")
    # Model.
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--width_multiplier", type=float, default=0.25)
    p.add_argument("--head_version", type=int, default=2, choices=[1, 2])
    p.add_argument("--projection_dim", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.5)
    # Optimization.
    p.add_argument("--optimizer", default="lars", choices=["lars", "sgd"])
    p.add_argument("--learning_rate", type=float, default=1.0, help="base rate, scaled by --lr_scaling")
    p.add_argument("--lr_scaling", default="linear", choices=["linear", "sqrt"])
    p.add_argument("--weight_decay", type=float, default=1e-6)
    p.add_argument("--warmup_epochs", type=float, default=0.2)
    # Evaluation and export.
    p.add_argument("--knn_k", type=int, default=200)
    p.add_argument("--linear_probe_epochs", type=int, default=30, help="0 skips the linear probe")
    p.add_argument("--no_export", action="store_true")
    p.add_argument("--verbose", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    channels = args.channels or None

    # 1. Data: uint8 images (and labels, used only by the online probe and the evaluation).
    split = "train" if not args.max_train_examples else f"train[:{args.max_train_examples}]"
    train = kc.data.load(args.dataset, split, image_size=args.image_size, channels=channels)
    num_train = int(train.cardinality())
    has_labels = isinstance(train.element_spec, tuple)
    image_shape = tuple((train.element_spec[0] if has_labels else train.element_spec).shape)
    num_classes = None
    if has_labels:
        _, train_labels = kc.data.load_arrays(args.dataset, split, image_size=args.image_size, channels=channels)
        num_classes = int(train_labels.max()) + 1

    # 2. Augmentation: two views per image, made on the host in tf.data.
    augmenter = kc.augment.simclr_preset(args.augment, args.image_size, seed=args.seed)

    # 3. Encoder and trainer.
    build_encoder = {"resnet18": kc.encoders.ResNet18, "resnet50": kc.encoders.ResNet50}[args.encoder]
    encoder = build_encoder(image_shape, stem=args.stem, width_multiplier=args.width_multiplier)
    model = kc.SimCLR(
        encoder,
        augmenter,
        temperature=args.temperature,
        projection_dim=args.projection_dim,
        head_version=args.head_version,
        num_classes=num_classes,
        seed=args.seed,
    )

    # 4. Optimizer: learning rate scaled by the global batch, warmup + cosine.
    steps_per_epoch = args.steps_per_epoch or max(1, num_train // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    peak = kc.optimizers.scale_learning_rate(args.learning_rate, args.batch_size, args.lr_scaling)
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total_steps - 1)
    schedule = kc.optimizers.warmup_cosine(peak, total_steps, warmup)
    if args.optimizer == "lars":
        optimizer = kc.optimizers.LARS(schedule, momentum=0.9, weight_decay=args.weight_decay, exclude_names=["online_probe"])
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=args.weight_decay)
    model.compile(optimizer=optimizer)

    # 5. Input pipeline: shuffled, repeated, augmented views with a static batch size.
    views = model.views_dataset(train, args.batch_size, shuffle_buffer=min(num_train, 20_000), seed=args.seed, repeat=True)

    # 6. Callbacks: logs, view pairs, backup (resume after a kill), per-epoch checkpoints.
    os.makedirs(os.path.join(args.model_dir, "checkpoints"), exist_ok=True)
    log_dir = os.path.join(args.model_dir, "logs")
    sample = next(iter(views))
    sample = sample[0] if isinstance(sample, tuple) else sample
    callbacks = [
        kc.callbacks.LearningRateLogger(),
        keras.callbacks.TensorBoard(log_dir, update_freq=20),
        kc.callbacks.ViewPairsImage(sample, log_dir, png_path=os.path.join(args.model_dir, "views.png")),
        keras.callbacks.BackupAndRestore(os.path.join(args.model_dir, "backup")),
        keras.callbacks.ModelCheckpoint(os.path.join(args.model_dir, "checkpoints", "epoch_{epoch:03d}.keras")),
        keras.callbacks.TerminateOnNaN(),
    ]

    # 7. Train.
    model.fit(views, epochs=args.epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=args.verbose, shuffle=False)

    # 8. Evaluate the frozen encoder: weighted kNN and a linear probe on pooled features.
    results = {}
    if has_labels:
        x_train, y_train = kc.data.load_arrays(args.dataset, split, image_size=args.image_size, channels=channels)
        x_test, y_test = kc.data.load_arrays(args.dataset, "test", image_size=args.image_size, channels=channels)
        print("Extracting features for the kNN bank and the test split...")
        f_train = kc.evaluation.extract_features(model.encoder, x_train, verbose=args.verbose)
        f_test = kc.evaluation.extract_features(model.encoder, x_test, verbose=args.verbose)
        results["knn_accuracy"] = kc.evaluation.knn_accuracy(f_train, y_train, f_test, y_test, k=args.knn_k, verbose=args.verbose)
        print(f"kNN accuracy (k={args.knn_k}, cosine, temperature 0.1): {results['knn_accuracy']:.4f}")
        if args.linear_probe_epochs:
            results["linear_probe_accuracy"] = kc.evaluation.linear_probe(
                f_train, y_train, f_test, y_test, epochs=args.linear_probe_epochs, verbose=0
            )
            print(f"Linear probe accuracy: {results['linear_probe_accuracy']:.4f}")

    # 9. Export the encoder (no projection head) for TF Serving and downstream use.
    if not args.no_export:
        metadata = {"method": "SimCLR", "recipe": "recipes/simclr.py", "args": vars(args), "evaluation": results}
        path = kc.export.export_encoder(model, args.export_dir, metadata=metadata)
        results["export_path"] = path
        print(f"Exported the encoder to {path}")
    with open(os.path.join(args.model_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
