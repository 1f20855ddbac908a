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


@pytest.mark.parametrize("num_replicas", [2, 4])
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


def test_without_labels_is_a_clear_error_pointing_to_simclr():
    model = build(cpu_strategy(1))
    with pytest.raises(ValueError, match="SimCLR"):
        model.fit(random_views(8), batch_size=8, verbose=0)


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
