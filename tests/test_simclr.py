import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_replicas_match_one_replica
from conftest import cpu_strategy
from conftest import random_views
from conftest import tiny_encoder
from conftest import train
from conftest import weights_of

import keras_contrastive as kc


def build(strategy, synchronized_bn=True, num_classes=None, head_version=2, learning_rate=0.01, **compile_kwargs):
    with strategy.scope():
        model = kc.SimCLR(
            tiny_encoder(synchronized_bn=synchronized_bn),
            temperature=0.2,
            projection_dim=8,
            head_version=head_version,
            synchronized_bn=synchronized_bn,
            num_classes=num_classes,
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), **compile_kwargs)
    return model


@pytest.mark.parametrize("num_replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_replicas_compute_what_one_replica_computes(num_replicas, float64):
    assert_replicas_match_one_replica(build, num_replicas, random_views(48))


def test_unsynchronized_bn_differs_across_replicas():
    """Negative control: without synchronized BN the moving statistics differ."""
    views = random_views(48)
    reference = build(cpu_strategy(1), synchronized_bn=False)
    init = reference.get_weights()
    train(reference, views)
    model = build(cpu_strategy(2), synchronized_bn=False)
    model.set_weights(init)
    train(model, views)
    ref_var = [v for v in reference.encoder.weights if "moving_variance" in v.path][0].numpy()
    got_var = [v for v in model.encoder.weights if "moving_variance" in v.path][0].numpy()
    assert np.abs(ref_var - got_var).max() > 1e-4


def test_loss_is_nt_xent_of_the_projections():
    model = build(cpu_strategy(1))
    views = random_views(8)
    logs = model.evaluate(views, batch_size=8, verbose=0, return_dict=True)
    feats = model.encoder(np.concatenate([views[:, 0], views[:, 1]]), training=False)
    z = model.projection_head(feats, training=False).numpy()
    expected = kc.losses.nt_xent(z[:8], z[8:], 0.2)
    np.testing.assert_allclose(logs["loss"], float(expected), rtol=1e-5)


@pytest.mark.parametrize("concatenate_views", [True, False])
def test_batch_norm_statistics_span_all_views_or_one_view(concatenate_views):
    """Training-mode loss against the encoder and head called by hand: on the 2N views at once, or per view."""
    with cpu_strategy(1).scope():
        model = kc.SimCLR(tiny_encoder(), temperature=0.2, projection_dim=8, concatenate_views=concatenate_views)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    views = random_views(8)
    loss = model.train_on_batch(views, return_dict=True)["loss"]

    def projections(images):
        return model.projection_head(model.encoder(images, training=True), training=True).numpy()

    together = projections(np.concatenate([views[:, 0], views[:, 1]]))
    per_view = np.concatenate([projections(views[:, 0]), projections(views[:, 1])])
    expected, other = (together, per_view) if concatenate_views else (per_view, together)
    np.testing.assert_allclose(loss, float(kc.losses.nt_xent(expected[:8], expected[8:], 0.2)), rtol=1e-5)
    assert abs(loss - float(kc.losses.nt_xent(other[:8], other[8:], 0.2))) > 1e-3


def test_online_probe_does_not_change_encoder_gradients():
    views = random_views(32)
    labels = np.random.default_rng(1).integers(0, 3, 32)
    plain = build(cpu_strategy(1))
    probed = build(cpu_strategy(1), num_classes=3)
    for a, b in zip(
        plain.encoder.weights + plain.projection_head.weights, probed.encoder.weights + probed.projection_head.weights
    ):
        b.assign(a)
    probe_before = probed.probe.kernel.numpy().copy()
    train(plain, views)
    hist = train(probed, views, labels)
    assert "probe_accuracy" in hist
    for a, b in zip(plain.encoder.weights, probed.encoder.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert np.abs(probed.probe.kernel.numpy() - probe_before).max() > 0


def test_three_views_train_on_multiview_nt_xent():
    """Every other view of an image is a positive: the loss is multi-view NT-Xent, not two halves."""
    model = kc.SimCLR(tiny_encoder(), temperature=0.2, projection_dim=8, num_views=3)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    views = random_views(8, num_views=3)
    logs = model.evaluate(views, batch_size=8, verbose=0, return_dict=True)
    feats = model.encoder(np.concatenate([views[:, v] for v in range(3)]), training=False)
    z = model.projection_head(feats, training=False).numpy()
    stacked = np.stack([z[:8], z[8:16], z[16:]], axis=1)
    from test_losses import multiview_nt_xent_numpy

    np.testing.assert_allclose(logs["loss"], multiview_nt_xent_numpy(stacked, 0.2), rtol=1e-5)
    assert model.get_config()["num_views"] == 3 and "contrastive_accuracy" not in logs
    hist = train(model, random_views(16, num_views=3), steps=2)
    assert np.all(np.isfinite(hist["loss"]))


def test_jit_compile_step_runs():
    model = build(cpu_strategy(1), jit_compile=True)
    hist = train(model, random_views(32), steps=2)
    assert np.all(np.isfinite(hist["loss"]))


def test_in_step_augmentation_trains_on_the_views_its_seeds_give_on_the_host():
    """Raw uint8 images augmented in the step against the plain path: the same augmenter called on the host
    with the step's stateless seeds ([trainer seed, step * num_views + view] on one replica), fed as views.
    Loss and weights after two steps must agree."""
    x = (np.random.default_rng(0).random((32, 20, 20, 1)) * 255).astype("uint8")
    augmenter = kc.augment.SimCLRAugmenter(16, seed=0)

    def model():
        keras.utils.set_random_seed(1)
        trainer = kc.SimCLR(tiny_encoder(synchronized_bn=False), augmenter, temperature=0.5, seed=7)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        return trainer

    in_step = model()
    init = in_step.get_weights()
    hist = in_step.fit(x, batch_size=16, epochs=1, verbose=0, shuffle=False).history

    views = np.concatenate(
        [
            np.stack([augmenter(x[16 * step : 16 * (step + 1)], seed=[7, 2 * step + v]).numpy() for v in (0, 1)], 1)
            for step in (0, 1)
        ]
    )
    assert views.shape == (32, 2, 16, 16, 1) and views.dtype == np.float32 and 0.0 <= views.min() <= views.max() <= 1
    host = model()
    host.set_weights(init)
    ref = host.fit(views, batch_size=16, epochs=1, verbose=0, shuffle=False).history
    np.testing.assert_allclose(hist["loss"], ref["loss"], rtol=1e-6)
    # atol 5e-6: float rounding of the views (graph vs eager) moved one kernel entry by 1.1e-6 on an AMD
    # EPYC machine; views from a wrong seed move the weights by ~1e-3.
    for (path, want), (_, got) in zip(weights_of(host), weights_of(in_step)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-6, err_msg=path)


def test_save_load_round_trip(tmp_path):
    model = kc.SimCLR(
        tiny_encoder(), kc.augment.SimCLRAugmenter(16, seed=3), temperature=0.3, projection_dim=8, num_classes=4
    )
    model.compile(optimizer=kc.optimizers.LARS(0.1))
    train(model, random_views(16), np.arange(16) % 4, steps=1)
    path = str(tmp_path / "simclr.keras")
    model.save(path)
    clone = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(clone, kc.SimCLR)
    assert clone.get_config()["temperature"] == 0.3 and clone.num_classes == 4
    x = random_views(4)[:, 0]
    np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), atol=1e-6)
    for a, b in zip(model.weights, clone.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), err_msg=a.path)
    # The optimizer state (step count, LARS momentum) comes back, so one more step on the clone equals one
    # more step on the original (a clone with fresh slots would move differently: momentum is non-zero).
    assert int(clone.optimizer.iterations) == int(model.optimizer.iterations) == 1
    momentum = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert momentum and any(np.abs(v.numpy()).max() > 0 for v in momentum)
    for a, b in zip(model.optimizer.variables, clone.optimizer.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.path)
    more = random_views(16, seed=5)
    train(model, more, np.arange(16) % 4, steps=1)
    train(clone, more, np.arange(16) % 4, steps=1)
    for a, b in zip(model.weights, clone.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-6, err_msg=a.path)


