import numpy as np
import pytest
import tensorflow as tf

from keras_contrastive import augment


def images(n=8, size=28, channels=3, seed=0):
    return (np.random.default_rng(seed).random((n, size, size, channels)) * 255).astype("uint8")


SEED = tf.constant([3, 4])


def test_shape_dtype_range():
    out = augment.SimCLRAugmenter(32, seed=1)(images(), seed=SEED)
    assert out.shape == (8, 32, 32, 3) and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0


def test_seeded_runs_repeat_and_seeds_differ():
    aug = augment.SimCLRAugmenter(32, blur=True)
    x = images()
    a, b = aug(x, seed=SEED), aug(x, seed=SEED)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    c = aug(x, seed=tf.constant([3, 5]))
    assert np.abs(a.numpy() - c.numpy()).mean() > 0.01
    # A fresh layer with the same constructor seed repeats its unseeded calls.
    np.testing.assert_array_equal(
        augment.SimCLRAugmenter(32, seed=7)(x).numpy(), augment.SimCLRAugmenter(32, seed=7)(x).numpy()
    )


def test_every_image_gets_its_own_parameters():
    x = np.repeat(images(1), 16, axis=0)  # 16 copies of one image
    out = augment.SimCLRAugmenter(28, seed=0)(x, seed=SEED).numpy()
    distinct = {out[i].tobytes() for i in range(16)}
    assert len(distinct) == 16


def test_eager_equals_tf_data():
    aug = augment.SimCLRAugmenter(32, blur=True)
    x = images(8)
    eager = aug(x, seed=SEED).numpy()
    ds = tf.data.Dataset.from_tensors(x).map(lambda b: aug(b, seed=SEED))
    np.testing.assert_allclose(next(iter(ds)).numpy(), eager, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_and_rgb_inputs(channels):
    out = augment.SimCLRAugmenter(32, seed=0)(images(channels=channels), seed=SEED)
    assert out.shape == (8, 32, 32, channels)


def test_single_image_and_float_input():
    x = images(1)[0]
    out = augment.SimCLRAugmenter(16, seed=0)(x.astype("float32") / 255.0, seed=SEED)
    assert out.shape == (16, 16, 3)


def test_two_views_of_an_image_differ():
    aug = augment.SimCLRAugmenter(28)
    x = images(4)
    v1, v2 = aug(x, seed=tf.constant([0, 0])), aug(x, seed=tf.constant([0, 1]))
    assert np.all(np.abs(v1.numpy() - v2.numpy()).reshape(4, -1).mean(axis=1) > 1e-3)


def _identity_kwargs():
    return dict(
        crop_area=(1.0, 1.0),
        crop_aspect_ratio=(1.0, 1.0),
        horizontal_flip=False,
        color_jitter_probability=0.0,
        grayscale_probability=0.0,
        blur=False,
    )


def test_everything_off_is_identity():
    x = images()
    out = augment.SimCLRAugmenter(28, **_identity_kwargs())(x, seed=SEED)
    np.testing.assert_allclose(out.numpy(), x / 255.0, atol=1e-6)


def test_flip_is_either_identity_or_mirror_about_half_the_time():
    x = images(200, size=8)
    kw = {**_identity_kwargs(), "horizontal_flip": True}
    out = augment.SimCLRAugmenter(8, **kw)(x, seed=SEED).numpy()
    same = np.all(np.isclose(out, x / 255.0, atol=1e-6), axis=(1, 2, 3))
    mirrored = np.all(np.isclose(out, x[:, :, ::-1] / 255.0, atol=1e-6), axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 70 < mirrored.sum() < 130


def test_grayscale_probability():
    x = images(400, size=4)
    kw = {**_identity_kwargs(), "grayscale_probability": 0.2}
    out = augment.SimCLRAugmenter(4, **kw)(x, seed=SEED).numpy()
    gray = np.all(np.isclose(out[..., 0], out[..., 1]) & np.isclose(out[..., 1], out[..., 2]), axis=(1, 2))
    assert 50 < gray.sum() < 110  # 80 expected


def test_crop_keeps_a_region_of_the_requested_area():
    # A ramp image: a crop's value range tells which part of the image it kept.
    ramp = np.tile(np.linspace(0, 255, 64).astype("uint8")[None, :, None], (64, 1, 3))[None]
    x = np.repeat(ramp, 64, axis=0)
    out = augment.random_resized_crop(
        SEED, tf.cast(x, tf.float32) / 255.0, (64, 64), area=(0.25, 0.25), aspect_ratio=(1.0, 1.0)
    ).numpy()
    widths = out[:, 0, -1, 0] - out[:, 0, 0, 0]  # fraction of the ramp covered
    np.testing.assert_allclose(widths, 0.5 * 63 / 63, atol=0.03)


def test_color_jitter_brightness_factor_range():
    x = np.full((500, 2, 2, 1), 0.5, "float32")
    out = augment.color_jitter(SEED, tf.constant(x), strength=0.5).numpy()[:, 0, 0, 0]
    # Brightness factor in [0.6, 1.4] and contrast leaves a flat image flat.
    assert out.min() >= 0.3 - 1e-6 and out.max() <= 0.7 + 1e-6
    assert out.std() > 0.05


def test_blur_preserves_mean_of_constant_interior_and_smooths():
    x = np.zeros((2, 33, 33, 1), "float32")
    x[:, 16, 16, 0] = 1.0
    out = augment.gaussian_blur(tf.constant(x), tf.constant([1.0, 2.0]), kernel_size=9).numpy()
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    assert np.all(out[:, 16, 16, 0] < 1.0)


def test_solarize():
    x = tf.constant([[[[0.2], [0.7]]]])
    np.testing.assert_allclose(augment.solarize(x).numpy().ravel(), [0.2, 0.3], atol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 3), "uint8"), "Expected images"),
        (np.zeros((2, 8, 8, 2), "uint8"), "1 or 3 channels"),
        (np.zeros((2, 8, 8, 3), "int32"), "uint8"),
    ],
)
def test_bad_inputs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        augment.SimCLRAugmenter(8)(bad)


