"""Runs a recipe in this process, then saves the trained model's variables to an .npz file.

For the multi-worker tests, which start it once per worker (TF_CONFIG set) and
once as a one-process MirroredStrategy reference over logical CPUs:

    python tests/recipe_runner.py simclr out.npz [--logical_cpus N] -- <recipe flags>

Not a test module (pytest collects `test_*.py` only).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "--deterministic" in sys.argv[1 : sys.argv.index("--") if "--" in sys.argv else None]:
    # Op determinism does not cover oneDNN's thread count: a convolution run from an inter-op thread
    # may split its reduction over 1 or 2 threads depending on the machine's load, and a few SGD
    # steps at lr 0.3 amplify that rounding to 1e-4 (seen in CI). One thread of each kind makes two
    # runs of one command bit-identical whatever else the machine is doing.
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("weights_path")
    parser.add_argument("--logical_cpus", type=int, default=0, help="run --strategy mirrored over N logical CPUs")
    parser.add_argument(
        "--kill_at_step", type=int, default=0, help="SIGKILL this process once N training steps are done"
    )
    parser.add_argument(
        "--deterministic", action="store_true", help="op determinism, one intra-op and one inter-op thread"
    )
    parser.add_argument(
        "--record_shards", default=None, help="write the input contexts kc.data.load is called with to this JSON file"
    )
    parser.add_argument(
        "--mock_tfds", type=int, default=0, help="run under tfds.testing.mock_data with N examples per split"
    )
    own = parser.parse_args(argv[:split])
    recipe_argv = argv[split + 1 :]

    import common  # noqa: E402

    import keras_contrastive as kc  # noqa: E402

    if own.deterministic:
        tf.config.experimental.enable_op_determinism()
    if own.logical_cpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * own.logical_cpus)
        devices = [f"/cpu:{i}" for i in range(own.logical_cpus)]
        kc.distribute.strategy = lambda *args, **kwargs: tf.distribute.MirroredStrategy(devices)

    if own.record_shards:
        import json

        load, shards = kc.data.load, []

        def recording_load(*args, input_context=None, **kwargs):
            dataset = load(*args, input_context=input_context, **kwargs)
            if input_context is not None:
                count = int(dataset.cardinality())
                shards.append([input_context.input_pipeline_id, input_context.num_input_pipelines, count])
                with open(own.record_shards, "w") as f:
                    json.dump(shards, f)
            return dataset

        kc.data.load = recording_load

    trained = {}
    fit = common.fit

    def fit_and_keep(args, model, views, *rest, **kwargs):
        trained["model"] = model
        return fit(args, model, views, *rest, **kwargs)

    common.fit = fit_and_keep

    import keras

    class Counter(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            Counter.batches += 1

    counter = Counter()
    extra = [counter]
    if own.kill_at_step:
        import signal

        class KillAt(keras.callbacks.Callback):
            # Before the next step starts: every callback (epoch-end backups too) has seen step N.
            def on_train_batch_begin(self, batch, logs=None):
                if int(self.model.optimizer.iterations.numpy()) >= own.kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)

        extra.append(KillAt())
    callbacks = common.callbacks
    common.callbacks = lambda *args, **kwargs: callbacks(*args, **kwargs) + extra
    module = __import__(own.recipe)
    if own.mock_tfds:
        import tensorflow_datasets as tfds

        with tfds.testing.mock_data(num_examples=own.mock_tfds):
            module.main(recipe_argv)
    else:
        module.main(recipe_argv)
    model = trained["model"]
    arrays = {f"{i:04d}_{v.path}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
    arrays["optimizer_iterations"] = np.asarray(model.optimizer.iterations.numpy())
    arrays["batches_run"] = np.asarray(counter.batches)
    arrays["jit_compile"] = np.asarray(bool(model.jit_compile))
    np.savez(own.weights_path, **arrays)


if __name__ == "__main__":
    main()
