"""What every trainer's step owes the user: the model's own losses, refused sample weights,
checked probe labels, and a config that round-trips every constructor argument."""

import gc
import inspect
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_views

import keras_contrastive as kc

L2 = 0.05
L1_ACTIVITY = 0.01


def regularized_encoder(seed=0):
    """Conv (L2 kernel regularizer) -> ReLU -> pool -> Dense (L1 activity regularizer); no BN."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(8, 3, kernel_regularizer=keras.regularizers.L2(L2), name="conv")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activity_regularizer=keras.regularizers.L1(L1_ACTIVITY), name="dense")(x)
    return keras.Model(inputs, x, name="regularized")


def hand_penalty(encoder, images):
    """Independent computation of the penalty of one encoder call on `images`.

    Keras 3 divides an activity regularizer's value by the batch size of the call.
    """
    kernel = encoder.get_layer("conv").kernel
    return L2 * tf.reduce_sum(tf.square(kernel)) + activity_penalty(encoder, images)


def activity_penalty(encoder, images):
    dense_out = keras.Model(encoder.input, encoder.get_layer("dense").output)(images, training=True)
    return L1_ACTIVITY * tf.reduce_sum(tf.abs(dense_out)) / len(images)


def one_sgd_step(model, views):
    kernel_before = model.encoder.get_layer("conv").kernel.numpy().copy()
    history = model.fit(views, batch_size=len(views), epochs=1, verbose=0, shuffle=False).history
    return history["loss"][0], kernel_before - model.encoder.get_layer("conv").kernel.numpy()


def test_simclr_loss_and_gradient_include_kernel_and_activity_regularizers():
    views = random_views(8)
    model = kc.SimCLR(regularized_encoder(), temperature=0.5, projection_dim=4, head_version=1)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    encoder, head = model.encoder, model.projection_head
    images = np.concatenate([views[:, 0], views[:, 1]])
    kernel = encoder.get_layer("conv").kernel
    with tf.GradientTape() as tape:
        z = head(encoder(images, training=True), training=True)
        contrastive = kc.losses.nt_xent(z[:8], z[8:], 0.5)
        penalty = hand_penalty(encoder, images)
        expected_loss = contrastive + penalty
    expected_step = 0.1 * tape.gradient(expected_loss, kernel).numpy()
    assert float(penalty) > 0.01 * float(contrastive)  # large enough to be seen
    loss, step = one_sgd_step(model, views)
    np.testing.assert_allclose(loss, float(expected_loss), rtol=1e-5)
    np.testing.assert_allclose(step, expected_step, rtol=1e-4, atol=1e-7)


def test_moco_v3_counts_activity_losses_of_both_views_and_not_of_the_momentum_branch():
    views = random_views(8)
    model = kc.MoCoV3(regularized_encoder(), temperature=0.2, hidden_dim=8, projection_dim=4, synchronized_bn=False)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    q = [
        model.predictor(model.projector(model.encoder(views[:, v], training=True), training=True), training=True)
        for v in range(2)
    ]
    k = [model.momentum_projector(model.momentum_encoder(views[:, v], training=True), training=True) for v in range(2)]
    contrastive = kc.losses.info_nce(q[0], k[1], 0.2) + kc.losses.info_nce(q[1], k[0], 0.2)
    kernel_penalty = L2 * tf.reduce_sum(tf.square(model.encoder.get_layer("conv").kernel))
    activity = sum(activity_penalty(model.encoder, views[:, v]) for v in range(2))
    expected = float(contrastive + kernel_penalty + activity)
    loss, _ = one_sgd_step(model, views)  # the step's loss is computed before the update
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # The momentum branch has the same regularizers, but only the query branch is penalized.
    assert len(model.regularized_layers()) == 3


@pytest.mark.fit_raises
def test_sample_weight_is_refused_with_a_clear_error():
    model = kc.SimCLR(regularized_encoder(), projection_dim=4, num_classes=3)
    model.compile(optimizer="sgd")
    labels = np.arange(8) % 3
    with pytest.raises(ValueError, match="does not take sample weights"):
        model.fit(random_views(8), labels, sample_weight=np.ones(8), batch_size=8, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((random_views(8), labels, np.ones(8))).batch(8)
    with pytest.raises(ValueError, match="does not take sample weights"):
        model.evaluate(dataset, verbose=0)


@pytest.mark.fit_raises
def test_probe_labels_out_of_range_are_a_clear_error():
    model = kc.SimCLR(regularized_encoder(), projection_dim=4, num_classes=3)
    model.compile(optimizer="sgd")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be integers in \[0, 3\)"):
        model.fit(random_views(8), np.arange(8), batch_size=8, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be integers in \[0, 3\)"):
        model.fit(random_views(8), -np.ones(8, "int64"), batch_size=8, verbose=0)


@pytest.mark.fit_raises
def test_a_fit_that_raises_leaves_its_epoch_iterator_to_the_cyclic_collector():
    """Why the `fit_raises` marker exists (tests/conftest.py): once `fit` has raised, Keras' epoch iterator and
    its suspended generator keep each other alive, so only a full collection frees the tf.data iterator inside.
    If a Keras release breaks that cycle, this fails and the marker can go."""
    model = kc.SimCLR(regularized_encoder(), projection_dim=4, num_classes=3)
    model.compile(optimizer="sgd")
    gc.collect()
    gc.disable()  # an automatic collection in between would free the iterator before it is looked for
    try:
        with pytest.raises(tf.errors.InvalidArgumentError, match="must be integers"):
            model.fit(random_views(8), np.arange(8), batch_size=8, verbose=0)
        left = [weakref.ref(o) for o in gc.get_objects() if type(o).__name__ == "TFEpochIterator"]
        assert left, "no epoch iterator outlived the raised fit"  # weak references to objects alive just now
        gc.collect()
        assert all(ref() is None for ref in left)
    finally:
        gc.enable()


def _non_default_arguments(cls):
    """Constructor arguments (other than objects) with values unlike their defaults."""
    values = {
        "temperature": 0.37,
        "base_temperature": 0.11,
        "projection_dim": 6,
        "projection_hidden_dim": 10,
        "head_version": 1,
        "synchronized_bn": True,
        "num_classes": 4,
        "seed": 7,
        "num_views": 3,
        "contrast_mode": "one",
        "base_momentum": 0.95,
        "total_steps": 33,
        "hidden_dim": 12,
        "projector_layers": 3,
        "predictor_layers": 3,
        "concatenate_views": False,
        "prediction_hidden_dim": 14,
        "num_prototypes": 9,
        "epsilon": 0.03,
        "sinkhorn_iterations": 5,
        "freeze_prototypes_steps": 17,
        "queue_start_step": 19,
    }
    if cls is kc.MoCoV3:
        values["num_views"] = 2
    params = inspect.signature(cls.__init__).parameters
    skip = {
        "self",
        "kwargs",
        "encoder",
        "augmenter",
        "projection_head",
        "negatives",
        "support_set",
        "queue",
    }  # objects: own tests
    missing = [name for name in params if name not in skip and name not in values]
    assert not missing, f"add test values for {missing}"
    return {name: values[name] for name in params if name not in skip}


@pytest.mark.parametrize("cls", [kc.SimCLR, kc.SupCon, kc.MoCoV3, kc.NNCLR, kc.SwAV])
def test_get_config_round_trips_every_constructor_argument(cls):
    arguments = _non_default_arguments(cls)
    model = cls(regularized_encoder(), kc.augment.SimCLRAugmenter(16, blur=False), **arguments)
    config = model.get_config()
    for name, value in arguments.items():
        assert config[name] == value, name
    clone = cls.from_config(config)
    for name, value in arguments.items():
        assert getattr(clone, name) == value, name
