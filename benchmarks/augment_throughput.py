"""Augmentation throughput and repeatability: our SimCLRAugmenter against keras-cv 0.9.

Run: python benchmarks/augment_throughput.py [--batches 20] [--sizes 32 96 224] [--only keras_contrastive]

For 32x32 and 96x96 RGB images (`--sizes`), with and without blur, batch 256, inside
`tf.data.map` (parallel calls, where this library runs augmentation), prints
views/s for
  * keras_contrastive: `SimCLRAugmenter` with stateless per-batch seeds;
  * keras-cv 0.9: RandomCropAndResize + RandomFlip + RandomApply(RandomColorJitter,
    0.8) + RandomApply(Grayscale, 0.2) [+ RandomApply(RandomGaussianBlur, 0.5)],
    seeded, the pipeline a new user would write;
  * the same keras-cv layers through `kc.augment.LayerAugmenter` (seeded per call);
and whether two runs of the same seeded pipeline give identical views.

Then, for the SimCLR step itself (ResNet-18 width 0.25, 32x32, batch 256),
images/s with augmentation on the host (`model.views_dataset`) against
augmentation inside the train step (`model.fit` on raw images).
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import keras_contrastive as kc

BATCH = 256


def source(size, batches):
    rng = np.random.default_rng(0)
    images = (rng.random((BATCH, size, size, 3)) * 255).astype("uint8")
    return tf.data.Dataset.from_tensors(images).repeat(batches)


def ours(size, blur):
    aug = kc.augment.SimCLRAugmenter(size, color_jitter_strength=0.5, blur=blur)
    keys = tf.data.Dataset.random(seed=0).map(lambda r: tf.cast(r % (2**31 - 1), tf.int32))

    def make(ds):
        return tf.data.Dataset.zip((keys, ds)).map(
            lambda k, x: aug(x, seed=tf.stack([k, 0])), num_parallel_calls=tf.data.AUTOTUNE
        )

    return make


def keras_cv_layers(size, blur):
    """The pipeline a new user writes from keras-cv 0.9 layers."""
    import keras_cv

    layers = [
        keras_cv.layers.RandomCropAndResize((size, size), (0.08, 1.0), (3 / 4, 4 / 3), seed=1),
        keras_cv.layers.RandomFlip("horizontal", seed=2),
        keras_cv.layers.RandomApply(
            keras_cv.layers.RandomColorJitter((0, 255), 0.4, 0.4, 0.4, 0.1, seed=3), rate=0.8, seed=4
        ),
        keras_cv.layers.RandomApply(keras_cv.layers.Grayscale(output_channels=3), rate=0.2, seed=5),
    ]
    if blur:
        layers.append(
            keras_cv.layers.RandomApply(
                keras_cv.layers.RandomGaussianBlur(kernel_size=max(3, size // 10), factor=(0.1, 2.0)),
                rate=0.5,
                seed=6,
            )
        )
    return keras.Sequential(layers)


def keras_cv_pipeline(size, blur):
    """keras-cv's layers called as they are (their own stateful generators)."""
    pipeline = keras_cv_layers(size, blur)

    def make(ds):
        return ds.map(lambda x: pipeline(tf.cast(x, tf.float32), training=True), num_parallel_calls=tf.data.AUTOTUNE)

    return make


def keras_cv_seeded(size, blur):
    """The same layers through `kc.augment.LayerAugmenter`: a stateless seed per batch (per image for
    keras-cv's per-image layers), value range converted."""
    aug = kc.augment.LayerAugmenter(keras_cv_layers(size, blur))
    keys = tf.data.Dataset.random(seed=0).map(lambda r: tf.cast(r % (2**31 - 1), tf.int32))

    def make(ds):
        return tf.data.Dataset.zip((keys, ds)).map(
            lambda k, x: aug(x, seed=tf.stack([k, 0])), num_parallel_calls=tf.data.AUTOTUNE
        )

    return make


def measure(make, size, batches):
    ds = make(source(size, batches)).prefetch(2)
    it = iter(ds)
    next(it)  # trace and warm up
    start = time.perf_counter()
    n = 0
    for batch in it:
        n += int(batch.shape[0])
    return n / (time.perf_counter() - start)


def repeats(make, size):
    a = [b.numpy() for b in make(source(size, 3))]
    b = [b.numpy() for b in make(source(size, 3))]
    return all(np.array_equal(x, y) for x, y in zip(a, b))


class _StepTimes(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def placement(batches):
    """SimCLR step throughput with augmentation on the host vs in the step.

    One `fit` per placement; the median step time after 3 warm-up steps (the
    first steps trace, XLA-compile the augmenter and fill the prefetch buffer).
    """
    rng = np.random.default_rng(0)
    x = (rng.random((BATCH * 4, 32, 32, 3)) * 255).astype("uint8")
    results = {}
    for where in ("host (tf.data)", "in the train step"):
        keras.utils.set_random_seed(0)
        model = kc.SimCLR(
            kc.encoders.ResNet18((32, 32, 3), width_multiplier=0.25),
            kc.augment.SimCLRAugmenter(32, color_jitter_strength=0.5),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        if where.startswith("host"):
            data = model.views_dataset(tf.data.Dataset.from_tensor_slices(x), BATCH, repeat=True)
        else:
            data = tf.data.Dataset.from_tensor_slices(x).repeat().batch(BATCH, drop_remainder=True).prefetch(2)
        timer = _StepTimes()
        timer.times = []
        model.fit(data, epochs=1, steps_per_epoch=batches + 3, verbose=0, callbacks=[timer])
        results[where] = BATCH / np.median(timer.times[3:])
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--skip_placement", action="store_true", help="only the augmentation table")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 96], help="image sizes (e.g. 32 96 224)")
    parser.add_argument("--only", nargs="+", default=None, help="pipelines to run (default: all three)")
    args = parser.parse_args()
    pipelines = (
        ("keras_contrastive", ours),
        ("keras-cv 0.9", keras_cv_pipeline),
        ("keras-cv via LayerAugmenter", keras_cv_seeded),
    )
    pipelines = [(name, factory) for name, factory in pipelines if args.only is None or name in args.only]
    print(f"Augmentation in tf.data.map, batch {BATCH}, RGB uint8 input; views/s (repeats = same seed, same views)")
    for size in args.sizes:
        for blur in (False, True):
            row = []
            for name, factory in pipelines:
                speed = measure(factory(size, blur), size, args.batches)
                row.append(f"{name} {speed:8.0f} (repeats: {'yes' if repeats(factory(size, blur), size) else 'no'})")
            print(f"{size}x{size}{' + blur' if blur else '       '}  " + "   ".join(row))
    if args.skip_placement:
        return
    print(f"SimCLR step, ResNet-18 width 0.25, 32x32, batch {BATCH}, augmentation placement; images/s")
    for where, speed in placement(args.train_steps).items():
        print(f"  augmentation {where:<20} {speed:7.1f}")


if __name__ == "__main__":
    main()
