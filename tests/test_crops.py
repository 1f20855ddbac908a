"""Random resized crops on each image at its own, full resolution (`kc.crops`)."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_encoder

import keras_contrastive as kc
from keras_contrastive import crops


def detailed_image(height=480, width=640, seed=0):
    """Random 2x2-pixel blocks: every crop, however small, holds full-resolution detail."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 2, width // 2, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)


def sharpness(images):
    """Mean absolute difference between horizontal neighbours."""
    images = np.asarray(images, np.float32)
    return float(np.abs(np.diff(images, axis=-2)).mean())


def test_windows_follow_simclr_ranges_and_the_seed():
    shape = tf.constant([480, 640, 3])
    windows = np.stack([crops.sample_crop_window([1, i], shape).numpy() for i in range(200)])
    top, left, height, width = windows.T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + height <= 480) and np.all(left + width <= 640)
    area = height * width / (480 * 640)
    ratio = width / height
    # Area 8-100% (the whole-image fallback is 100%); aspect 3/4-4/3 up to pixel rounding.
    assert area.min() >= 0.075 and area.max() <= 1.0 and np.median(area) < 0.7
    assert ratio.min() >= 0.73 and ratio.max() <= 1.37
    again = crops.sample_crop_window([1, 7], shape).numpy()
    np.testing.assert_array_equal(again, windows[7])
    assert len({tuple(w) for w in windows}) > 190


def test_the_crop_is_taken_from_the_full_resolution_image():
    """A 2% crop of a 480x640 image of 2x2-pixel detail, resized to 32x32: equal to cropping the full
    image at the drawn window (numpy slice + the same resize), and as sharp as such a crop is; cropping a
    32x43 thumbnail at the same relative window instead gives a blur (what pre-resized data gives)."""
    image = detailed_image()
    seed = tf.constant([3, 4])
    got = crops.random_resized_crop(image, seed, (32, 32), area=(0.02, 0.02)).numpy()
    top, left, height, width = crops.sample_crop_window(seed, image.shape, area=(0.02, 0.02)).numpy()
    reference = tf.image.resize(image[top : top + height, left : left + width].astype(np.float32), (32, 32), "bicubic")
    np.testing.assert_array_equal(got, np.clip(np.round(reference.numpy()), 0, 255).astype(np.uint8))
    thumbnail = tf.image.resize(image.astype(np.float32), (32, 43), antialias=True).numpy()
    y0, x0 = int(top / 480 * 32), int(left / 640 * 43)
    y1, x1 = max(y0 + 1, int((top + height) / 480 * 32)), max(x0 + 1, int((left + width) / 640 * 43))
    from_thumbnail = tf.image.resize(thumbnail[y0:y1, x0:x1], (32, 32), "bicubic").numpy()
    assert sharpness(got) > 4 * sharpness(from_thumbnail)


@pytest.mark.parametrize("channels", [1, 3])
def test_decoding_only_the_crop_equals_decoding_then_cropping(channels):
    image = detailed_image(240, 320, seed=channels)
    if channels == 1:
        image = image[..., :1]
    jpeg = tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False)
    decoded = tf.io.decode_jpeg(jpeg, channels=channels)
    for i in range(10):
        seed = tf.constant([5, i])
        partial = crops.decode_random_resized_crop(jpeg, seed, (64, 64), channels=channels).numpy()
        whole = crops.random_resized_crop(decoded, seed, (64, 64)).numpy()
        assert partial.shape == (64, 64, channels)
        assert np.abs(partial.astype(int) - whole.astype(int)).max() <= 1  # within 1/255


def test_crops_run_in_a_parallel_tf_data_map_and_repeat():
    images = [detailed_image(100 + 20 * i, 160 - 10 * i, seed=i) for i in range(4)]
    jpegs = [tf.io.encode_jpeg(x).numpy() for x in images]

    def views():
        ds = tf.data.Dataset.from_tensor_slices(jpegs).enumerate()
        ds = ds.map(
            lambda i, b: crops.decode_random_resized_crop(b, tf.stack([9, tf.cast(i, tf.int32)]), (24, 24)),
            num_parallel_calls=4,
            deterministic=True,
        )
        return np.stack(list(ds.as_numpy_iterator()))

    first = views()
    assert first.shape == (4, 24, 24, 3)
    np.testing.assert_array_equal(views(), first)


def test_center_crop_against_numpy():
    image = detailed_image(300, 400)
    got = crops.center_crop(image, (64, 64)).numpy()
    side = int(300 * 0.875)
    top, left = (300 - side) // 2, (400 - side) // 2
    reference = tf.image.resize(image[top : top + side, left : left + side].astype(np.float32), (64, 64), "bicubic")
    np.testing.assert_array_equal(got, np.clip(np.round(reference.numpy()), 0, 255).astype(np.uint8))


