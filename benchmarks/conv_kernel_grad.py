"""A convolution's kernel gradient: TensorFlow's Conv2DBackpropFilter against one matmul per tap (issue 13).

Under `mixed_bfloat16` at width 1.0, oneDNN's backward-weights kernel (as TensorFlow 2.21 ships it) ran the
4x4x512 layers of a ResNet-18 on 32x32 images at 87 GFLOP/s in the step, against 420-470 GFLOP/s for their forward
pass: a quarter of the step. `kc.layers.Conv2D(kernel_gradient="auto")` computes those kernel gradients as one matmul
per kernel tap where that was measured faster. This prints both ways for each layer shape, then the whole ResNet-18
forward + backward (the encoder's part of a SimCLR step on 2 x 256 views) with every convolution native against
`auto`, alternating in one process, so the rule in `kc.layers.Conv2D` can be re-checked on any machine:

    python benchmarks/conv_kernel_grad.py [--precision mixed_bfloat16 float32] [--widths 0.25 1.0] [--steps 6]
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import keras_contrastive as kc

# (batch, input size, input channels, output channels): a ResNet-18's 3x3 stride-1 layers on 32x32 images (batch
# 512 = 2 views of 256) and at 224x224 (batch 128), plus smaller maps.
SHAPES = [
    (512, 32, 64, 64),
    (512, 16, 128, 128),
    (512, 8, 256, 256),
    (512, 4, 512, 512),
    (512, 4, 128, 128),
    (512, 4, 256, 256),
    (512, 8, 64, 64),
    (128, 14, 256, 256),
    (128, 7, 512, 512),
    (512, 7, 128, 128),
    (512, 3, 512, 512),
]


def median_seconds(fn, args, repeats):
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def layer_table(dtype, repeats):
    print(f"\n{dtype}: 3x3 stride-1 SAME kernel gradient, GFLOP/s (median of {repeats})")
    print(f"{'batch x map x C_in -> C_out':34s} {'native':>8s} {'matmul':>8s} {'ratio':>6s} {'auto picks':>10s}")
    rng = np.random.default_rng(0)
    for batch, size, c_in, c_out in SHAPES:
        x = tf.cast(rng.normal(size=(batch, size, size, c_in)), dtype)
        dy = tf.cast(rng.normal(size=(batch, size, size, c_out)), dtype)
        native = tf.function(
            lambda x, dy, c_in=c_in, c_out=c_out: tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=[3, 3, c_in, c_out], out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
            )
        )
        matmul = tf.function(
            lambda x, dy, c_in=c_in, c_out=c_out: kc.layers.kernel_gradient_by_matmul(
                x, dy, (3, 3, c_in, c_out), "SAME"
            )
        )
        flops = 2 * batch * size * size * c_in * c_out * 9
        t_native, t_matmul = median_seconds(native, (x, dy), repeats), median_seconds(matmul, (x, dy), repeats)
        layer = kc.layers.Conv2D(c_out, 3, padding="same", dtype="mixed_bfloat16" if dtype == "bfloat16" else dtype)
        picks = "matmul" if layer._uses_matmul_gradient(keras.KerasTensor((batch, size, size, c_in))) else "native"
        print(
            f"{f'{batch} x {size}x{size} x {c_in} -> {c_out}':34s} {flops / t_native / 1e9:8.0f} "
            f"{flops / t_matmul / 1e9:8.0f} {t_native / t_matmul:5.2f}x {picks:>10s}",
            flush=True,
        )


def encoder_ab(width, precision, steps):
    """Images/s of a ResNet-18 forward + backward on 512 views, every conv native against `auto`, alternating."""
    keras.mixed_precision.set_global_policy(precision)
    encoder = kc.encoders.ResNet18((32, 32, 3), width_multiplier=width)
    keras.mixed_precision.set_global_policy("float32")
    convs = [layer for layer in encoder._flatten_layers() if isinstance(layer, kc.layers.Conv2D)]
    views = tf.random.uniform([512, 32, 32, 3])

    def traced(mode):
        for conv in convs:  # the path is chosen when the step is traced
            conv.kernel_gradient = mode

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(tf.cast(encoder(x, training=True), "float32")))
            return tf.add_n(
                [tf.reduce_sum(tf.cast(g, "float32")) for g in tape.gradient(loss, encoder.trainable_weights)]
            )

        step(views)
        return step

    steps_by_mode = {mode: traced(mode) for mode in ("native", "auto")}
    times = {mode: [] for mode in steps_by_mode}
    for _ in range(steps):
        for mode, step in steps_by_mode.items():
            start = time.perf_counter()
            step(views).numpy()
            times[mode].append(time.perf_counter() - start)
    native, auto = (float(np.median(times[m])) for m in ("native", "auto"))
    print(
        f"ResNet-18 width {width}, {precision}, 512 views: native {256 / native:.1f} images/s (pairs), "
        f"auto {256 / auto:.1f}: {native / auto:.2f}x",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", nargs="+", default=["mixed_bfloat16", "float32"])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.25, 1.0])
    parser.add_argument("--steps", type=int, default=6, help="timed encoder steps per mode (alternating)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per kernel-gradient shape")
    parser.add_argument("--no_layers", action="store_true", help="skip the per-shape table")
    args = parser.parse_args()
    if not args.no_layers:
        for precision in args.precision:
            layer_table("bfloat16" if precision == "mixed_bfloat16" else precision, args.repeats)
    print()
    for precision in args.precision:
        for width in args.widths:
            encoder_ab(width, precision, args.steps)


if __name__ == "__main__":
    main()
