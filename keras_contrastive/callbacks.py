"""Keras callbacks for contrastive training runs."""

import os

import numpy as np
import keras
import tensorflow as tf


def view_pairs_grid(views, max_images=8):
    """Tiles augmented views into one image: one row per image, one column per view.

    Args:
        views: float `[batch, num_views, H, W, C]` in [0, 1].
        max_images: int. Rows to show. Defaults to 8.

    Returns:
        float32 numpy `[rows * H, num_views * W, 3]` in [0, 1] (1-channel
        views are repeated to RGB), with a 1-pixel white border between tiles.
    """
    views = np.asarray(views, "float32")[:max_images]
    if views.ndim != 5:
        raise ValueError(f"Expected views [batch, num_views, H, W, C]; got shape {views.shape}.")
    if views.shape[-1] == 1:
        views = np.repeat(views, 3, axis=-1)
    views = np.pad(views, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)], constant_values=1.0)
    rows, cols, h, w, c = views.shape
    return views.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


class ViewPairsImage(keras.callbacks.Callback):
    """Writes a grid of augmented views to TensorBoard (and optionally a PNG).

    What the network is asked to match is easier to judge by eye than from
    parameters: each row shows the views of one image.

    Args:
        views: float `[batch, num_views, H, W, C]`, e.g. one batch of
            `contrastive_views`.
        log_dir: str. TensorBoard directory (the same as the TensorBoard
            callback's, so the image shows next to the scalars).
        max_images: int. Defaults to 8.
        png_path: str or None. Also save the grid as a PNG. Defaults to None.
    """

    def __init__(self, views, log_dir, max_images=8, png_path=None):
        super().__init__()
        self.grid = view_pairs_grid(views, max_images)
        self.log_dir = log_dir
        self.png_path = png_path

    def on_train_begin(self, logs=None):
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        with writer.as_default():
            tf.summary.image("augmented_views", self.grid[None], step=0)
        writer.flush()
        if self.png_path:
            png = tf.io.encode_png(tf.cast(tf.round(self.grid * 255.0), tf.uint8))
            tf.io.write_file(self.png_path, png)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
