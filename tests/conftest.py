"""Test setup: split the CPU into 4 logical devices before TensorFlow starts.

MirroredStrategy over these devices runs the multi-replica code paths (all_gather,
synchronized BatchNorm, gradient all-reduce) on a machine without accelerators.
"""

import gc
import os
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Subprocesses (recipes, workers, serving checks) import this checkout's package,
# whatever an editable install elsewhere points to.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_contrastive as kc  # noqa: E402

#: What `kc.inspect.pictures` draws for a ResNet and for a ViT (written here, apart from `kc.inspect.PICTURES`).
RESNET_PICTURES = {
    "augmented_views",
    "retrieval",
    "embedding_map",
    "similarity_matrix",
    "first_layer_kernels",
    "feature_maps",
}
VIT_PICTURES = {"augmented_views", "retrieval", "embedding_map", "similarity_matrix", "attention_maps"}

NUM_LOGICAL_CPUS = 4

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_LOGICAL_CPUS)]
)


def cpu_strategy(num_replicas):
    """MirroredStrategy over `num_replicas` logical CPUs (1 -> the default strategy)."""
    if num_replicas == 1:
        return tf.distribute.get_strategy()
    devices = [f"/cpu:{i}" for i in range(num_replicas)]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.hookimpl(trylast=True)  # after `-m` has deselected
def pytest_collection_modifyitems(config, items):
    """Deal the slow tests out evenly to the xdist workers, each share starting with them.

    `--dist worksteal` gives each worker one contiguous share of the collection, then moves tests from the end of
    the longest queue to a worker that runs out. In collection order the slow end-to-end tests sit together
    (test_multi_worker.py, test_recipes.py), so one worker got most of them and ran the last alone for minutes
    (a 104 s tail, timed 2026-12-03). Here share w holds every k-th slow test first, then quick tests up to
    worksteal's share size: slow tests start early and what is left to steal at the end is quick.
    """
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers < 2:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    quick = [item for item in items if not item.get_closest_marker("slow")]
    ordered, left = [], len(items)
    for w in range(workers):
        size = left // (workers - w)  # worksteal's share for worker w
        share = slow[w::workers]
        take = max(0, size - len(share)) if w < workers - 1 else len(quick)
        ordered += share + quick[:take]
        quick = quick[take:]
        left -= size
    items[:] = ordered


@pytest.fixture(autouse=True)
def _collect_the_iterators_of_a_fit_that_raised(request):
    """After a test marked `fit_raises`, collect garbage while its tf.data iterators are young.

    When `fit` raises, Keras' epoch iterator and its suspended generator keep each other alive, so the tf.data
    iterator inside goes only when a later full collection finds the cycle, in whatever test runs then. Deleting
    a tf.data iterator can then wait out the current period of its autotuning thread: TensorFlow 2.21's
    `CancellationManager::StartCancel` runs the thread's wake-up callback before it marks itself cancelled, so
    the woken thread can see "not cancelled" and sleep again. The period doubles up to 60 s, so an iterator left
    for minutes stalled an unrelated test for 20-55 s (found with gdb, 2026-12-04: the main thread in
    `RootDataset::Iterator::~Iterator` -> `~LogicalThreadWrapper`, the autotuning thread in a timed wait in
    `Model::OptimizeLoop`). Collected as the test ends, the iterator is seconds old and so is its period.
    A full collection costs about 0.5 s in a worker, too much after every test.
    """
    yield
    if request.node.get_closest_marker("fit_raises"):
        gc.collect()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# Shared by the trainer tests.


def tiny_encoder(channels=1, size=16, synchronized_bn=True, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = kc.layers.batch_normalization(synchronized_bn)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="tiny")


