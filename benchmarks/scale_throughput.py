"""SimCLR training throughput on 1, 2 and 4 replicas, float32 and mixed_bfloat16.

Run: python benchmarks/scale_throughput.py [--replicas 1 2 4] [--steps 12] [--width 0.25]

The CPU is split into 4 logical devices and MirroredStrategy runs over 1, 2 or 4
of them (1 = the default strategy), with the global batch fixed at 256: every
replica count computes the same thing (synchronized BN, negatives gathered from
all replicas). The logical devices share the same 2 cores, so this measures what
the replication costs (all-gathers, BN all-reduces, gradient all-reduce, the
per-replica step overhead), not a speed-up. Prints median images/s and the ratio
to 1 replica. Figures go to benchmarks/RESULTS.md.
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_contrastive as kc  # noqa: E402

BATCH, SIZE, LOGICAL = 256, 32, 4


class StepTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._t)


def strategy(replicas):
    if replicas == 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def bench(replicas, precision, width, steps):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    with strategy(replicas).scope():
        encoder = kc.encoders.ResNet18((SIZE, SIZE, 3), width_multiplier=width)  # BN synchronized when replicas > 1
        model = kc.SimCLR(encoder, temperature=0.5, head_version=2)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    views = np.random.default_rng(0).random((BATCH, 2, SIZE, SIZE, 3)).astype("float32")
    timer = StepTimer()
    model.fit(tf.data.Dataset.from_tensors(views).repeat(steps), epochs=1, verbose=0, callbacks=[timer])
    keras.mixed_precision.set_global_policy("float32")
    return BATCH / np.median(timer.times[2:])


def in_subprocess(replicas, precision, width, steps):
    """One configuration per process: MirroredStrategies over different device
    counts in one process collide in TensorFlow's collective group keys."""
    cmd = [sys.executable, __file__, "--one", str(replicas), precision, "--width", str(width), "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL)
        print(bench(int(args.one[0]), args.one[1], args.width, args.steps))
        return
    print(f"SimCLR (v2 head), ResNet-18 width {args.width}, {SIZE}x{SIZE}x3, global batch {BATCH}; median images/s")
    base = {}
    for precision in args.precision:
        row = f"{precision:<15}"
        for replicas in args.replicas:
            speed = in_subprocess(replicas, precision, args.width, args.steps)
            base.setdefault(precision, speed)
            row += f"   {replicas} replica(s) {speed:7.1f} (x{speed / base[precision]:4.2f})"
        print(row, flush=True)
    if len(args.precision) > 1:
        print("bfloat16 / float32 at each replica count is the ratio of the rows above.")


if __name__ == "__main__":
    main()
