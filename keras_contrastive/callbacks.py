"""Keras callbacks for contrastive training runs."""

import os
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_contrastive import distribute


def view_pairs_grid(views, max_images=8):
    """Tiles augmented views into one image: one row per image, one column per view.

    Args:
        views: float `[batch, num_views, H, W, C]` in [0, 1], or multi-crop's
            tuple of such groups of different sizes: the smaller views are
            drawn at their own size in the top-left corner of a white tile,
            so the picture shows how much of the image they see.
        max_images: int. Rows to show. Defaults to 8.

    Returns:
        float32 numpy `[rows * H, num_views * W, 3]` in [0, 1] (1-channel
        views are repeated to RGB), with a 1-pixel white border between tiles.
    """
    if isinstance(views, (tuple, list)):
        groups = [np.asarray(g, "float32")[:max_images] for g in views]
        if any(g.ndim != 5 for g in groups):
            raise ValueError(
                f"Expected groups of views [batch, views, H, W, C]; got shapes {[g.shape for g in groups]}."
            )
        height, width = max(g.shape[2] for g in groups), max(g.shape[3] for g in groups)
        pad = [[(0, 0), (0, 0), (0, height - g.shape[2]), (0, width - g.shape[3]), (0, 0)] for g in groups]
        views = np.concatenate([np.pad(g, p, constant_values=1.0) for g, p in zip(groups, pad)], axis=1)
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


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, with every epoch's metrics written whatever `update_freq` is.

    Keras 3.15.1's callback (read in `keras/src/callbacks/tensorboard.py`)
    keeps its batch-level `tf.summary.record_if(step % update_freq == 0)` open
    while `on_epoch_end` writes the epoch scalars, so with an integer
    `update_freq` an epoch's metrics reach the file only when the epoch ends on
    a multiple of `update_freq` batches (234 steps per epoch at
    `update_freq=20`: never). Here the epoch's writes record unconditionally.
    """

    def on_epoch_end(self, epoch, logs=None):
        with tf.summary.record_if(True):
            super().on_epoch_end(epoch, logs)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """Raises on a NaN or Inf loss, saying at which step, at what learning rate, and what to change.

    Keras' `TerminateOnNaN(raise_error=True)` with a message a user can act
    on: a loss that turns NaN in the first steps of a contrastive run almost
    always means a learning rate too large for the batch (or no warmup), so
    the error names the step, the current learning rate and `hint` (the
    recipes pass the flags to lower). It raises rather than stopping
    gracefully, so that `BackupAndRestore` keeps the last finite backup.

    Args:
        hint: str or None. Appended to the error, e.g. "lower --learning_rate".
            Defaults to a generic hint.
    """

    def __init__(self, hint=None):
        super().__init__(raise_error=True)
        self.hint = hint or (
            "Lower the learning rate (e.g. 2-10x) or warm it up over more steps; check the inputs for NaN."
        )

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(keras.ops.convert_to_numpy(loss))):
            return
        optimizer = self.model.optimizer
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        raise RuntimeError(
            f"NaN or Inf loss encountered at batch {batch} (optimizer step {step}, learning rate {rate:.4g}). "
            + self.hint
        )


class CollapseMonitor(keras.callbacks.Callback):
    """Warns, or stops with an error, when a trainer's collapse alarms fall below thresholds.

    Reads the metrics every trainer reports (`kc.monitor`): `projection_std`
    scaled by `sqrt(dim)` of the compared embeddings (about 1 when they spread
    over the sphere, 0 when collapsed onto a point) and the `effective_rank` of
    the encoder features (1 when every feature lies on one direction). The
    logs are the epoch's running means, checked every `check_every` batches and
    at each epoch's end; each alarm warns once until it recovers.

    Args:
        min_std_ratio: float. `projection_std * sqrt(dim)` below this is an
            alarm. Defaults to 0.1.
        min_effective_rank: float. `effective_rank` below this is an alarm.
            Defaults to 1.5.
        check_every: int. Batches between checks; 0 checks at epoch ends only.
            Defaults to 50.
        stop: bool. Raise a `RuntimeError` instead of warning (a run that
            `BackupAndRestore` can then resume with other settings). Defaults
            to False.
    """

    def __init__(self, min_std_ratio=0.1, min_effective_rank=1.5, check_every=50, stop=False):
        super().__init__()
        self.min_std_ratio = float(min_std_ratio)
        self.min_effective_rank = float(min_effective_rank)
        self.check_every = int(check_every)
        self.stop = bool(stop)
        self._alarms = set()

    def _check(self, logs, where):
        logs = logs or {}
        dim = getattr(self.model, "monitored_dim", None)
        readings = {}
        if "projection_std" in logs and dim:
            readings["projection_std * sqrt(dim)"] = (
                float(keras.ops.convert_to_numpy(logs["projection_std"])) * np.sqrt(dim),
                self.min_std_ratio,
                f"about 1 when the {dim}-d embeddings spread over the sphere, 0 when they collapse to a point",
            )
        if "effective_rank" in logs:
            readings["effective_rank"] = (
                float(keras.ops.convert_to_numpy(logs["effective_rank"])),
                self.min_effective_rank,
                "of the encoder features: 1 when all lie on one direction",
            )
        for name, (value, threshold, meaning) in readings.items():
            if value >= threshold or not np.isfinite(value):
                self._alarms.discard(name)
                continue
            if name in self._alarms:
                continue
            self._alarms.add(name)
            message = (
                f"Representation collapse {where}: {name} = {value:.4g}, below {threshold:g} ({meaning}). "
                "Common causes: a learning rate too high, a temperature too low, augmentations too weak "
                "(or a shortcut such as colour left in), a projection head without BatchNorm."
            )
            if self.stop:
                raise RuntimeError(message)
            warnings.warn(message, stacklevel=2)

    def on_train_batch_end(self, batch, logs=None):
        if self.check_every and (batch + 1) % self.check_every == 0:
            self._check(logs, f"at batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"at the end of epoch {epoch + 1}")


class KNNMonitor(keras.callbacks.Callback):
    """Weighted kNN accuracy of the encoder being trained, logged as a metric every `every` epochs.

    The online check solo-learn and lightly run: features of a labeled bank
    and of held-out images from the current encoder (inference mode, so BN
    uses its moving statistics), scored by `kc.evaluation.knn_accuracy`, and
    written into the epoch's logs under `name` (History, TensorBoard: put this
    callback before `keras.callbacks.TensorBoard`). Features come from the
    encoder called outside the replicas (its weights are the same on every
    replica), so the figure does not depend on the number of replicas; on a
    multi-worker run every worker computes the same figure.

    Args:
        bank: `(images, labels)` arrays or a `tf.data.Dataset` of
            `(image, label)`: the labeled bank (e.g. part of the training split).
        test: the same for the held-out images scored.
        every: int >= 1. Epochs between evaluations. Defaults to 1.
        k: int. Neighbours. Defaults to 200.
        temperature: float. Vote temperature. Defaults to 0.1.
        batch_size: int. Feature-extraction batch. Defaults to 512.
        name: str. Log key. Defaults to "knn_accuracy".
        encoder: keras.Model or None. The network whose features are scored;
            None: the trained model's `encoder` (a trainer's), else the
            model itself. Defaults to None.
    """

    def __init__(self, bank, test, every=1, k=200, temperature=0.1, batch_size=512, name="knn_accuracy", encoder=None):
        super().__init__()
        self.encoder = encoder
        if int(every) < 1:
            raise ValueError(f"`every` must be >= 1; got {every}.")
        self.bank, self.test = bank, test
        self.every, self.k, self.temperature = int(every), int(k), float(temperature)
        self.batch_size, self.name = int(batch_size), name

    def _features(self, data):
        from keras_contrastive import evaluation

        if isinstance(data, tf.data.Dataset):
            return evaluation.extract_features(self._encoder(), data, batch_size=self.batch_size, verbose=0)
        images, labels = data
        return evaluation.extract_features(self._encoder(), images, batch_size=self.batch_size, verbose=0), labels

    def _encoder(self):
        return self.encoder if self.encoder is not None else self.model

    def accuracy(self):
        """The kNN accuracy of `self.model`'s encoder now."""
        from keras_contrastive import evaluation

        bank, bank_labels = self._features(self.bank)
        test, test_labels = self._features(self.test)
        return evaluation.knn_accuracy(
            bank, bank_labels, test, test_labels, k=self.k, temperature=self.temperature, verbose=0
        )

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 and logs is not None:
            logs[self.name] = self.accuracy()


