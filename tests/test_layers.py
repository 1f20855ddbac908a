import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import cpu_strategy
from conftest import shard

import keras_contrastive as kc
from keras_contrastive import layers


def all_layers(model):
    """Every layer of `model`, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def batch_norms(model):
    return [l for l in all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]


def randomize_batch_norms(model, seed=0):
    """Non-trivial gamma, beta and moving statistics, so that a layer whose
    weights were not copied (or were copied into the wrong layer) shows."""
    rng = np.random.default_rng(seed)
    for bn in batch_norms(model):
        bn.set_weights(
            [
                rng.uniform(0.5, 1.5, w.shape)
                if "variance" in w.path or "gamma" in w.path
                else rng.normal(0.0, 0.2, w.shape)
                for w in bn.weights
            ]
        )


def small_cnn(seed=0):
    """Two BN layers (one Keras-synchronized) around a nested Sequential block with a third."""
    keras.utils.set_random_seed(seed)
    block = keras.Sequential(
        [
            keras.Input((6, 6, 8)),
            keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-4, center=False, name="block_bn"),
            keras.layers.ReLU(),
        ],
        name="block",
    )
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(
        momentum=0.8, epsilon=1e-2, gamma_regularizer="l2", beta_constraint="non_neg", name="bn1"
    )(x)
    x = keras.layers.ReLU()(x)
    x = block(x)
    x = keras.layers.BatchNormalization(axis=1, momentum=0.0, scale=False, synchronized=True, name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4)(x)
    model = keras.Model(inputs, outputs, name="small_cnn")
    randomize_batch_norms(model, seed)
    return model


def test_small_cnn_every_bn_synchronized_with_same_config_and_outputs():
    model = small_cnn()
    converted = layers.synchronize_batch_norm(model)

    old, new = batch_norms(model), batch_norms(converted)
    assert [l.name for l in new] == ["bn1", "block_bn", "bn2"]
    assert all(type(l) is layers.SyncBatchNormalization for l in new)
    # The original is untouched.
    assert [type(l) for l in old] == [keras.layers.BatchNormalization] * 3
    for before, after in zip(old, new):
        want, got = before.get_config(), after.get_config()
        assert got.pop("synchronized") is True
        want.pop("synchronized")
        assert got == want, before.name  # axis, momentum, epsilon, center/scale, initializers, ...
        for w, v in zip(before.weights, after.weights):
            np.testing.assert_array_equal(v.numpy(), w.numpy(), err_msg=w.path)
    assert new[0].gamma_regularizer is not None and new[0].beta_constraint is not None
    assert (new[1].momentum, new[1].epsilon, new[1].center) == (0.5, 1e-4, False)
    assert (new[2].axis, new[2].scale) == (1, False)

    assert len(converted.weights) == len(model.weights)
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    want = model(x, training=False).numpy()
    np.testing.assert_allclose(converted(x, training=False).numpy(), want, rtol=0, atol=1e-6)
    assert np.abs(want).max() > 0.1  # not a comparison of two zero outputs


def test_dtype_policy_and_existing_sync_layers_are_kept():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(dtype="mixed_bfloat16", name="bf16_bn"),
            layers.SyncBatchNormalization(momentum=0.7, name="already_sync"),
        ]
    )
    randomize_batch_norms(model)
    converted = layers.synchronize_batch_norm(model)
    assert isinstance(converted, keras.Sequential)
    assert [type(l) for l in converted.layers[1:]] == [layers.SyncBatchNormalization] * 2
    assert converted.get_layer("bf16_bn").dtype_policy.name == "mixed_bfloat16"
    assert converted.get_layer("already_sync").momentum == 0.7
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    np.testing.assert_allclose(converted(x).numpy(), model(x).numpy(), rtol=0, atol=1e-6)


def moving_statistics(model, strategy=None):
    """{(layer, variable): [value on each replica]} for every BN of `model`."""
    stats = {}
    for bn in batch_norms(model):
        for v in (bn.moving_mean, bn.moving_variance):
            values = [v.numpy()] if strategy is None else strategy.experimental_local_results(v.value)
            stats[bn.name, v.name] = [np.asarray(value) for value in values]
    return stats


def test_two_replicas_compute_the_statistics_one_replica_computes_on_the_whole_batch():
    rng = np.random.default_rng(0)
    # The replicas' halves differ in mean and spread: local and global statistics differ.
    x = np.concatenate([rng.normal(0.0, 1.0, (4, 8, 8, 3)), rng.normal(2.0, 3.0, (4, 8, 8, 3))]).astype("float32")
    model = small_cnn()
    strategy = cpu_strategy(2)
    with strategy.scope():
        converted = layers.synchronize_batch_norm(model)
        unconverted = keras.models.clone_model(model)
        unconverted.set_weights(model.get_weights())

    want_outputs = model(x, training=True).numpy()  # one replica, whole batch; updates its statistics
    want = moving_statistics(model)

    def step(net):
        @tf.function
        def forward(inputs):
            return strategy.run(lambda v: net(v, training=True), args=(inputs,))

        per_replica = forward(shard(strategy, x))
        return np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])

    got_outputs = step(converted)
    got = moving_statistics(converted, strategy)
    np.testing.assert_allclose(got_outputs, want_outputs, rtol=1e-5, atol=1e-5)
    assert len(got) == 6
    for key, replicas in got.items():
        assert len(replicas) == 2
        for value in replicas:
            np.testing.assert_allclose(value, want[key][0], rtol=1e-5, atol=1e-5, err_msg=str(key))

    # Negative control: the same model with plain BN on the same two halves.
    step(unconverted)
    control = moving_statistics(unconverted, strategy)
    worst = max(np.abs(value - want[key][0]).max() for key, replicas in control.items() for value in replicas)
    assert worst > 0.1, worst


def test_keras_synchronized_bn_is_converted_because_one_pass_variance_cancels():
    # Channels whose mean (1000) is large next to their spread (0.5): E[x^2] - E[x]^2
    # loses the variance to float32 rounding of x^2 ~ 1e6 (ulp 0.06).
    rng = np.random.default_rng(0)
    x = (1000.0 + np.concatenate([rng.normal(0, 0.5, (4, 4)), rng.normal(0.5, 0.5, (4, 4))])).astype("float32")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.0, synchronized=True)(inputs))
    strategy = cpu_strategy(2)
    with strategy.scope():
        converted = layers.synchronize_batch_norm(model)
        keras_synchronized = keras.models.clone_model(model)
    want = x.astype("float64").var(axis=0)
    model(x, training=True)  # Keras' synchronized BN takes one pass even on one replica
    assert np.abs(model.layers[-1].moving_variance.numpy() / want - 1).max() > 1e-2

    def variance_on_two_replicas(net):
        strategy.run(tf.function(lambda v: net(v, training=True)), args=(shard(strategy, x),))
        bn = net.layers[-1]
        return [np.asarray(v) for v in strategy.experimental_local_results(bn.moving_variance.value)]

    for got in variance_on_two_replicas(converted):
        np.testing.assert_allclose(got, want, rtol=1e-4)
    worst = max(np.abs(got / want - 1).max() for got in variance_on_two_replicas(keras_synchronized))
    assert worst > 1e-2, worst


@pytest.mark.parametrize("application,kwargs", [("MobileNetV2", {"alpha": 0.35}), ("ResNet50", {})])
def test_keras_application_nested_in_a_classifier(application, kwargs):
    backbone = getattr(keras.applications, application)(
        input_shape=(32, 32, 3), include_top=False, weights=None, **kwargs
    )
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    randomize_batch_norms(model)

    converted = layers.synchronize_batch_norm(model)
    bns = batch_norms(converted)
    assert len(bns) == len(batch_norms(model)) > 40
    assert all(type(l) is layers.SyncBatchNormalization for l in bns)
    assert len(converted.weights) == len(model.weights)
    assert converted.count_params() == model.count_params()
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    want = model(x, training=False).numpy()
    np.testing.assert_allclose(converted(x, training=False).numpy(), want, rtol=1e-6, atol=1e-6)


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(4)
        self.bn = keras.layers.BatchNormalization()

    def call(self, inputs, training=None):
        return self.bn(self.dense(inputs), training=training)


class PlainBNSubclass(keras.layers.BatchNormalization):
    pass


def test_models_it_cannot_rebuild_raise_a_clear_error():
    model = Subclassed()
    model(np.zeros((2, 3), "float32"))
    with pytest.raises(ValueError, match=r"subclassed model.*batch_normalization\(True\)"):
        layers.synchronize_batch_norm(model)

    # The same model nested in a Functional one: its BN would stay unsynchronized.
    inputs = keras.Input((3,))
    nested = keras.Model(inputs, Subclassed(name="inner")(inputs))
    with pytest.raises(ValueError, match=r"'inner'.*batch_normalization\(True\)"):
        layers.synchronize_batch_norm(nested)

    inputs = keras.Input((3,))
    foreign = keras.Model(inputs, PlainBNSubclass(name="custom_bn")(inputs))
    with pytest.raises(ValueError, match="'custom_bn' is a PlainBNSubclass"):
        layers.synchronize_batch_norm(foreign)


def test_converted_model_saves_and_loads_with_a_frozen_backbone(tmp_path):
    backbone = small_cnn()
    backbone.trainable = False
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(backbone(inputs)))
    converted = layers.synchronize_batch_norm(model)
    # clone_model alone drops a Functional model's own `trainable` flag.
    assert converted.get_layer("small_cnn").trainable is False
    assert len(converted.trainable_weights) == len(model.trainable_weights) == 2

    path = str(tmp_path / "converted.keras")
    converted.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [type(l) for l in batch_norms(loaded)] == [layers.SyncBatchNormalization] * 3
    assert all(l.synchronized for l in batch_norms(loaded))
    assert loaded.get_layer("small_cnn").trainable is False
    assert not any(w.trainable for w in loaded.get_layer("small_cnn").weights)
    assert len(loaded.trainable_weights) == 2
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=0, atol=1e-6)


def test_set_compute_dtype_makes_a_mixed_bfloat16_encoder_compute_and_export_in_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        encoder = kc.encoders.ResNet18((16, 16, 3), stem="cifar", width_multiplier=0.125)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reference = kc.encoders.ResNet18((16, 16, 3), stem="cifar", width_multiplier=0.125)
    reference.set_weights(encoder.get_weights())
    x = np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32")
    want = reference(x, training=False).numpy()
    mixed = keras.ops.convert_to_numpy(keras.ops.cast(encoder(x, training=False), "float32"))
    assert np.abs(mixed - want).max() > 1e-4  # bfloat16 rounding: the conversion has something to fix

    assert kc.layers.set_compute_dtype(encoder) is encoder
    assert {layer.compute_dtype for layer in encoder._flatten_layers()} == {"float32"}
    np.testing.assert_allclose(encoder(x, training=False).numpy(), want, rtol=1e-6, atol=1e-6)
    path = kc.export.export_encoder(encoder, str(tmp_path / "export"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    assert "DT_BFLOAT16" not in str(served.graph.as_graph_def())
    images = (x * 255).round().astype("uint8")
    np.testing.assert_allclose(
        served(images=tf.constant(images))["embeddings"].numpy(),
        reference(images / 255.0, training=False).numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


# The fused BatchNormalization: the same numbers as Keras' layer, through TensorFlow's fused kernel.


def op_types(fn, *args):
    """The op types in the graph `fn` (a tf.function) traces for `args`."""
    return {op.type for op in fn.get_concrete_function(*args).graph.get_operations()}


def bn_training_steps(layer, x, steps=3, mode="graph"):
    """`steps` training-mode calls of `layer` on x, x + 1, ...; the last call's output and gradients
    (inputs, then trainable weights) against a fixed random upstream gradient, the moving statistics
    after, and the op types of the step's graph."""
    upstream = tf.constant(np.random.default_rng(3).normal(size=x.shape), "float32")
    layer.build(x.shape)
    rng = np.random.default_rng(1)  # gamma, beta and moving statistics away from their initial values
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.weights])

    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.cast(layer(inputs, training=True), "float32")
            loss = tf.reduce_sum(outputs * upstream)
        return outputs, tape.gradient(loss, [inputs, *layer.trainable_weights])

    graph = tf.function(step, jit_compile=mode == "jit")
    if mode != "eager":
        step = graph
    for i in range(steps):
        outputs, grads = step(tf.constant(x + i, layer.compute_dtype))
    stats = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    return (
        outputs.numpy(),
        [tf.cast(g, "float32").numpy() for g in grads],
        stats,
        op_types(graph, x.astype(layer.compute_dtype)),
    )


