"""Where a training step's time goes (issue 13, req. 2): TensorFlow's profiler on `fit`, summed by op type.

Traces a few SimCLR (or SupCon / MoCo v3) steps through `model.fit` with `tf.profiler.experimental`, then
reads the trace with xprof's converter (the code behind TensorBoard's profile plugin: `pip install xprof`)
and prints the host self-time of each TensorFlow op type, its share of the step and the step's
wall time. The trace itself stays in `--logdir` for TensorBoard's trace viewer (`tensorboard --logdir
<logdir>`, Profile tab).

    python benchmarks/profile_step.py --width 0.25 --precision float32
    python benchmarks/profile_step.py --width 1.0 --precision mixed_bfloat16 --steps 3
    python benchmarks/profile_step.py --width 0.25 --precision mixed_bfloat16 --per_view

Figures go to benchmarks/RESULTS.md. Not a test: nothing here asserts.
"""

import argparse
import glob
import json
import os
import tempfile
import time
from collections import defaultdict

import keras
import numpy as np
import tensorflow as tf

import keras_contrastive as kc

SIZE = 32


def build(method, width, batch, per_view=False):
    encoder = kc.encoders.ResNet18((SIZE, SIZE, 3), width_multiplier=width)
    if method == "simclr":
        model = kc.SimCLR(encoder, temperature=0.5, head_version=1, concatenate_views=not per_view)
    elif method == "supcon":
        model = kc.SupCon(encoder, temperature=0.1)
    else:
        model = kc.MoCoV3(encoder, temperature=0.2, hidden_dim=1024, projection_dim=256)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    rng = np.random.default_rng(0)
    views = rng.random((batch, 2, SIZE, SIZE, 3)).astype("float32")
    data = (views, rng.integers(0, 10, batch)) if method == "supcon" else views
    return model, data


def op_table(logdir):
    """`[(op type, self time in us, occurrences)]` from the newest trace in `logdir`, slowest first."""
    from xprof.convert import raw_to_tool_data  # the benchmark's own extra: pip install xprof

    (path,) = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1:]
    data, _ = raw_to_tool_data.xspace_to_tool_data([path], "framework_op_stats", {})
    tables = json.loads(data)
    # The first table is the host's ops (the CPU is the "host" here), in the gviz DataTable layout.
    table = tables[0] if isinstance(tables, list) else tables
    columns = [c["id"] for c in table["cols"]]
    rows = [{col: (cell or {}).get("v") for col, cell in zip(columns, row["c"])} for row in table["rows"]]
    by_type = defaultdict(lambda: [0.0, 0])
    for row in rows:
        by_type[row["type"]][0] += float(row["total_self_time"])
        by_type[row["type"]][1] += int(row["occurrences"])
    return sorted(((t, us, n) for t, (us, n) in by_type.items()), key=lambda r: -r[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="simclr", choices=["simclr", "supcon", "mocov3"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="steps traced (after 3 untraced warm-up steps)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--logdir", default=None)
    parser.add_argument(
        "--per_view", action="store_true", help="SimCLR with concatenate_views=False (step_speed's kc_simclr_per_view)"
    )
    args = parser.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="kc_profile_")
    keras.mixed_precision.set_global_policy(args.precision)
    model, data = build(args.method, args.width, args.batch_size, args.per_view)
    ds = tf.data.Dataset.from_tensors(data).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up outside the profile
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    table = op_table(logdir)
    idle = sum(us for op, us, _ in table if op == "IDLE")  # the op threads' waiting, not work
    table = [row for row in table if row[0] != "IDLE"]
    total = sum(us for _, us, _ in table)
    print(
        f"{args.method}{' per view' if args.per_view else ''}, ResNet-18 width {args.width}, {args.precision}, batch {args.batch_size}, 2 views at "
        f"{SIZE}x{SIZE}: {args.steps} steps in {wall:.2f} s ({args.batch_size * args.steps / wall:.0f} images/s "
        f"under the profiler); op self-time {total / 1e6 / args.steps:.3f} s per step, threads idle "
        f"{idle / 1e6 / args.steps:.3f} s per step (2 cores: up to 2x wall)"
    )
    print(f"{'op type':<40} {'ms/step':>9} {'share':>7} {'calls/step':>11}")
    for op, us, n in table[: args.top]:
        print(f"{op:<40} {us / 1e3 / args.steps:9.1f} {us / total:7.1%} {n / args.steps:11.1f}")
    print(f"trace: tensorboard --logdir {logdir}")


if __name__ == "__main__":
    main()