@pytest.mark.fit_raises
def test_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        kc.SimCLR(tiny_encoder(), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        kc.SimCLR(tiny_encoder(), temperature=-1)
    with pytest.raises(ValueError, match="keras.Model"):
        kc.SimCLR(lambda x: x)
    model = build(cpu_strategy(1))
    with pytest.raises(ValueError, match="Expected views"):
        model.fit(np.zeros((4, 16, 16), "float32"), batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="no augmenter"):
        model.fit(np.zeros((4, 16, 16, 1), "float32"), batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="2 views"):
        model.fit(np.zeros((4, 3, 16, 16, 1), "float32"), batch_size=4, verbose=0)


@pytest.mark.slow
def test_short_run_on_real_fashion_mnist_lowers_the_loss():
    train = kc.data.load("fashion_mnist", "train[:512]", image_size=32)
    augmenter = kc.augment.simclr_preset("grayscale_small", 32, seed=0)
    keras.utils.set_random_seed(0)
    model = kc.SimCLR(kc.encoders.ResNet18((32, 32, 1), width_multiplier=0.125), augmenter, temperature=0.5)
    model.compile(optimizer=kc.optimizers.LARS(kc.optimizers.warmup_cosine(1.0, 40, 4), weight_decay=1e-6))
    # A fixed held-out set of views, evaluated before and after training.
    held_out = next(
        iter(
            kc.data.contrastive_views(
                kc.data.load("fashion_mnist", "test[:256]", image_size=32), augmenter, 256, seed=1
            )
        )
    )[0]
    before = model.evaluate(held_out, batch_size=256, verbose=0, return_dict=True)["loss"]
    views = model.views_dataset(train, 64, shuffle_buffer=512, seed=0, repeat=True)
    model.fit(views, epochs=1, steps_per_epoch=40, verbose=0)
    after = model.evaluate(held_out, batch_size=256, verbose=0, return_dict=True)["loss"]
    assert after < before - 0.3, (before, after)


def test_host_side_augmentation_gives_replica_independent_training(float64):
    """The chosen placement: views made in tf.data before the batch is split, so
    2 replicas train on exactly the views 1 replica trains on (real augmenter)."""
    images, _ = kc.data.load_arrays("fashion_mnist", "train[:64]")
    augmenter = kc.augment.SimCLRAugmenter(16, seed=0)

    def run(num_replicas, init=None):
        model = build(cpu_strategy(num_replicas))
        if init is not None:
            model.set_weights(init)
        init = model.get_weights()
        ds = kc.data.contrastive_views(tf.data.Dataset.from_tensor_slices(images), augmenter, 16, seed=4)
        hist = model.fit(ds, epochs=2, verbose=0, shuffle=False).history
        return hist, model, init

    ref_hist, ref_model, init = run(1)
    hist, model, _ = run(2, init)
    np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-9)
    for (path, want), (_, got) in zip(weights_of(ref_model), weights_of(model)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=path)