def test_nan_and_out_of_range_floats_raise():
    aug = augment.SimCLRAugmenter(8)
    x = np.zeros((2, 8, 8, 3), "float32")
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        aug(x)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divide by 255"):
        aug(np.full((2, 8, 8, 3), 255.0, "float32"))


def test_constructor_validation():
    with pytest.raises(ValueError, match="crop_area"):
        augment.SimCLRAugmenter(8, crop_area=(0.5, 0.2))
    with pytest.raises(ValueError, match="grayscale_probability"):
        augment.SimCLRAugmenter(8, grayscale_probability=1.5)
    with pytest.raises(ValueError, match="preset"):
        augment.simclr_preset("nope", 8)


def test_config_round_trip_and_presets():
    aug = augment.simclr_preset("cifar", 32, seed=3)
    clone = augment.SimCLRAugmenter.from_config(aug.get_config())
    x = images()
    np.testing.assert_array_equal(aug(x, seed=SEED).numpy(), clone(x, seed=SEED).numpy())
    assert not aug.blur_enabled and augment.SimCLRAugmenter(96).blur_enabled


def test_crop_and_resize_matches_tensorflow(rng):
    x = tf.constant(rng.random((6, 20, 24, 3)), tf.float32)
    lo = rng.random((6, 2)) * 0.5
    hi = lo + 0.1 + rng.random((6, 2)) * 0.4
    boxes = tf.constant(np.concatenate([lo, hi], axis=1)[:, [0, 1, 2, 3]], tf.float32)
    for size in [(16, 16), (7, 9), (1, 1)]:
        want = tf.image.crop_and_resize(x, boxes, tf.range(6), size)
        np.testing.assert_allclose(augment.crop_and_resize(x, boxes, size).numpy(), want.numpy(), atol=1e-5)