@pytest.mark.parametrize(
    "shape,policy,kwargs,mode",
    [
        ((8, 5, 5, 6), "float32", {}, "graph"),
        ((8, 5, 5, 6), "float32", {}, "jit"),
        ((8, 5, 5, 6), "float32", {}, "eager"),
        ((8, 5, 5, 6), "mixed_bfloat16", {}, "graph"),
        ((12, 6), "float32", {"center": False, "scale": False}, "eager"),
        ((6, 4, 6), "float32", {"axis": 2, "scale": False}, "graph"),
    ],
)
def test_fused_batch_norm_matches_keras_outputs_gradients_and_moving_statistics(shape, policy, kwargs, mode):
    # Few values per channel (8*5*5, 12, 24): the kernel's sample variance differs from the
    # population variance Keras tracks by 0.5% to 9%, which the moving variance must not show.
    x = np.random.default_rng(0).normal(1.5, 2.0, size=shape).astype("float32")
    config = dict(momentum=0.8, epsilon=1e-3, dtype=policy, **kwargs)
    got = bn_training_steps(layers.BatchNormalization(**config), x, mode=mode)
    want = bn_training_steps(keras.layers.BatchNormalization(**config), x, mode=mode)
    assert "FusedBatchNormV3" in got[3] and "FusedBatchNormGradV3" in got[3]
    assert "FusedBatchNormV3" not in want[3]
    # bfloat16 activations: the outputs differ by bfloat16 rounding; everything else is computed in float32.
    tol = dict(rtol=1e-2, atol=1e-2) if policy == "mixed_bfloat16" else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0], want[0], **tol)
    assert len(got[1]) == len(want[1]) == 1 + ("center" not in kwargs) + ("scale" not in kwargs)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
    for g, w in zip(got[2], want[2]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=0)