_BACKUP_NAME = re.compile(r"^epoch(\d+)-batch(\d+)-step(\d+)\.weights\.h5$")


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, safe to kill at any moment and exact to resume.

    Keras 3's callback (read on 3.15.1) overwrites one weights file and then
    its JSON metadata in place, so a kill during a write can leave a torn
    file or weights and metadata of different steps; and after a kill in the
    middle of an epoch it replays that epoch from its first batch. This one:

    * writes each backup to a temporary file and renames it into place, its
      position (epoch, batch within the epoch, global step) in the file name,
      so every file with a final name is complete; the previous backup is
      deleted only after the new one exists (`keep` backups are kept);
    * restores the newest backup that reads back, skipping (with a warning)
      any that is corrupted or truncated;
    * with an integer `save_freq`, continues an interrupted epoch after its
      last saved batch: the run still makes `epochs * steps_per_epoch`
      optimizer steps in all (it stops once that many are done), and the
      input pipeline must continue at `resume_step` too, e.g.
      `contrastive_views(..., start_batch=backup.resume_step)`; Keras' epoch
      numbering then runs `batch` steps behind the data, which only shifts
      where epoch-end callbacks fire;
    * never writes a backup whose step logged a non-finite value, so a run
      that dies on a NaN loss (`TerminateOnNaN(raise_error=True)`) keeps its
      last good backup;
    * under a multi-worker strategy, only the chief writes; every worker
      restores, so `backup_dir` must be shared (e.g. a GCS bucket).

    The weights file holds the model's variables and the optimizer's (its
    step counter and so every schedule, the momentum buffers), and any other
    model state that is a variable (e.g. MoCo's momentum encoder).

    Args:
        backup_dir: str. Directory of this run's backups (nothing else).
        save_freq: "epoch" or int. Back up at the end of each epoch, or every
            `save_freq` optimizer steps (and at the end of each epoch).
            Defaults to "epoch".
        keep: int >= 2. Backups kept on disk. Defaults to 2.
        delete_checkpoint: bool. Delete the backups when `fit` ends normally.
            Defaults to True.
    """

    def __init__(self, backup_dir, save_freq="epoch", keep=2, delete_checkpoint=True):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        if int(keep) < 2:
            raise ValueError(f"`keep` must be >= 2 (one backup may be torn by a kill); got {keep}.")
        if save_freq != "epoch" and int(save_freq) < 1:
            raise ValueError(f"`save_freq` must be 'epoch' or a positive int; got {save_freq!r}.")
        self.keep = int(keep)
        self._chosen = None  # the backup resume_step promised to the input pipeline
        self._steps_done = 0
        self._stop_at = None
        self._epoch, self._batch_in_epoch = 0, 0

    # -------------------------------------------------------------- reading
    def _backups(self):
        """`[(step, epoch, batch, path)]` on disk, newest first."""
        if not tf.io.gfile.exists(self.backup_dir):
            return []
        found = []
        for name in tf.io.gfile.listdir(self.backup_dir):
            match = _BACKUP_NAME.match(name)
            if match:
                epoch, batch, step = (int(g) for g in match.groups())
                found.append((step, epoch, batch, os.path.join(self.backup_dir, name)))
        return sorted(found, reverse=True)

    @staticmethod
    def _readable(path):
        try:
            import h5py

            def read(name, obj):
                if isinstance(obj, h5py.Dataset):
                    obj[()]  # reads the bytes: a truncated file fails here

            with tf.io.gfile.GFile(path, "rb") as f, h5py.File(f, "r") as h5:
                h5.visititems(read)
            return True
        except Exception:  # noqa: BLE001 - any failure to read means "corrupted"
            return False

    def _choose(self):
        if self._chosen is None:
            self._chosen = ()
            for backup in self._backups():
                if self._readable(backup[3]):
                    self._chosen = backup
                    break
                warnings.warn(
                    f"Skipping the backup {backup[3]}: it cannot be read (corrupted or truncated).", stacklevel=2
                )
        return self._chosen or None

    @property
    def resume_step(self):
        """Optimizer steps done by the backup the next `fit` resumes from (0 if none).

        Start the training input pipeline at this batch so that the resumed
        run sees the batches the interrupted one would have seen next.
        """
        chosen = self._choose()
        return chosen[0] if chosen else 0

    # ------------------------------------------------------------- restoring
    def on_train_begin(self, logs=None):
        self._steps_done = 0
        self._stop_at = None
        self._epoch, self._batch_in_epoch = 0, 0
        chosen = self._choose()
        self._chosen = None  # later fits look at the disk again
        if not chosen:
            return
        if not self.model.built:
            raise ValueError("BackupAndRestore needs a built model before `fit`; call it on a batch first.")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        step, epoch, batch, path = chosen
        self.model.load_weights(path)
        self._steps_done = step
        self.model._initial_epoch = epoch
        steps_per_epoch = (self.params or {}).get("steps")
        epochs = (self.params or {}).get("epochs")
        if batch and steps_per_epoch and epochs:
            self._stop_at = epochs * steps_per_epoch
        elif batch:
            self._steps_done -= batch  # the epoch is replayed from its start
        print(f"Resumed from {path}: epoch {epoch + 1}, after batch {batch}, {step} steps done.", flush=True)

    # -------------------------------------------------------------- writing
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batch_in_epoch = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done += 1
        self._batch_in_epoch += 1
        if self._stop_at is not None and self._steps_done >= self._stop_at:
            self.model.stop_training = True
        if self.save_freq != "epoch" and self._steps_done % int(self.save_freq) == 0:
            self._save(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch, self._batch_in_epoch = epoch + 1, 0
        self._save(logs)

    def _position(self):
        """(epoch, batches of it done): from the step count when epochs have a fixed length."""
        steps_per_epoch = (self.params or {}).get("steps")
        if steps_per_epoch:
            return divmod(self._steps_done, steps_per_epoch)
        # Epochs end when the data does: a mid-epoch backup resumes at the
        # start of its epoch, as Keras' own callback does.
        return self._epoch, self._batch_in_epoch

    def _save(self, logs):
        if not distribute.is_chief(self.model.distribute_strategy):
            return
        values = [v for v in (logs or {}).values() if np.ndim(v) == 0]
        if not all(np.isfinite(float(v)) for v in values):
            return  # keep the last good backup
        epoch, batch = self._position()
        name = f"epoch{epoch:05d}-batch{batch:07d}-step{self._steps_done:010d}.weights.h5"
        tf.io.gfile.makedirs(self.backup_dir)
        final = os.path.join(self.backup_dir, name)
        temporary = os.path.join(self.backup_dir, "tmp-" + name)
        self.model.save_weights(temporary, overwrite=True)
        tf.io.gfile.rename(temporary, final, overwrite=True)
        for *_, old in self._backups()[self.keep :]:
            tf.io.gfile.remove(old)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and distribute.is_chief(self.model.distribute_strategy):
            if tf.io.gfile.exists(self.backup_dir):
                tf.io.gfile.rmtree(self.backup_dir)