def test_xla_and_plain_paths_agree():
    x = images(8, size=40)
    kw = dict(blur=True, solarize_probability=0.5, seed=0)
    fast = augment.SimCLRAugmenter(32, jit_compile=True, **kw)(x, seed=SEED).numpy()
    plain = augment.SimCLRAugmenter(32, jit_compile=False, **kw)(x, seed=SEED).numpy()
    np.testing.assert_allclose(fast, plain, atol=1e-5)


def _jitter_reference(image, factors, hue, order):
    """One image, ops applied one by one in `order` (torchvision definitions), float64."""
    x = image.astype("float64")
    luma = lambda im: (im * [0.2989, 0.5870, 0.1140]).sum(-1, keepdims=True)  # noqa: E731
    for op in order:
        if op == 0:
            x = np.clip(x * factors[0], 0, 1)
        elif op == 1:
            m = luma(x).mean()
            x = np.clip(m + factors[1] * (x - m), 0, 1)
        elif op == 2:
            g = luma(x)
            x = np.clip(g + factors[2] * (x - g), 0, 1)
        else:
            hsv = tf.image.rgb_to_hsv(x.astype("float32")).numpy().astype("float64")
            hsv[..., 0] = np.mod(hsv[..., 0] + hue, 1.0)
            x = np.clip(tf.image.hsv_to_rgb(hsv.astype("float32")).numpy(), 0, 1)
    return x


def test_color_jitter_applies_each_images_own_order(rng):
    x = rng.random((24, 6, 6, 3)).astype("float32")
    params = augment.sample_color_jitter(SEED, 24, strength=1.0)
    orders = params["order"].numpy()
    assert len({tuple(o) for o in orders}) > 5  # many different orders in one batch
    got = augment.apply_color_jitter(tf.constant(x), params).numpy()
    for i in range(24):
        want = _jitter_reference(x[i], params["factors"].numpy()[i], params["hue"].numpy()[i], orders[i])
        np.testing.assert_allclose(got[i], want, atol=2e-5, err_msg=f"image {i}, order {orders[i]}")


@pytest.mark.parametrize("mode", ["eager", "graph", "jit"])
def test_blur_matches_scipy_style_reference(rng, mode):
    # Outside XLA the blur runs as depthwise convolutions, under XLA as sums of shifted copies: both must be the
    # same per-image separable Gaussian with zero padding.
    x = rng.random((3, 12, 10, 2)).astype("float32")
    sigma = np.array([0.3, 1.0, 2.0], "float32")
    blur = lambda images, s: augment.gaussian_blur(images, s, kernel_size=5)  # noqa: E731
    if mode != "eager":
        blur = tf.function(blur, jit_compile=mode == "jit")
    got = blur(tf.constant(x), tf.constant(sigma)).numpy()
    if mode != "eager":
        graph = blur.get_concrete_function(tf.constant(x), tf.constant(sigma)).graph
        assert any(op.type == "DepthwiseConv2dNative" for op in graph.get_operations()) == (mode == "graph")
    for b in range(3):
        k = np.exp(-(np.arange(-2, 3) ** 2) / (2 * sigma[b] ** 2))
        k /= k.sum()
        want = np.zeros_like(x[b], dtype="float64")
        padded = np.pad(x[b], [(2, 2), (2, 2), (0, 0)])
        for i in range(5):
            for j in range(5):
                want += k[i] * k[j] * padded[i : i + 12, j : j + 10]
        np.testing.assert_allclose(got[b], want, atol=1e-5)


def test_color_jitter_factors_override_strength():
    params = augment.sample_color_jitter(SEED, 2000, strength=1.0, factors=(0.4, 0.4, 0.2, 0.1))
    f = params["factors"].numpy()
    assert f[:, 0].min() >= 0.6 and f[:, 0].max() <= 1.4
    assert f[:, 2].min() >= 0.8 and f[:, 2].max() <= 1.2 and f[:, 2].min() < 0.82
    assert np.abs(params["hue"].numpy()).max() <= 0.1
    with pytest.raises(ValueError, match="color_jitter_factors"):
        augment.SimCLRAugmenter(8, color_jitter_factors=(0.4, 0.4, 0.2))