def test_fused_batch_norm_falls_back_to_keras_where_the_kernel_does_not_apply():
    x = np.random.default_rng(0).normal(1.5, 2.0, size=(4, 3, 3, 5))
    cases = [
        (dict(dtype="float64"), x),  # no float64 kernel
        (dict(axis=1), x.astype("float32")),  # channels first
        (dict(renorm=True), x.astype("float32")),
        (dict(), x.reshape(4, 3, 3, 5, 1)[..., 0:1].repeat(2, -1).astype("float32")),  # rank 5
    ]
    for config, inputs in cases:
        got = bn_training_steps(layers.BatchNormalization(momentum=0.8, **config), inputs)
        want = bn_training_steps(keras.layers.BatchNormalization(momentum=0.8, **config), inputs)
        assert "FusedBatchNormV3" not in got[3], config
        for g, w in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]]):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=str(config))


def test_fused_batch_norm_inference_frozen_and_config_are_keras():
    x = np.random.default_rng(0).normal(1.5, 2.0, size=(4, 3, 3, 5)).astype("float32")
    ours = layers.BatchNormalization(momentum=0.7, epsilon=1e-2, center=False, name="bn")
    theirs = keras.layers.BatchNormalization.from_config(ours.get_config())
    ours.build(x.shape), theirs.build(x.shape)
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.5, 1.5, w.shape) for w in ours.weights]
    ours.set_weights(weights), theirs.set_weights(weights)
    np.testing.assert_array_equal(ours(x, training=False).numpy(), theirs(x, training=False).numpy())
    ours.trainable = theirs.trainable = False  # a frozen BN normalizes by its moving statistics
    np.testing.assert_array_equal(ours(x, training=True).numpy(), theirs(x, training=True).numpy())
    np.testing.assert_array_equal(ours.moving_variance.numpy(), weights[-1].astype("float32"))
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(copy) is layers.BatchNormalization and copy.get_config() == ours.get_config()