def random_views(n=16, size=16, channels=1, seed=0, num_views=2):
    """Random views whose per-image brightness varies, so that pooled features
    vary across the batch (pure noise pools to nearly constant features, and
    BatchNorm over near-constant features is too ill-conditioned to compare
    replica counts at 1e-5)."""
    rng = np.random.default_rng(seed)
    level = rng.random((n, num_views, 1, 1, 1))
    views = level * 0.7 + 0.3 * rng.random((n, num_views, size, size, channels))
    return views.astype("float32")


def train(model, views, labels=None, batch=16, steps=3):
    data = views if labels is None else (views, labels)
    ds = tf.data.Dataset.from_tensor_slices(data).batch(batch, drop_remainder=True).take(steps)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return history.history


@pytest.fixture
def float64():
    """Equivalence tests run in float64: in float32 even permuting the examples
    of a batch on one replica moves this tiny BN network's weights by ~1e-5
    after a few steps (measured), which would hide real differences."""
    # Keras caches the global dtype policy on first use, so set it with floatx.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def weights_of(model):
    """Model variables in creation order (layer auto-names differ between builds)."""
    return [(v.path, v.numpy()) for v in model.weights]


def shard(strategy, array):
    """Splits `array` along axis 0 into equal per-replica slices of `strategy`."""
    local = len(array) // strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(
            array[ctx.replica_id_in_sync_group * local : (ctx.replica_id_in_sync_group + 1) * local]
        )
    )


def assert_replicas_match_one_replica(build, num_replicas, views, labels=None):
    """Trains `build(strategy)` 3 steps on 1 and on `num_replicas` replicas from the
    same weights and data; loss and every variable (both branches, BN statistics,
    a queue's keys and slots) must agree to 1e-9 (run it under the `float64`
    fixture), and weights must move. Returns `(reference, model, init, reference_history)`."""
    reference = build(cpu_strategy(1))
    init = reference.get_weights()
    ref_hist = train(reference, views, labels)
    model = build(cpu_strategy(num_replicas))
    model.set_weights(init)
    hist = train(model, views, labels)
    np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-9)
    ref_w, got_w = weights_of(reference), weights_of(model)
    assert len(ref_w) == len(got_w)
    for (path, want), (_, got) in zip(ref_w, got_w):
        assert got.dtype == np.float64 or np.issubdtype(got.dtype, np.integer), path  # counters and slots: exact
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=path)
    # The weights did move: the comparison is not between two untouched models.
    assert np.abs(ref_w[0][1] - init[0]).max() > 1e-3
    return reference, model, init, ref_hist


#: Python source for the start of a subprocess that must work without this package and
#: without Keras, as TF Serving does: both become unimportable (checked), then numpy and
#: tensorflow are imported.
def numpy_knn(bank, bank_labels, queries, labels, k=200, temperature=0.1):
    """Weighted kNN accuracy (cosine, exp(s/T) votes) in numpy alone: the tests' independent reference.

    Its source is also pasted into scripts that run in processes without Keras (`inspect.getsource`).
    """
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    similarity = queries @ bank.T
    top = np.argsort(-similarity, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, top, axis=1) / temperature)
    votes = np.stack([(weights * (bank_labels[top] == c)).sum(axis=1) for c in range(10)], axis=1)
    return float(np.mean(votes.argmax(axis=1) == labels))


NO_KERAS_PRELUDE = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, os, sys

    def _blocked(name):
        return name == "keras" or name.startswith("keras.")

    class _Refuse(importlib.abc.Loader):
        def create_module(self, spec):
            raise ImportError(f"import of {spec.name!r} blocked by the test")

        def exec_module(self, module):
            raise ImportError("unreachable")

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith("keras_contrastive"):
                raise ImportError(f"import of {name!r} blocked by the test")
            if _blocked(name):
                return importlib.machinery.ModuleSpec(name, _Refuse())
            return None

    sys.meta_path.insert(0, _Block())

    import numpy as np
    import tensorflow as tf

    for name in ("keras", "keras_contrastive", "keras.src.export"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} was importable: the test is broken")

    """
)