def test_moco_v3_pair_is_asymmetric():
    first, second = augment.moco_v3_augmenters(32, seed=0)
    assert (first.blur_probability, first.solarize_probability) == (1.0, 0.0)
    assert (second.blur_probability, second.solarize_probability) == (0.1, 0.2)
    assert first.color_jitter_factors == (0.4, 0.4, 0.2, 0.1) and first.blur_enabled
    x = images(1000, size=8)
    # Solarization inverts bright pixels: only view 2 has it, on 20% of images (200 of 1,000, sd 13).
    kw = dict(
        crop_area=(1, 1),
        crop_aspect_ratio=(1, 1),
        horizontal_flip=False,
        color_jitter_probability=0.0,
        grayscale_probability=0.0,
        blur=False,
    )
    plain = augment.SimCLRAugmenter(8, **kw)(x, seed=SEED).numpy()
    _, sol = augment.moco_v3_augmenters(8, seed=0, **kw)
    out = sol(x, seed=SEED).numpy()
    solarized = np.any(np.abs(out - plain) > 1e-6, axis=(1, 2, 3))
    assert 160 <= solarized.sum() <= 240  # p=0.1 or p=0.3 (100 or 300) would fail
    np.testing.assert_allclose(out[solarized], np.where(plain >= 0.5, 1.0 - plain, plain)[solarized], atol=1e-6)
    clone = augment.SimCLRAugmenter.from_config(second.get_config())
    assert clone.color_jitter_factors == (0.4, 0.4, 0.2, 0.1)


# The crop sampler and grayscale against their definitions (issue 15).


def _boxes(height, width, n=4000, **kw):
    return augment.sample_crop_boxes(SEED, n, height, width, **kw).numpy().astype("float64")


def test_crop_boxes_have_the_drawn_area_and_pixel_aspect_ratio_on_a_wide_image():
    # On a 40x80 image a height/width swap in the sampler changes every box's pixel aspect ratio by 4x.
    height, width = 40, 80
    y1, x1, y2, x2 = _boxes(height, width, area=(0.1, 0.3), aspect_ratio=(0.5, 2.0)).T
    h, w = y2 - y1, x2 - x1
    assert np.all((y1 >= 0) & (x1 >= 0) & (y2 <= 1 + 1e-6) & (x2 <= 1 + 1e-6))
    area = h * w  # fraction of the image's pixels
    ratio = (w * width) / (h * height)  # width / height in pixels
    assert np.all((area > 0.1 - 1e-5) & (area < 0.3 + 1e-5))
    assert np.all((ratio > 0.5 - 1e-4) & (ratio < 2.0 + 1e-4))


def test_crop_aspect_ratio_is_log_uniform_and_area_uniform():
    # Every candidate fits (small areas), so the first draw is kept and its distribution shows.
    y1, x1, y2, x2 = _boxes(64, 64, area=(0.05, 0.15), aspect_ratio=(1 / 3, 3.0)).T
    log_ratio = np.log((x2 - x1) / (y2 - y1))
    quarters = np.histogram(log_ratio, bins=4, range=(-np.log(3), np.log(3)))[0] / len(log_ratio)
    np.testing.assert_allclose(quarters, 0.25, atol=0.03)  # a uniform ratio would put 0.5 in the last quarter
    area = (x2 - x1) * (y2 - y1)
    np.testing.assert_allclose(np.histogram(area, bins=4, range=(0.05, 0.15))[0] / len(area), 0.25, atol=0.03)
    # Positions: uniform over the free space, so the box centre's mean is the image centre.
    np.testing.assert_allclose([np.mean((y1 + y2) / 2), np.mean((x1 + x2) / 2)], 0.5, atol=0.01)


