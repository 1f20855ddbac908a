"""SimCLR step time and peak memory against replicas and global batch size, float32 and mixed_bfloat16.

Run:
    python benchmarks/scale_throughput.py                          # 1, 2, 4 replicas at batch 256
    python benchmarks/scale_throughput.py --replicas 1 --batch_sizes 256 512 1024 2048 4096

The CPU is split into 4 logical devices and MirroredStrategy runs over 1, 2 or 4
of them (1 = the default strategy). At a given global batch every replica count
computes the same thing (synchronized BN, negatives gathered from all
replicas). The logical devices share the same 2 cores, so the replica columns
measure what the replication costs (all-gathers, BN all-reduces, gradient
all-reduce, the per-replica step overhead), not a speed-up.

Each configuration runs in a process of its own and reports: median images/s
and seconds per step, the process' peak resident memory (`ru_maxrss`), and the
NT-Xent loss alone (forward and backward on random 128-d embeddings of the
global batch: the 2N x 2N similarity matrix that grows as N^2) with its logits'
size. Prints ratios to the first column. Figures go to benchmarks/RESULTS.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from throughput import StepTimer  # noqa: E402 (benchmarks/throughput.py)

import keras_contrastive as kc  # noqa: E402

SIZE, LOGICAL = 32, 4


def strategy(replicas):
    if replicas == 1:
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def bench(replicas, precision, width, steps, batch):
    """Seconds per step (median after 2 warm-up steps) of SimCLR on `batch` random images."""
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    with strategy(replicas).scope():
        encoder = kc.encoders.ResNet18((SIZE, SIZE, 3), width_multiplier=width)  # BN synchronized when replicas > 1
        model = kc.SimCLR(encoder, temperature=0.5, head_version=2)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    views = np.random.default_rng(0).random((batch, 2, SIZE, SIZE, 3)).astype("float32")
    timer = StepTimer()
    model.fit(tf.data.Dataset.from_tensors(views).repeat(steps), epochs=1, verbose=0, callbacks=[timer])
    keras.mixed_precision.set_global_policy("float32")
    return float(np.median(timer.times[2:]))


def bench_loss(batch, dim=128, repeats=10):
    """Seconds for NT-Xent's value and gradient on `batch` pairs of `dim`-d embeddings (one replica)."""
    rng = np.random.default_rng(0)
    z1, z2 = (tf.constant(rng.standard_normal((batch, dim)), tf.float32) for _ in range(2))

    @tf.function
    def value_and_grad(z1, z2):
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss = kc.losses.nt_xent(z1, z2, 0.5)
        return loss, tape.gradient(loss, [z1, z2])

    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        [t.numpy() for t in tf.nest.flatten(value_and_grad(z1, z2))]
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:]))


def peak_rss_gib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def in_subprocess(replicas, precision, width, steps, batch):
    """One configuration per process (MirroredStrategies over different device counts in one process collide in
    TensorFlow's collective group keys, and the peak memory is the process'). None if it fails (out of memory)."""
    cmd = [sys.executable, __file__, "--one", str(replicas), precision, str(batch)]
    cmd += ["--width", str(width), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {replicas} replica(s), {precision}, batch {batch}: failed (rc {proc.returncode})", flush=True)
        print("  " + "\n  ".join(proc.stderr.strip().splitlines()[-3:]), flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[256], help="global batch sizes")
    parser.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=12, help="steps per configuration, the first 2 not timed")
    parser.add_argument("--one", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL)
        replicas, precision, batch = int(args.one[0]), args.one[1], int(args.one[2])
        step = bench(replicas, precision, args.width, args.steps, batch)
        loss = bench_loss(batch)
        print(json.dumps(dict(step=step, loss=loss, peak_gib=peak_rss_gib())))
        return
    print(f"SimCLR (v2 head), ResNet-18 width {args.width}, {SIZE}x{SIZE}x3; median over {args.steps - 2} steps")
    header = "precision        replicas  batch   images/s  s/step  x first  peak GiB  logits MiB  loss fwd+bwd"
    print(header)
    for precision in args.precision:
        first = None
        for replicas in args.replicas:
            for batch in args.batch_sizes:
                f = in_subprocess(replicas, precision, args.width, args.steps, batch)
                if f is None:
                    continue
                speed = batch / f["step"]
                first = first or speed
                logits_mib = (2 * batch) ** 2 * 4 / 2**20  # [2N, 2N] float32 over all replicas
                print(
                    f"{precision:<15}  {replicas:>8}  {batch:>5}  {speed:>9.1f}  {f['step']:>6.2f}  "
                    f"{speed / first:>7.2f}  {f['peak_gib']:>8.2f}  {logits_mib:>10.1f}  {f['loss'] * 1e3:>9.1f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