def _folder_of_mixed_sizes(root):
    """JPEGs and a PNG of different sizes in two class folders."""
    sizes = [(120, 90), (64, 200), (300, 240), (50, 50), (96, 128), (77, 61)]
    images = [detailed_image(h - h % 2, w - w % 2, seed=i) for i, (h, w) in enumerate(sizes)]
    for i, image in enumerate(images):
        folder = root / ("a" if i < 3 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        if i == 4:
            (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
        else:
            (folder / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(image, quality=95).numpy())
    return images


def test_contrastive_views_crop_encoded_images_of_any_size(tmp_path):
    """A folder of JPEGs (and a PNG) of six sizes, kept encoded: each view is the crop drawn with the
    element's key and the view index (the same function called by hand), then the augmenter."""
    _folder_of_mixed_sizes(tmp_path)
    encoded = kc.data.load(tmp_path, decode=False)
    assert encoded.element_spec[0].dtype == tf.string and encoded.element_spec[0].shape.rank == 0
    crop = crops.RandomResizedCrop(32, area=(0.2, 1.0))

    def to_float(images, seed):  # the identity photometric stage: only the crop acts
        return tf.cast(images, tf.float32) / 255

    views, labels = next(iter(kc.data.contrastive_views(encoded, to_float, 6, seed=3, crop=crop)))
    assert views.shape == (6, 2, 32, 32, 3) and labels.numpy().tolist() == [0, 0, 0, 1, 1, 1]
    keys = [
        int(k) % (2**31 - 1) for k in tf.data.Dataset.random(seed=3 + 2**32, rerandomize_each_iteration=True).take(6)
    ]
    for i, (contents, _) in enumerate(encoded.as_numpy_iterator()):
        for v in range(2):
            want = crop(tf.constant(contents), tf.constant([keys[i], v])).numpy() / 255
            np.testing.assert_allclose(views[i, v].numpy(), want, atol=1e-6)
    assert np.abs(views[:, 0].numpy() - views[:, 1].numpy()).max() > 0.1
    again, _ = next(iter(kc.data.contrastive_views(encoded, to_float, 6, seed=3, crop=crop)))
    np.testing.assert_array_equal(again.numpy(), views.numpy())


def test_a_simclr_step_on_full_resolution_crops(tmp_path):
    """The whole path: encoded folder -> per-image crops -> batched photometric ops (no second crop)
    -> SimCLR trains."""
    _folder_of_mixed_sizes(tmp_path)
    photometric = kc.augment.SimCLRAugmenter(32, crop_area=(1.0, 1.0), crop_aspect_ratio=(1.0, 1.0), blur=False)
    x = tf.constant(detailed_image(32, 32)[None])
    assert np.abs(photometric(x, seed=[0, 0]).numpy() - x.numpy() / 255).max() > 0  # it still jitters
    flip_only = kc.augment.SimCLRAugmenter(
        32, crop_area=(1.0, 1.0), crop_aspect_ratio=(1.0, 1.0), color_jitter_probability=0.0, grayscale_probability=0.0
    )
    out = flip_only(x, seed=[0, 1]).numpy()[0]
    assert np.allclose(out, x.numpy()[0] / 255) or np.allclose(out, x.numpy()[0, :, ::-1] / 255)  # crop is identity
    trainer = kc.SimCLR(tiny_encoder(channels=3, size=32), photometric, temperature=0.5)
    trainer.compile(optimizer="sgd")
    ds = trainer.views_dataset(
        kc.data.load(tmp_path, decode=False), 6, crop=crops.RandomResizedCrop(32), repeat=True
    ).take(2)
    assert np.isfinite(trainer.fit(ds, verbose=0).history["loss"][0])


def test_encoded_images_need_a_crop_and_files():
    x = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="decode=False needs encoded files"):
        kc.data.load(x, decode=False)
    ds = tf.data.Dataset.from_tensor_slices([tf.io.encode_png(x[0]).numpy()] * 4)
    with pytest.raises(ValueError, match="crop=kc.crops.RandomResizedCrop"):
        kc.data.contrastive_views(ds, lambda images, seed: images, 2)


def test_a_tfds_dataset_kept_encoded_is_cropped_per_image():
    """tfds' path for ImageNet: images stay encoded (SkipDecoding) until each is cropped."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        encoded = kc.data.load("imagenet2012", "train", decode=False)
        assert encoded.element_spec[0].dtype == tf.string
        views, labels = next(
            iter(
                kc.data.contrastive_views(
                    encoded, lambda images, seed: tf.cast(images, tf.float32) / 255, 4, crop=crops.RandomResizedCrop(24)
                )
            )
        )
    assert views.shape == (4, 2, 24, 24, 3) and labels.shape == (4,)
