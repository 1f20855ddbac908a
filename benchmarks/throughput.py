"""Training throughput (images/s) of the trainers, against a keras-io style reference.

Run: python benchmarks/throughput.py [--methods simclr supcon] [--widths 0.25 1.0] [--steps 12]

Measures, in one process, on the same network (ResNet-18, CIFAR stem), data
(32x32x3, batch 256, 2 views, pre-augmented so only the step is timed) and
optimizer (SGD momentum):
  * keras_contrastive: `kc.SimCLR` / `kc.SupCon` / `kc.MoCoV3` + `model.fit` on a
    views dataset (SupCon with 10 classes of labels; MoCo v3 with ResNet-18 and with
    ViT-Tiny, patch 4, whatever --widths says);
  * reference: the step written the keras-io way (GradientTape, a plain
    NT-Xent from the keras-io SimCLR example's formulation, `tf.function`),
    on the same ResNet-18 built with Keras' own BatchNormalization layers.
`--batch_norm kc keras` also times our trainers with Keras' BatchNormalization,
which shows what kc's fused one gains in the same sitting.
Prints the median images/s of each and their ratio. Figures go to
benchmarks/RESULTS.md; compare ratios, not absolute numbers, across runs.
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import keras_contrastive as kc

BATCH, SIZE = 256, 32


class StepTimer(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)

    def on_train_begin(self, logs=None):
        self.times = []


def views_dataset(steps, labels=False):
    rng = np.random.default_rng(0)
    views = rng.random((BATCH, 2, SIZE, SIZE, 3)).astype("float32")
    if labels:
        return tf.data.Dataset.from_tensors((views, rng.integers(0, 10, BATCH))).repeat(steps)
    return tf.data.Dataset.from_tensors(views).repeat(steps)


def keras_batch_norm(encoder):
    """A copy of `encoder` with Keras' own BatchNormalization in place of kc's fused one."""

    def clone(layer):
        if isinstance(layer, kc.layers.BatchNormalization):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(encoder, clone_function=clone)


def resnet18(width, batch_norm="kc"):
    encoder = kc.encoders.ResNet18((SIZE, SIZE, 3), width_multiplier=width)
    return encoder if batch_norm == "kc" else keras_batch_norm(encoder)


def build_trainer(method, width, batch_norm="kc"):
    """The trainer that `bench_kc` times (not compiled), under the current dtype policy."""
    if method == "mocov3_vit_tiny":
        encoder = kc.encoders.ViTTiny((SIZE, SIZE, 3), patch_size=4)
    else:
        encoder = resnet18(width, batch_norm)
    if method == "simclr":
        return kc.SimCLR(encoder, temperature=0.5, head_version=1)
    if method == "simclr_per_view":  # one encoder call per view (the main job's form; lightly's examples')
        return kc.SimCLR(encoder, temperature=0.5, head_version=1, concatenate_views=False)
    if method == "supcon":
        return kc.SupCon(encoder, temperature=0.1)
    # MoCo v3 with the paper's MLP widths scaled down 4x (1024 hidden, 256 out)
    return kc.MoCoV3(encoder, temperature=0.2, hidden_dim=1024, projection_dim=256)


def bench_kc(width, steps, precision, method="simclr", steps_per_execution=1, batch_norm="kc"):
    """Seconds per training step after the first (and second) call, one per step."""
    keras.mixed_precision.set_global_policy(precision)
    model = build_trainer(method, width, batch_norm)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), steps_per_execution=steps_per_execution)
    timer = StepTimer()
    model.fit(views_dataset(steps, labels=method == "supcon"), epochs=1, verbose=0, callbacks=[timer])
    keras.mixed_precision.set_global_policy("float32")
    # With steps_per_execution > 1 the callbacks see one "batch" per call of N steps.
    return [t / steps_per_execution for t in timer.times[max(1, 2 // steps_per_execution) :]]


def bench_reference(width, steps, precision):
    """The keras-io way: encoder + MLP head, GradientTape, hand-written loss. Seconds per step after 2."""
    keras.mixed_precision.set_global_policy(precision)
    encoder = resnet18(width, batch_norm="keras")  # the layers Keras users write
    dim = encoder.output_shape[-1]
    head = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(dim, activation="relu"), keras.layers.Dense(128)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    variables = encoder.trainable_variables + head.trainable_variables

    @tf.function
    def step(views):
        with tf.GradientTape() as tape:
            x = tf.concat([views[:, 0], views[:, 1]], 0)
            z = tf.cast(head(encoder(x, training=True)), tf.float32)
            z = tf.math.l2_normalize(z, axis=1)
            sim = tf.matmul(z, z, transpose_b=True) / 0.5
            n = tf.shape(views)[0]
            sim = sim - 1e9 * tf.eye(2 * n)
            labels = tf.concat([tf.range(n, 2 * n), tf.range(n)], 0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, sim))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    times = []
    for views in views_dataset(steps):
        t = time.perf_counter()
        step(views).numpy()
        times.append(time.perf_counter() - t)
    keras.mixed_precision.set_global_policy("float32")
    return times[2:]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--methods", nargs="+", default=["simclr", "supcon", "mocov3", "mocov3_vit_tiny"])
    parser.add_argument(
        "--steps_per_execution", type=int, nargs="+", default=[1], help="steps per call of the train function"
    )
    parser.add_argument(
        "--batch_norm",
        nargs="+",
        default=["kc"],
        choices=["kc", "keras"],
        help="our trainers' encoder with kc's fused BatchNormalization, or with Keras' own (ResNets only)",
    )
    args = parser.parse_args()
    print(f"Training step, ResNet-18 CIFAR stem, {SIZE}x{SIZE}x3, batch {BATCH}, 2 views; median images/s")
    for precision in args.precision:
        for width in args.widths:
            steps = args.steps if width < 0.5 else max(5, args.steps // 3)
            ref = BATCH / np.median(bench_reference(width, steps, precision))
            row = f"width {width:<5} {precision:<15} keras-io SimCLR reference {ref:7.1f}"
            for method in args.methods:
                for spe in args.steps_per_execution:
                    for bn in args.batch_norm if method != "mocov3_vit_tiny" else ["kc"]:
                        ours = BATCH / np.median(bench_kc(width, steps, precision, method, spe, bn))
                        name = method + ("" if spe == 1 else f" x{spe}/call") + ("" if bn == "kc" else " keras-BN")
                        row += f"   {name} {ours:7.1f} (ratio {ours / ref:4.2f})"
            print(row, flush=True)


if __name__ == "__main__":
    main()