@pytest.mark.fit_raises
def test_a_batch_the_replicas_cannot_split_is_a_clear_error():
    model = build(cpu_strategy(2))
    views = random_views(10)
    ds = tf.data.Dataset.from_tensor_slices(views).batch(5, drop_remainder=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="split evenly over the 2 replicas"):
        model.fit(ds, epochs=1, verbose=0)


def test_an_unsynchronized_encoder_under_several_replicas_warns():
    with cpu_strategy(2).scope():
        with pytest.warns(UserWarning, match="not synchronized"):
            kc.SimCLR(tiny_encoder(synchronized_bn=False), projection_dim=4)
        model = kc.SimCLR(tiny_encoder(synchronized_bn=True), projection_dim=4)
    assert model.synchronized_bn is True  # the head follows the replica count


def test_a_custom_projection_head_is_trained_and_saved(tmp_path):
    head = kc.heads.ProjectionHead([16], 4, batch_norm=True, name="projection_head")
    model = kc.SimCLR(tiny_encoder(synchronized_bn=False), temperature=0.5, projection_head=head)
    assert model.projection_head is head
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [w.copy() for w in head.get_weights()]
    history = train(model, random_views(32), steps=2)
    assert np.isfinite(history["loss"]).all()
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, head.get_weights()))  # the head trains
    path = str(tmp_path / "simclr.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [l.name for l in loaded.projection_head.blocks[0]] == ["dense0", "bn0", "relu0"]
    features = np.random.default_rng(0).random((5, 8)).astype("float32")
    np.testing.assert_allclose(loaded.projection_head(features), head(features), atol=1e-6)
    with pytest.raises(ValueError, match="projection_head"):
        kc.SimCLR(tiny_encoder(synchronized_bn=False), projection_head=lambda x: x)


def test_multi_crop_views_of_two_sizes_train_with_multiview_nt_xent():
    """2 views at 16x16 and 3 at 8x8 (kc.augment.multi_crop_augmenters' groups): every other view is a positive."""
    with cpu_strategy(1).scope():
        model = kc.SimCLR(tiny_encoder(), temperature=0.2, projection_dim=8, num_views=5)
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    big, small = random_views(8), random_views(8, size=8, seed=1, num_views=3)
    loss = model.train_on_batch((big, small), return_dict=True)["loss"]
    at_8 = tiny_encoder(size=8)  # the same weights at the small size, built on its own
    at_8.set_weights(model.encoder.get_weights())
    features = np.concatenate(
        [
            model.encoder(np.concatenate([big[:, 0], big[:, 1]]), training=True),
            at_8(np.concatenate([small[:, v] for v in range(3)]), training=True),
        ]
    )
    z = np.stack(np.split(model.projection_head(features, training=True).numpy(), 5), axis=1)
    np.testing.assert_allclose(loss, float(kc.losses.multiview_nt_xent(z, 0.2)), rtol=1e-5)