def test_crop_falls_back_to_the_whole_image_when_no_candidate_fits():
    # Area >= 0.9 at aspect ratio >= 3 needs a box wider than the image: every attempt fails.
    boxes = _boxes(32, 32, n=50, area=(0.9, 1.0), aspect_ratio=(3.0, 4.0))
    np.testing.assert_array_equal(boxes, np.tile([0.0, 0.0, 1.0, 1.0], (50, 1)))
    # Where one candidate fits with probability p (here about 0.22: a * r <= 1), the sampler falls back after
    # 10 misses: (1 - p)^10 of the boxes, about 8% (1 attempt would give 78%, no fallback 0%).
    a = np.random.default_rng(0).uniform(0.9, 1.0, 1_000_000)
    r = np.exp(np.random.default_rng(1).uniform(0.0, np.log(1.25), 1_000_000))
    p = np.mean((a * r <= 1) & (a / r <= 1))
    y1, x1, y2, x2 = _boxes(32, 32, area=(0.9, 1.0), aspect_ratio=(1.0, 1.25)).T
    whole = (x2 - x1 == 1.0) & (y2 - y1 == 1.0)
    assert abs(np.mean(whole) - (1 - p) ** 10) < 0.015, (np.mean(whole), (1 - p) ** 10)


def test_grayscale_uses_tensorflows_luma_weights(rng):
    x = rng.integers(0, 256, (6, 8, 8, 3)).astype("uint8")
    kw = {**_identity_kwargs(), "grayscale_probability": 1.0}
    out = augment.SimCLRAugmenter(8, **kw)(x, seed=SEED).numpy()
    want = tf.image.rgb_to_grayscale(tf.constant(x / 255.0, tf.float32)).numpy()
    np.testing.assert_allclose(out, np.repeat(want, 3, axis=-1), atol=1e-6)


def test_a_whole_image_crop_is_skipped_with_the_same_views(monkeypatch):
    """With crop area and aspect ratio fixed at 1 (the crop was drawn per image before, `contrastive_views`'
    `crop`), the augmenter skips its crop-and-resize: the views equal the ones through the full-box resize."""
    images = np.random.default_rng(0).integers(0, 256, (6, 20, 20, 3), dtype=np.uint8)
    whole = augment.SimCLRAugmenter(20, crop_area=(1.0, 1.0), crop_aspect_ratio=(1.0, 1.0), blur=True)
    assert whole.keeps_whole_image and not augment.SimCLRAugmenter(20).keeps_whole_image
    skipped = whole(images, seed=[3, 4]).numpy()
    monkeypatch.setattr(augment.SimCLRAugmenter, "keeps_whole_image", property(lambda self: False))
    resized = whole(images, seed=[3, 4]).numpy()
    np.testing.assert_allclose(skipped, resized, atol=2e-5)
    # Another size still resizes.
    monkeypatch.undo()
    assert augment.SimCLRAugmenter(16, crop_area=(1.0, 1.0), crop_aspect_ratio=(1.0, 1.0))(images, seed=[0, 0]).shape[
        1:3
    ] == (16, 16)


def test_multi_crop_augmenters_give_two_global_and_k_small_views_of_the_papers_areas():
    views = augment.multi_crop_augmenters(32, 12, num_local=3, blur=False, seed=0)
    assert len(views) == 5 and views[0] is views[1] and views[2] is views[4] and views[0] is not views[2]
    assert (views[0].image_size, views[0].crop_area) == ((32, 32), (0.14, 1.0))
    assert (views[2].image_size, views[2].crop_area) == ((12, 12), (0.05, 0.14))
    assert views[2].color_jitter_strength == views[0].color_jitter_strength and views[2].blur is False
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    assert views[2](images, seed=[0, 2]).shape == (2, 12, 12, 3)
    with pytest.raises(ValueError, match="`num_local` must be an int >= 1"):
        augment.multi_crop_augmenters(32, 12, num_local=0)
