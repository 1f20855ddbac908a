"""Keras core and keras-cv 0.9 preprocessing layers as view augmenters (`kc.augment.LayerAugmenter`)."""

import warnings

import keras
import keras_cv
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_encoder

import keras_contrastive as kc
from keras_contrastive.layer_augmenter import LayerAugmenter


def images(n=8, size=16, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels)).astype("uint8")


def core_pipeline():
    """Keras core layers, colour layers in Keras' default value range (0, 255)."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=0.4,
                contrast_factor=0.4,
                saturation_factor=(0.3, 0.7),
                hue_factor=0.1,
            ),
            keras.layers.RandomGrayscale(0.2),
        ]
    )


def keras_cv_pipeline(size=16):
    """keras-cv 0.9 layers, vectorized and per-image ones (crop, RandomApply)."""
    return [
        keras_cv.layers.RandomCropAndResize(
            (size, size), crop_area_factor=(0.2, 1.0), aspect_ratio_factor=(0.75, 4 / 3)
        ),
        keras_cv.layers.RandomFlip("horizontal"),
        keras_cv.layers.RandomApply(
            keras_cv.layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=0.4,
                contrast_factor=0.4,
                saturation_factor=(0.3, 0.7),
                hue_factor=0.2,
            ),
            rate=0.8,
        ),
        keras_cv.layers.RandomApply(keras_cv.layers.Grayscale(output_channels=3), rate=0.2),
    ]


@pytest.mark.parametrize("kind", ["core", "keras_cv"])
def test_same_seed_same_views_other_seed_other_views(kind):
    """Seeds reach every random source: eager and traced calls with one seed agree, another seed
    differs, and identical images in one batch get different views (a draw per image)."""
    augmenter = LayerAugmenter(core_pipeline() if kind == "core" else keras_cv_pipeline())
    assert augmenter.seeded and augmenter.value_range == (0.0, 255.0)
    x = images()
    first = augmenter(x, seed=[3, 4]).numpy()
    traced = tf.function(lambda x, seed: augmenter(x, seed=seed))
    np.testing.assert_allclose(traced(x, tf.constant([3, 4])).numpy(), first, atol=1e-5)  # graph vs eager rounding
    np.testing.assert_array_equal(augmenter(x, seed=[3, 4]).numpy(), first)
    assert np.abs(augmenter(x, seed=[3, 5]).numpy() - first).max() > 0.1
    assert first.dtype == np.float32 and first.shape == (8, 16, 16, 3)
    assert 0.0 <= first.min() and first.max() <= 1.0 and first.max() > 0.5
    same = traced(np.repeat(x[:1], 8, axis=0), tf.constant([1, 1])).numpy()
    assert len({view.tobytes() for view in same}) == 8


def test_the_first_call_draws_what_later_calls_draw():
    """Keras builds an unbuilt layer by tracing its call once, inside the first real call; the
    draws of that pass must not shift the first call's random numbers (keras-cv's colour jitter
    is unbuilt until called)."""
    x = images()
    layer = keras_cv.layers.RandomColorJitter((0, 255), 0.4, 0.4, (0.3, 0.7), 0.2)
    augmenter = LayerAugmenter(layer)
    first = augmenter(x, seed=[6, 6]).numpy()
    np.testing.assert_array_equal(augmenter(x, seed=[6, 6]).numpy(), first)


def test_value_range_conversion_against_a_hand_computation():
    """RandomBrightness with a fixed +51 in [0, 255] must add 0.2 in [0, 1]; RandomFlip then
    flips each image or not. Computed by hand from the uint8 input."""
    x = images(n=16)
    augmenter = LayerAugmenter(
        [
            keras.layers.RandomBrightness(factor=(0.2, 0.2), value_range=(0, 255)),
            keras.layers.RandomFlip("horizontal"),
        ]
    )
    got = augmenter(x, seed=[0, 1]).numpy()
    brightened = np.clip(x.astype(np.float32) / 255 + 0.2, 0, 1)
    flipped = [np.allclose(g, b[:, ::-1], atol=1e-5) for g, b in zip(got, brightened)]
    kept = [np.allclose(g, b, atol=1e-5) for g, b in zip(got, brightened)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_output_outside_the_declared_range_is_refused_or_converted():
    """A pipeline that rescales to [0, 1] but is declared as (0, 255) would give views 255x too
    dark; declared with output_range it is exact. A layer that returns [0, 255] while the
    adapter was told (0, 1) is refused with a message naming output_range."""
    x = images()
    rescaled = LayerAugmenter([keras.layers.Rescaling(1 / 255)], value_range=(0, 255), output_range=(0, 1))
    np.testing.assert_allclose(rescaled(x, seed=[0, 0]).numpy(), x / 255, atol=1e-6)
    wrong = LayerAugmenter([keras.layers.Rescaling(255.0)], value_range=(0, 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="output_range"):
        wrong(x, seed=[0, 0])


def test_contrastive_views_refuse_views_in_0_255():
    """A plain callable (not a layer, so not wrapped) returning [0, 255] floats: refused."""
    ds = tf.data.Dataset.from_tensor_slices(images())

    def to_float(batch, seed):
        return tf.cast(batch, tf.float32)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside \[0, 1\]"):
        next(iter(kc.data.contrastive_views(ds, to_float, 4)))


def test_layers_declaring_different_ranges_need_value_range():
    layers = [
        keras.layers.RandomContrast(0.2, value_range=(0, 255)),
        keras.layers.RandomBrightness(0.2, value_range=(0, 1)),
    ]
    with pytest.raises(ValueError, match="different value ranges"):
        LayerAugmenter(layers)


def test_a_random_source_without_seed_is_reported():
    class Noisy(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.generator = tf.random.Generator.from_seed(1)

        def call(self, x):
            return x + 0.0 * self.generator.uniform(tf.shape(x))

    with pytest.warns(UserWarning, match="not reproducible"):
        augmenter = LayerAugmenter(Noisy())
    assert not augmenter.seeded


def test_a_layer_that_fails_is_named():
    augmenter = LayerAugmenter([keras_cv.layers.RandomColorJitter((0, 255), 0.2, 0.2, 0.5, 0.1)])
    with pytest.raises(ValueError, match="random_color_jitter.*RandomColorJitter"):
        augmenter(images(channels=1), seed=[0, 0])  # saturation needs 3 channels


@pytest.mark.parametrize("kind", ["core", pytest.param("keras_cv", marks=pytest.mark.slow)])
def test_pipelines_run_in_contrastive_views_and_train_simclr(kind):
    """The bare pipeline (no wrapper) goes to `contrastive_views` and to the trainer: views are
    reproducible per seed and in [0, 1]; a SimCLR step on them moves the weights; in-step
    augmentation of raw images trains too."""
    pipeline = core_pipeline() if kind == "core" else keras_cv.layers.Augmenter(keras_cv_pipeline())
    x = images(n=16)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(16) % 2))
    trainer = kc.SimCLR(tiny_encoder(channels=3), pipeline, temperature=0.5)
    assert isinstance(trainer.augmenter, LayerAugmenter)
    views = trainer.views_dataset(ds, 8, seed=5)
    first = np.concatenate([v for v, _ in views])
    again = np.concatenate([v for v, _ in trainer.views_dataset(ds, 8, seed=5)])
    np.testing.assert_array_equal(first, again)
    assert first.shape == (16, 2, 16, 16, 3) and 0 <= first.min() and first.max() <= 1
    assert np.abs(first[:, 0] - first[:, 1]).max() > 0.1
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    before = trainer.get_weights()
    history = trainer.fit(views, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert max(np.abs(a - b).max() for a, b in zip(before, trainer.get_weights())) > 1e-4
    # In-step augmentation (keras-cv's RandomApply needs AutoGraph there; XLA cannot compile
    # keras-cv's crop, so no jit_compile for it).
    history = trainer.fit(x, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_presets_build_from_keras_cv_with_the_same_settings():
    """Each preset can be built from keras-cv layers; the settings map onto the layers."""
    augmenter = kc.augment.simclr_preset("imagenet", 64, implementation="keras_cv")
    assert isinstance(augmenter, LayerAugmenter) and augmenter.seeded
    names = [type(layer).__name__ for layer in augmenter.layer.layers]
    assert names == ["RandomCropAndResize", "RandomFlip", "RandomApply", "RandomApply", "RandomApply"]
    crop = augmenter.layer.layers[0]
    jitter = augmenter.layer.layers[2]
    assert jitter._rate == 0.8 and crop.crop_area_factor.lower == 0.08
    # s = 1: brightness and contrast 0.8; saturation multiplier [0.2, 1.8] -> keras-cv factor
    # m / (1 + m); hue shift up to 0.2 turns -> keras-cv factor 0.4 (it shifts by f / 2).
    layer = jitter._layer
    assert layer.brightness_factor == pytest.approx(0.8) and layer.contrast_factor == pytest.approx(0.8)
    np.testing.assert_allclose(layer.saturation_factor, (0.2 / 1.2, 1.8 / 2.8))
    assert layer.hue_factor == pytest.approx(0.4)
    views = augmenter(images(size=80), seed=[0, 1]).numpy()
    assert views.shape == (8, 64, 64, 3)
    gray = kc.augment.simclr_preset("grayscale_small", 32, implementation="keras_cv", channels=1)
    assert gray(images(size=28, channels=1), seed=[0, 1]).shape == (8, 32, 32, 1)
    pair = kc.augment.moco_v3_augmenters(32, implementation="keras_cv", blur=False)
    # MoCo v3's second view alone solarizes (p=0.2); blur is off here (32x32).
    assert [type(a.layer.layers[-1]._layer).__name__ for a in pair] == ["Grayscale", "Solarization"]
    assert pair[1].layer.layers[-1]._rate == 0.2
    # s = 1.5 asks 1.2 of brightness and contrast; keras-cv takes at most 1 (clamped, not refused).
    strong = kc.augment.simclr_preset("cifar", 32, implementation="keras_cv", color_jitter_strength=1.5)
    strong_jitter = strong.layer.layers[2]._layer
    assert (strong_jitter.brightness_factor, strong_jitter.contrast_factor) == (1.0, 1.0)
    with pytest.raises(ValueError, match="implementation"):
        kc.augment.simclr_preset("cifar", 32, implementation="torchvision")


def test_config_round_trip_gives_the_same_views():
    augmenter = LayerAugmenter(core_pipeline())
    clone = LayerAugmenter.from_config(augmenter.get_config())
    x = images()
    np.testing.assert_array_equal(clone(x, seed=[2, 2]).numpy(), augmenter(x, seed=[2, 2]).numpy())
    trainer = kc.SimCLR(tiny_encoder(channels=3), core_pipeline())
    restored = kc.SimCLR.from_config(trainer.get_config())
    assert isinstance(restored.augmenter, LayerAugmenter)


def test_our_augmenters_are_not_wrapped():
    ours = kc.augment.SimCLRAugmenter(16)
    assert kc.augment.as_augmenter(ours) is ours
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(kc.augment.as_augmenter(keras.layers.RandomFlip()), LayerAugmenter)


def test_eager_calls_trace_a_per_image_layer_once():
    """keras-cv's per-image layers run one image at a time in a `tf.function`: kept per layer, so repeated
    eager calls reuse one trace instead of retracing on every call (as TensorFlow warned)."""
    augmenter = LayerAugmenter(keras_cv_pipeline())
    x = images()
    first = augmenter(x, seed=[1, 2]).numpy()
    for seed in ([1, 2], [5, 6], [7, 8]):
        augmenter(x, seed=seed)
    calls = augmenter._per_image_calls
    assert len(calls) >= 1 and all(f.experimental_get_tracing_count() == 1 for f in calls.values())
    np.testing.assert_array_equal(augmenter(x, seed=[1, 2]).numpy(), first)