def test_synchronized_batch_norm_is_fused_on_one_replica_and_exact_on_two():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, (4, 5, 5, 3)), rng.normal(2.0, 3.0, (4, 5, 5, 3))]).astype("float32")
    fused = bn_training_steps(layers.SyncBatchNormalization(momentum=0.8), x, steps=1)
    assert "FusedBatchNormV3" in fused[3]

    strategy = cpu_strategy(2)
    with strategy.scope():
        layer = layers.SyncBatchNormalization(momentum=0.8)
        layer.build(x.shape)
    rng = np.random.default_rng(1)  # the weights bn_training_steps gives
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.weights])
    upstream = tf.constant(np.random.default_rng(3).normal(size=x.shape), "float32")

    @tf.function
    def step(inputs, up):
        def replica_step(v, u):
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = layer(v, training=True)
                loss = tf.reduce_sum(y * u)
            return y, tape.gradient(loss, [v, *layer.trainable_weights])

        return strategy.run(replica_step, args=(inputs, up))

    outputs, grads = step(shard(strategy, x), shard(strategy, upstream.numpy()))
    # On 2 replicas the fused kernel normalizes with the global statistics; its gradient, which would treat them
    # as constants, is replaced by the layer's own (through the global sums).
    ops_seen = op_types(step, shard(strategy, x), shard(strategy, upstream.numpy()))
    assert "FusedBatchNormV3" in ops_seen and "FusedBatchNormGradV3" not in ops_seen
    local = strategy.experimental_local_results
    joined = [np.concatenate([t.numpy() for t in local(v)]) for v in (outputs, grads[0])]
    np.testing.assert_allclose(joined[0], fused[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(joined[1], fused[1][0], rtol=1e-4, atol=1e-5)
    # gamma and beta: each replica's gradient is its own sum; the optimizer's all-reduce adds them up.
    for got, want in zip(grads[1:], fused[1][1:]):
        np.testing.assert_allclose(sum(t.numpy() for t in local(got)), want, rtol=1e-4, atol=1e-4)
    for value in strategy.experimental_local_results(layer.moving_variance.value):
        np.testing.assert_allclose(np.asarray(value), fused[2][1], rtol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1], ids=["fused", "keras_path"])
def test_synchronized_batch_norm_counts_uneven_shards_exactly(axis):
    # 3 images on one replica, 5 on the other (a last partial batch): the global count is the sum of the local
    # ones, not the local count times the replicas. The count rides in the sum's all-reduce.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, (3, 4, 4, 3)), rng.normal(2.0, 3.0, (5, 4, 4, 3))]).astype("float32")
    reference = layers.SyncBatchNormalization(axis=axis, momentum=0.5)
    want = reference(x, training=True).numpy()
    strategy = cpu_strategy(2)
    with strategy.scope():
        layer = layers.SyncBatchNormalization(axis=axis, momentum=0.5)
        layer.build(x.shape)
    sizes = [0, 3, 8]
    inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[sizes[ctx.replica_id_in_sync_group] : sizes[ctx.replica_id_in_sync_group + 1]])
    )
    outputs = tf.function(lambda v: strategy.run(lambda t: layer(t, training=True), args=(v,)))(inputs)
    got = np.concatenate([t.numpy() for t in strategy.experimental_local_results(outputs)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for value in strategy.experimental_local_results(layer.moving_variance.value):
        np.testing.assert_allclose(np.asarray(value), reference.moving_variance.numpy(), rtol=1e-5)


def test_fused_batch_norm_carries_a_nan_or_inf_batch_to_the_losses():
    # In a graph, TensorFlow fuses the kernel with the ReLU after it, which maps NaN to 0: without the
    # layer's zero-valued loss, a NaN batch would reach neither the outputs nor the loss.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    model = keras.Model(inputs, keras.layers.ReLU()(layers.BatchNormalization()(x)))

    @tf.function
    def step(images):
        outputs = model(images, training=True)
        return outputs, tf.add_n(model.losses)

    images = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype("float32")
    _, loss = step(images)
    assert float(loss) == 0.0
    for bad in (np.nan, np.inf):
        images[1, 2, 3, 0] = bad
        _, loss = step(images)
        assert np.isnan(float(loss)), bad


def conv_gradients(layer, x, upstream, jit=False):
    """Output, input gradient and kernel/bias gradients of `layer` on `x` against a fixed upstream gradient,
    and the op types of the traced step."""

    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.cast(layer(inputs), "float64") * upstream)
        return tape.gradient(loss, [inputs, *layer.trainable_weights])

    fn = tf.function(step, jit_compile=jit)
    grads = fn(tf.constant(x, layer.compute_dtype))
    return [tf.cast(g, "float64").numpy() for g in grads], op_types(fn, tf.constant(x, layer.compute_dtype))


def numpy_kernel_gradient(x, upstream, kernel_shape, padding, stride=1):
    """dL/dkernel of a convolution by its definition, in float64: sum over images and output positions of the
    input patch times the upstream gradient (TensorFlow's SAME pads (out - 1) * stride + k - size in all, the
    extra one at the end)."""
    kh, kw = kernel_shape[:2]
    out_h, out_w = upstream.shape[1:3]
    if padding == "same":
        pads = [max((o - 1) * stride + k - n, 0) for o, k, n in ((out_h, kh, x.shape[1]), (out_w, kw, x.shape[2]))]
        x = np.pad(x, [(0, 0), (pads[0] // 2, pads[0] - pads[0] // 2), (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)])
    grad = np.zeros(kernel_shape)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
            grad[i, j] = np.einsum("nhwc,nhwd->cd", patch, upstream)
    return grad


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel_size", [(3, 3), (2, 4)])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("size", [(7, 6), (8, 5)], ids=["odd_even", "even_odd"])
def test_conv2d_matmul_kernel_gradient_is_the_convolutions_gradient(float64, stride, kernel_size, padding, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *size, 5))
    ref = keras.layers.Conv2D(4, kernel_size, strides=stride, padding=padding)
    ref.build(x.shape)
    ref.set_weights([rng.normal(size=w.shape) for w in ref.weights])
    upstream = rng.normal(size=ref.compute_output_shape(x.shape))
    matmul = layers.Conv2D(4, kernel_size, strides=stride, padding=padding, kernel_gradient="matmul")
    matmul.build(x.shape)
    matmul.set_weights(ref.get_weights())

    want, _ = conv_gradients(ref, x, upstream)
    got, ops_seen = conv_gradients(matmul, x, upstream)
    assert "Conv2DBackpropFilter" not in ops_seen and "MatMul" in ops_seen
    want_kernel = numpy_kernel_gradient(x, upstream, ref.kernel.shape, padding, stride)
    np.testing.assert_allclose(got[1], want_kernel, rtol=1e-10)
    for g, w in zip(got, want):  # input, kernel and bias gradients
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(matmul(x).numpy(), ref(x).numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "policy, shape, channels, want_matmul",
    [
        ("mixed_bfloat16", (2, 4, 4, 128), 16, True),  # C_in >= 128 and C_in >= 4*H*W
        ("mixed_bfloat16", (2, 8, 8, 128), 16, False),
        ("mixed_bfloat16", (2, 2, 2, 64), 16, False),
        ("float32", (2, 4, 4, 512), 8, True),  # C_in >= 512, H*W <= 49
        ("float32", (2, 4, 4, 256), 8, False),
        ("mixed_bfloat16", (2, 8, 8, 128), (16, 2), True),  # stride 2: C_in >= OH*OW/2
        ("mixed_bfloat16", (2, 48, 48, 128), (16, 2), False),
        ("float32", (2, 8, 8, 512), (8, 2), False),
    ],
)
def test_conv2d_auto_kernel_gradient_where_measured_faster_and_never_under_xla(policy, shape, channels, want_matmul):
    channels, stride = channels if isinstance(channels, tuple) else (channels, 1)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=shape).astype("float32")
    layer = layers.Conv2D(channels, 3, strides=stride, padding="same", dtype=policy)
    layer.build(shape)
    upstream = rng.normal(size=(shape[0], shape[1] // stride, shape[2] // stride, channels))
    plain = layers.Conv2D(channels, 3, strides=stride, padding="same", dtype=policy, kernel_gradient="native")
    plain.build(shape)
    plain.set_weights(layer.get_weights())
    got, ops_seen = conv_gradients(layer, x, upstream)
    want, plain_ops = conv_gradients(plain, x, upstream)
    assert ("Conv2DBackpropFilter" not in ops_seen) == want_matmul
    assert "Conv2DBackpropFilter" in plain_ops
    tolerance = 2e-2 if policy == "mixed_bfloat16" else 1e-5
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance * np.abs(w).max())
    # Under XLA the native gradient is kept (the matmuls are slower there).
    _, jit_ops = conv_gradients(layer, x, upstream, jit=True)
    assert "Conv2DBackpropFilter" in jit_ops


def test_conv2d_config_round_trip_and_bad_kernel_gradient():
    layer = layers.Conv2D(8, 3, strides=2, kernel_gradient="native", name="c")
    clone = layers.Conv2D.from_config(layer.get_config())
    assert clone.kernel_gradient == "native" and clone.strides == (2, 2)
    with pytest.raises(ValueError, match="kernel_gradient"):
        layers.Conv2D(8, 3, kernel_gradient="fast")
    # Stride 3 (or dilation) takes the native path even when asked for the matmuls.
    strided = layers.Conv2D(4, 3, strides=3, padding="same", kernel_gradient="matmul")
    strided.build((1, 6, 6, 2))
    _, ops_seen = conv_gradients(strided, np.ones((1, 6, 6, 2)), np.ones((1, 2, 2, 4)))
    assert "Conv2DBackpropFilter" in ops_seen
