import keras
import numpy as np
import pytest
from conftest import assert_replicas_match_one_replica
from conftest import cpu_strategy
from conftest import random_views
from conftest import tiny_encoder
from conftest import train

import keras_contrastive as kc


def build(strategy, num_views=2, contrast_mode="all", **kwargs):
    with strategy.scope():
        model = kc.SupCon(
            tiny_encoder(),
            temperature=0.2,
            base_temperature=0.1,
            contrast_mode=contrast_mode,
            num_views=num_views,
            projection_dim=8,
            **kwargs,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    return model


LABELS = np.array([0, 1, 2, 3] * 12)


@pytest.mark.parametrize("num_replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_replicas_compute_what_one_replica_computes(num_replicas, float64):
    assert_replicas_match_one_replica(build, num_replicas, random_views(48), LABELS)


@pytest.mark.parametrize("num_views,contrast_mode", [(2, "all"), (3, "all"), (3, "one")])
def test_loss_is_supcon_of_the_projections(num_views, contrast_mode):
    model = build(cpu_strategy(1), num_views=num_views, contrast_mode=contrast_mode)
    views = random_views(8, num_views=num_views)
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    logs = model.evaluate(views, labels, batch_size=8, verbose=0, return_dict=True)
    flat = np.concatenate([views[:, v] for v in range(num_views)])
    z = model.projection_head(model.encoder(flat, training=False), training=False).numpy()
    z = np.stack(np.split(z, num_views), axis=1)
    expected = kc.losses.supcon(z, labels, 0.2, 0.1, contrast_mode)
    np.testing.assert_allclose(logs["loss"], float(expected), rtol=1e-5)


@pytest.mark.parametrize("concatenate_views", [True, False])
def test_a_bn_head_sees_all_views_together_or_one_view_at_a_time(concatenate_views):
    """Training-mode loss against the encoder and a BN head called by hand, on all views at once or per view."""
    head = kc.heads.batch_norm_projection_head(16, projection_dim=8)
    with cpu_strategy(1).scope():
        model = kc.SupCon(
            tiny_encoder(),
            temperature=0.2,
            base_temperature=0.1,
            projection_head=head,
            concatenate_views=concatenate_views,
        )
    assert model.projection_head is head
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    views, labels = random_views(8), np.array([0, 0, 1, 1, 1, 2, 3, 3])
    loss = model.train_on_batch(views, labels, return_dict=True)["loss"]

    def projections(images):
        return head(model.encoder(images, training=True), training=True).numpy()

    together = np.stack(np.split(projections(np.concatenate([views[:, 0], views[:, 1]])), 2), axis=1)
    per_view = np.stack([projections(views[:, 0]), projections(views[:, 1])], axis=1)
    expected, other = (together, per_view) if concatenate_views else (per_view, together)
    np.testing.assert_allclose(loss, float(kc.losses.supcon(expected, labels, 0.2, 0.1)), rtol=1e-5)
    assert abs(loss - float(kc.losses.supcon(other, labels, 0.2, 0.1))) > 1e-3


def test_a_custom_head_is_saved_and_loaded(tmp_path):
    model = build(cpu_strategy(1), projection_head=kc.heads.batch_norm_projection_head(16, 8), concatenate_views=False)
    train(model, random_views(16), LABELS[:16], steps=1)
    path = str(tmp_path / "supcon.keras")
    model.save(path)
    clone = keras.saving.load_model(path, safe_mode=True)
    assert clone.concatenate_views is False
    assert [layer.name for layer in clone.projection_head.blocks[0]] == ["dense0", "bn0", "relu0"]
    features = np.random.default_rng(0).random((5, 8)).astype("float32")
    np.testing.assert_allclose(clone.projection_head(features), model.projection_head(features), atol=1e-6)
    with pytest.raises(ValueError, match="projection_head"):
        kc.SupCon(tiny_encoder(), projection_head="mlp")
    with pytest.raises(ValueError, match="concatenate_views"):
        kc.SupCon(tiny_encoder(), concatenate_views="no")


@pytest.mark.fit_raises
def test_without_labels_is_a_clear_error_pointing_to_simclr():
    model = build(cpu_strategy(1))
    with pytest.raises(ValueError, match="SimCLR"):
        model.fit(random_views(8), batch_size=8, verbose=0)


@pytest.mark.fit_raises
def test_wrong_number_of_views_and_bad_arguments():
    model = build(cpu_strategy(1), num_views=3)
    with pytest.raises(ValueError, match="3 views"):
        model.fit(random_views(8), LABELS[:8], batch_size=8, verbose=0)
    with pytest.raises(ValueError, match="temperature"):
        kc.SupCon(tiny_encoder(), temperature=0)
    with pytest.raises(ValueError, match="contrast_mode"):
        kc.SupCon(tiny_encoder(), contrast_mode="any")
    with pytest.raises(ValueError, match="num_views"):
        kc.SupCon(tiny_encoder(), num_views=1)


def test_save_load_round_trip(tmp_path):
    model = build(cpu_strategy(1), num_views=3, contrast_mode="one", num_classes=4)
    train(model, random_views(16, num_views=3), LABELS[:16], steps=1)
    path = str(tmp_path / "supcon.keras")
    model.save(path)
    clone = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(clone, kc.SupCon)
    assert (clone.num_views, clone.contrast_mode, clone.base_temperature) == (3, "one", 0.1)
    for a, b in zip(model.weights, clone.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.slow
def test_short_run_on_real_fashion_mnist_lowers_the_loss():
    augmenter = kc.augment.simclr_preset("grayscale_small", 32, seed=0)
    keras.utils.set_random_seed(0)
    model = kc.SupCon(kc.encoders.ResNet18((32, 32, 1), width_multiplier=0.125), augmenter)
    model.compile(optimizer=kc.optimizers.LARS(kc.optimizers.warmup_cosine(1.0, 40, 4), weight_decay=1e-6))
    held_out = next(
        iter(
            kc.data.contrastive_views(
                kc.data.load("fashion_mnist", "test[:256]", image_size=32), augmenter, 256, seed=1
            )
        )
    )
    before = model.evaluate(*held_out, batch_size=256, verbose=0, return_dict=True)["loss"]
    train_ds = kc.data.load("fashion_mnist", "train[:512]", image_size=32)
    model.fit(
        model.views_dataset(train_ds, 64, shuffle_buffer=512, seed=0, repeat=True),
        epochs=1,
        steps_per_epoch=40,
        verbose=0,
    )
    after = model.evaluate(*held_out, batch_size=256, verbose=0, return_dict=True)["loss"]
    assert after < before - 0.3, (before, after)


def test_multi_crop_views_of_two_sizes_with_one_encoder_call_per_view():
    """concatenate_views=False with 2 views at 16x16 and 2 at 8x8: each view alone through the encoder and head."""
    with cpu_strategy(1).scope():
        model = kc.SupCon(tiny_encoder(), temperature=0.2, projection_dim=8, num_views=4, concatenate_views=False)
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    big, small = random_views(8), random_views(8, size=8, seed=1)
    labels = np.arange(8) % 3
    loss = model.train_on_batch((big, small), labels, return_dict=True)["loss"]
    at_8 = tiny_encoder(size=8)  # the same weights at the small size, built on its own
    at_8.set_weights(model.encoder.get_weights())
    views = [(model.encoder, big[:, 0]), (model.encoder, big[:, 1]), (at_8, small[:, 0]), (at_8, small[:, 1])]
    z = np.stack([model.projection_head(e(v, training=True), training=True) for e, v in views], axis=1)
    np.testing.assert_allclose(loss, float(kc.losses.supcon(z, labels, 0.2, model.base_temperature)), rtol=1e-5)
