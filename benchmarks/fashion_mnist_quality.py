"""Representation quality on the real Fashion-MNIST, with the protocol of shared/BENCHMARKS.md.

Run: python benchmarks/fashion_mnist_quality.py [--epochs 4] [--skip_baselines]

Protocol (the reference figures' protocol): images zero-padded to 32x32 and
repeated to 3 channels; ResNet-18 CIFAR stem at width 0.25; 4 epochs at batch
256; SGD lr 0.12, momentum 0.9, cosine to 0, weight decay 5e-4; temperature
0.5; views: random resized crop (0.2-1), horizontal flip, brightness/contrast
jitter 0.4 with p=0.8 (no grayscale, no blur). Frozen pooled features (before
the projection head), scored on the 10k test split by weighted kNN (k=200,
cosine, temperature 0.1, the 60k train features as bank) and a linear probe
on standardized features. Prints one line per model with the training time.
"""

import argparse
import time

import numpy as np
import keras

import keras_contrastive as kc


def evaluate(name, encoder, data, seconds=None):
    x_train, y_train, x_test, y_test = data
    if encoder is None:  # raw pixels
        f_train = x_train.reshape(len(x_train), -1).astype("float32") / 255.0
        f_test = x_test.reshape(len(x_test), -1).astype("float32") / 255.0
    else:
        f_train = kc.evaluation.extract_features(encoder, x_train, verbose=0)
        f_test = kc.evaluation.extract_features(encoder, x_test, verbose=0)
    knn = kc.evaluation.knn_accuracy(f_train, y_train, f_test, y_test, k=200, temperature=0.1, verbose=0)
    probe = kc.evaluation.linear_probe(f_train, y_train, f_test, y_test, verbose=0)
    took = "-" if seconds is None else f"{seconds:.0f} s"
    print(f"{name:<44} kNN {knn:.2%}   linear probe {probe:.2%}   training {took}", flush=True)
    return knn, probe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--skip_baselines", action="store_true")
    parser.add_argument("--no_zero_init_residual", action="store_true", help="torchvision's ResNet init")
    parser.add_argument(
        "--head_hidden_bn",
        type=int,
        default=0,
        help="projection head Dense(N) -> BN -> ReLU -> Dense(128) (lightly's SimCLRProjectionHead shape) "
        "instead of SimCLR v1's Dense(128) -> ReLU -> Dense(128)",
    )
    args = parser.parse_args()

    x_train, y_train = kc.data.load_arrays("fashion_mnist", "train", image_size=32, channels=3)
    x_test, y_test = kc.data.load_arrays("fashion_mnist", "test", image_size=32, channels=3)
    data = (x_train, y_train, x_test, y_test)
    steps = len(x_train) // args.batch_size

    def encoder():
        keras.utils.set_random_seed(0)
        return kc.encoders.ResNet18(
            (32, 32, 3), stem="cifar", width_multiplier=0.25, zero_init_residual=not args.no_zero_init_residual
        )

    def sgd():
        schedule = keras.optimizers.schedules.CosineDecay(0.12, args.epochs * steps)
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4)

    if not args.skip_baselines:
        evaluate("raw pixels", None, data)
        evaluate("random-init encoder", encoder(), data)

    # SimCLR with the protocol's views and optimizer.
    augmenter = kc.augment.SimCLRAugmenter(
        32, crop_area=(0.2, 1.0), color_jitter_strength=0.5, grayscale_probability=0.0, blur=False, seed=0
    )
    head, name = None, f"keras_contrastive SimCLR ({args.epochs} epochs)"
    if args.head_hidden_bn:
        head = kc.heads.ProjectionHead([args.head_hidden_bn], 128, batch_norm=True, name="projection_head")
        name = f"keras_contrastive SimCLR, BN head {args.head_hidden_bn} ({args.epochs} epochs)"
    model = kc.SimCLR(encoder(), augmenter, temperature=0.5, head_version=1, projection_head=head)
    model.compile(optimizer=sgd())
    views = model.views_dataset(
        kc.data.load("fashion_mnist", "train", image_size=32, channels=3),
        args.batch_size, shuffle_buffer=60_000, seed=0, repeat=True,
    )
    start = time.perf_counter()
    model.fit(views, epochs=args.epochs, steps_per_epoch=steps, verbose=0)
    evaluate(name, model.encoder, data, time.perf_counter() - start)

    if not args.skip_baselines:
        # Supervised cross-entropy, same encoder, epochs and optimizer.
        enc = encoder()
        classifier = keras.Sequential([enc, keras.layers.Dense(10)])
        classifier.compile(sgd(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = time.perf_counter()
        classifier.fit(x_train / 255.0, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
        evaluate("supervised cross-entropy, same encoder", enc, data, time.perf_counter() - start)


if __name__ == "__main__":
    main()
