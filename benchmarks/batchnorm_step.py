"""BatchNorm forward + backward: Keras 3's op-by-op layer against TensorFlow's fused kernel (issue 13).

benchmarks/profile_step.py shows BatchNorm's elementwise ops taking about as long as the backward convolutions
in a ResNet-18 w0.25 SimCLR step. This times one training-mode BatchNorm with its gradients on the step's
first-stage activation ([512, 32, 32, 16]: 2 views of batch 256, width 0.25) both ways, and checks that the
gradients agree, as the case for a fused path in `kc.layers`.

    python benchmarks/batchnorm_step.py
"""

import time

import keras
import numpy as np
import tensorflow as tf

SHAPE = (512, 32, 32, 16)


def median_ms(fn, repeats=20):
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def compare(dtype, x32, upstream):
    """Median ms of Keras' layer and of the fused kernel, and the gradients' largest difference (relative)."""
    x = tf.cast(x32, dtype)
    layer = keras.layers.BatchNormalization(dtype="mixed_bfloat16" if dtype == "bfloat16" else "float32")
    layer.build(x.shape)
    gamma, beta = tf.Variable(tf.ones(SHAPE[-1])), tf.Variable(tf.zeros(SHAPE[-1]))

    @tf.function
    def keras_bn():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x, training=True), "float32") * upstream)
        return tape.gradient(loss, [x, layer.gamma, layer.beta])

    @tf.function
    def fused_bn():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=layer.epsilon, is_training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
        return tape.gradient(loss, [x, gamma, beta])

    diff = max(
        float(tf.reduce_max(tf.abs(tf.cast(a, "float32") - tf.cast(b, "float32"))))
        / float(tf.reduce_max(tf.abs(tf.cast(b, "float32"))))
        for a, b in zip(keras_bn(), fused_bn())
    )
    return median_ms(keras_bn), median_ms(fused_bn), diff


def main():
    rng = np.random.default_rng(0)
    x32 = tf.constant(rng.normal(size=SHAPE).astype("float32"))
    upstream = tf.constant(rng.normal(size=SHAPE).astype("float32"))  # a random gradient from above
    for dtype in ("float32", "bfloat16"):
        slow, fast, diff = compare(dtype, x32, upstream)
        print(
            f"{dtype:<9} {SHAPE}: Keras BatchNormalization {slow:.1f} ms, FusedBatchNormV3 {fast:.1f} ms "
            f"({slow / fast:.1f}x); gradients differ by {diff:.1e} of their largest value"
        )


if __name__ == "__main__":
    main()
