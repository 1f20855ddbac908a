"""Everything that touches `tf.distribute`: choosing a strategy, and the collectives of a step.

Losses and trainers call these helpers and never `tf.distribute` directly, so
the same code runs under the default strategy, MirroredStrategy,
MultiWorkerMirroredStrategy and TPUStrategy.
"""

import json
import os

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # XLA context: no public name

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def strategy(name="auto", tpu=None, collective_timeout=None):
    """A `tf.distribute.Strategy` by name, built on TensorFlow's own resolvers.

    Args:
        name: str. "default" (one device), "mirrored" (all local GPUs, or the
            CPU), "multi_worker" (MultiWorkerMirroredStrategy from the
            `TF_CONFIG` environment variable), "tpu" (TPUStrategy through
            `TPUClusterResolver`), or "auto": a TPU if `tpu` is given, the
            multi-worker strategy if `TF_CONFIG` names several workers,
            mirrored over the GPUs if there are several, else the default.
        tpu: str or None. The TPU's address or name, or "local" on a TPU VM.
            Defaults to None ("local" when `name == "tpu"`).
        collective_timeout: float or None. Multi-worker only: seconds after
            which a collective (all-reduce, all-gather) that is still waiting
            for another worker fails, so that a run whose worker died ends
            with an error instead of hanging. It bounds every collective,
            including the first one (which waits for all workers to start and
            compile), so keep it well above the slowest step. None (the
            default) waits forever, as TensorFlow does.

    Returns:
        A `tf.distribute.Strategy`. Build and compile models under its
        `scope()`; `model.fit` then splits each global batch over its
        `num_replicas_in_sync` replicas.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}.")
    if name == "auto":
        if tpu:
            name = "tpu"
        elif len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])) > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "The multi_worker strategy reads the cluster from the TF_CONFIG environment variable, which is not set."
            )
        # A collective that waits longer than this fails, so that when a
        # worker dies the others exit with an error instead of hanging.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except RuntimeError as error:
            if "program startup" not in str(error):
                raise
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before TensorFlow runs any op "
                "(loading data, seeding, building a model): call "
                "keras_contrastive.distribute.strategy('multi_worker') first in the program."
            ) from error
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def sync_batch_norm_default(synchronized_bn=None):
    """Resolves a `synchronized_bn` argument: None means "when there are several replicas".

    Called when a model is built: under a strategy's `scope()` with more than
    one replica (MirroredStrategy over several devices, every multi-worker
    and TPU strategy) BatchNorm must be synchronized, or N replicas would
    normalize by N different local statistics and compute something else
    than one replica does on the same global batch; with one replica
    synchronized and plain BN are the same, and plain BN is the simpler
    layer to export and reload.

    Args:
        synchronized_bn: bool or None.

    Returns:
        bool.
    """
    if synchronized_bn is None:
        return tf.distribute.get_strategy().num_replicas_in_sync > 1
    return bool(synchronized_bn)


def in_xla_context():
    """True while tracing code that XLA compiles (`jit_compile=True`, or a TPU step).

    Ops that pick a kernel at trace time (kc.layers.Conv2D's kernel gradient, the Gaussian blur) ask this:
    what is fastest outside XLA is not what XLA compiles best. TensorFlow has no public name for it.
    """
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _replica_context():
    # Outside `strategy.run` (eager calls, the default strategy) there is still a
    # default replica context with one replica, so callers need no special case.
    return tf.distribute.get_replica_context()


def num_replicas():
    """Number of replicas that run the current step in sync (1 without a strategy)."""
    ctx = _replica_context()
    if ctx is None:  # cross-replica context: `strategy.num_replicas_in_sync`
        return tf.distribute.get_strategy().num_replicas_in_sync
    return ctx.num_replicas_in_sync


def replica_id():
    """This replica's position in the sync group, as an int32 scalar tensor."""
    ctx = _replica_context()
    if ctx is None:
        return tf.constant(0, tf.int32)
    rid = ctx.replica_id_in_sync_group
    return tf.cast(rid, tf.int32)


def all_gather(x, axis=0):
    """Concatenates `x` from every replica along `axis`, in replica order.

    Differentiable: TensorFlow defines the gradient of `ReplicaContext.all_gather`
    as the all-reduced (summed) upstream gradient sliced back to this replica's
    part. That is what makes contrastive losses with cross-replica negatives
    exact: replica r's loss also depends on replica s's embeddings, and those
    terms reach replica s's backward pass through the sum.

    Args:
        x: Tensor, `[local_batch, ...]`.
        axis: int. Axis to concatenate along. Defaults to 0.

    Returns:
        Tensor `[num_replicas * local_batch, ...]` (for `axis=0`). Without a
        strategy this is `x` itself.
    """
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_gather(x, axis=axis)


def all_reduce_sum(x):
    """Sum of `x` over replicas (identity with one replica)."""
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def global_offset(local_batch):
    """Index of this replica's first example within the gathered global batch.

    After `all_gather`, replica r's examples sit at rows
    `[r * local_batch, (r + 1) * local_batch)`; a loss that looks up "my own
    row" or "my positive's row" in the gathered tensor adds this offset.
    """
    return replica_id() * tf.cast(local_batch, tf.int32)


def check_even_split(local_batch):
    """Fails with a clear message unless every replica holds `local_batch` examples.

    Cross-replica losses index the gathered batch by `replica_id *
    local_batch`, which is only right when the global batch divides evenly
    over the replicas; tf.distribute otherwise gives the replicas uneven
    slices (e.g. 3 and 2 of a batch of 5) without complaint.

    Args:
        local_batch: int32 scalar, this replica's batch size.

    Returns:
        An assert op (None with one replica), already run in eager mode and
        ordered automatically inside `tf.function`.
    """
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    sizes = ctx.all_gather(tf.reshape(tf.cast(local_batch, tf.int32), [1]), axis=0)
    return tf.debugging.assert_equal(
        sizes,
        tf.fill(tf.shape(sizes), sizes[0]),
        message=(
            f"The global batch must split evenly over the {ctx.num_replicas_in_sync} "
            "replicas (batch the data with a global batch size divisible by the number "
            "of replicas, and drop_remainder=True). Per-replica batch sizes:"
        ),
        summarize=ctx.num_replicas_in_sync,
    )


def is_chief(strategy=None):
    """Whether this process writes checkpoints, logs and exports.

    True everywhere except on the non-chief workers of a multi-worker run
    (TensorFlow's own `strategy.extended.should_checkpoint`: the task "chief",
    or worker 0 when the cluster has no chief).

    Args:
        strategy: a `tf.distribute.Strategy` or None: the strategy whose scope
            is entered, or, outside every scope, the cluster that the
            `TF_CONFIG` environment variable describes.
    """
    if strategy is None and not tf.distribute.has_strategy():
        # Outside any scope: the role TF_CONFIG gives this process.
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        cluster = resolver.cluster_spec().as_dict()
        if not cluster:
            return True
        if "chief" in cluster:
            return resolver.task_type == "chief"
        return resolver.task_type == "worker" and resolver.task_id == 0
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def _multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def keras_reducible(logs):
    """Makes a train/test step's logs reducible by Keras' TF trainer under every strategy.

    Keras' TF trainer (read and tested on Keras 3.15.1) reduces the logs of each
    step with `strategy.reduce("MEAN", value, axis=0)` when the strategy is a
    multi-worker MultiWorkerMirroredStrategy, which fails on the scalar
    metrics every step returns (keras-team/keras#20585). Under that strategy
    only, scalars become shape `[1]`; the reduction then averages them over
    the replicas of all workers, which is what Keras computes for
    MirroredStrategy. Everywhere else `logs` is returned untouched.

    Args:
        logs: dict of metric name to tensor, as returned by `train_step`.

    Returns:
        The same dict.
    """
    if not _multi_worker(tf.distribute.get_strategy()):
        return logs
    return {k: tf.reshape(v, [1]) if v.shape.rank == 0 else v for k, v in logs.items()}


class MultiWorkerFit:
    """Mixin that makes Keras' own `fit` / `evaluate` run under MultiWorkerMirroredStrategy.

    For plain models trained with Keras' `train_step` (a cross-entropy
    baseline, a fine-tuned classifier); the trainers of this package already
    do both things themselves. Put it first among the bases:

        class Classifier(kc.distribute.MultiWorkerFit, keras.Model): ...
        model = Classifier(inputs, logits)  # Functional construction works

    It works around two failures of Keras' TF trainer (read on Keras 3.15.1,
    keras-team/keras#20585): the step's scalar logs are reduced with
    `axis=0` (see `keras_reducible`), and before training Keras takes the
    first batch from a throw-away iterator and MEAN-reduces it across
    replicas to build the compiled metrics, which fails on per-replica values
    in eager mode and on integer labels. Here the metrics are built from a
    zero batch with the dataset's per-replica shapes and dtypes instead.
    Under every other strategy both are left to Keras.
    """

    def train_step(self, data):
        return keras_reducible(super().train_step(data))

    def test_step(self, data):
        return keras_reducible(super().test_step(data))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        adapter = getattr(iterator, "data_adapter", None)
        if data_batch is None and adapter is not None and _multi_worker(self.distribute_strategy):

            def zeros_like(spec):
                # A dataset from `distribute_datasets_from_function` has one spec per local replica.
                spec = (getattr(spec, "_value_specs", None) or [spec])[0]
                return tf.zeros([1] + [1 if d is None else d for d in spec.shape[1:]], spec.dtype)

            zeros = tf.nest.map_structure(zeros_like, adapter.get_tf_dataset().element_spec)
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=zeros)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
