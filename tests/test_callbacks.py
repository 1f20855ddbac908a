"""kc.callbacks: the backup that resumes exactly, survives torn files and NaN; the views image."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import random_views
from conftest import tiny_encoder
from conftest import weights_of

import keras_contrastive as kc

STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 3, 8


def build(method, seed=0):
    keras.utils.set_random_seed(seed)
    encoder = tiny_encoder(seed=seed)
    # A queue of more keys than the run makes (12 steps x 16): a resumed run that lost it would hold fewer.
    if method == "simclr":
        model = kc.SimCLR(encoder, projection_dim=4, temperature=0.5)
    elif method == "simclr_queue":
        model = kc.SimCLR(encoder, projection_dim=4, temperature=0.5, negatives=kc.negatives.Queue(200))
    elif method == "supcon":
        model = kc.SupCon(encoder, projection_dim=4, temperature=0.5)
    elif method == "supcon_bank":
        # 40 examples in 12 steps of 8: rows written again (momentum), drawn 30 at a time (the draws follow the
        # update count, which must come back too).
        bank = kc.negatives.MemoryBank(40, num_negatives=30, keep_labels=True)
        model = kc.SupCon(encoder, projection_dim=4, temperature=0.5, negatives=bank)
    elif method == "swav_queue":
        # A queue of 32 is full after 4 steps and clusters with the batch from step 5; the prototypes thaw at step 6,
        # where the killed run resumes: queue, slots, prototypes and the step count must all come back.
        model = kc.SwAV(
            encoder,
            num_prototypes=6,
            freeze_prototypes_steps=6,
            queue=kc.negatives.Queue(32),
            projection_dim=4,
            projection_hidden_dim=8,
        )
    else:
        model = kc.MoCoV3(encoder, hidden_dim=8, projection_dim=4, total_steps=STEPS_PER_EPOCH * EPOCHS)
    # Momentum and a schedule: both must come back from a backup.
    schedule = keras.optimizers.schedules.CosineDecay(0.1, STEPS_PER_EPOCH * EPOCHS)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    return model


def data(start_batch=0, nan_batch=None, with_index=False):
    """An endless stream of view batches; batch i is a function of i alone, as in contrastive_views."""
    views = random_views(n=BATCH * 5, size=16)
    labels = np.arange(len(views)) % 3
    if nan_batch is not None:
        views = np.tile(views, (3, 1, 1, 1, 1))
        labels = np.tile(labels, 3)
        views[nan_batch * BATCH] = np.nan
    x = {"views": views, "index": np.arange(len(views), dtype="int32")} if with_index else views
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).repeat().batch(BATCH, drop_remainder=True)
    return ds.skip(start_batch)


class Crash(keras.callbacks.Callback):
    """Stands in for a dying process: raises after `step` training steps (after the backup's turn)."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            raise KeyboardInterrupt("killed")


class Count(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def fit(model, callbacks, start_batch=0):
    views = data(start_batch, with_index=model.needs_index)
    return model.fit(views, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, callbacks=callbacks, verbose=0)


def backups(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".weights.h5"))


@pytest.mark.parametrize(
    "method",
    [
        "simclr",
        "supcon",
        "moco_v3",
        *(pytest.param(m, marks=pytest.mark.slow) for m in ("simclr_queue", "supcon_bank", "swav_queue")),
    ],
)
@pytest.mark.fit_raises
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, method):
    reference = build(method)
    fit(reference, [])

    # Killed after 7 steps (epoch 2, batch 3) with a backup every 2 steps: the
    # newest backup is after step 6, so one step is lost, not the epoch.
    model = build(method)
    backup = kc.callbacks.BackupAndRestore(str(tmp_path), save_freq=2, delete_checkpoint=False)
    with pytest.raises(KeyboardInterrupt):
        fit(model, [backup, Crash(7)])
    assert backups(tmp_path) == [
        "epoch00001-batch0000000-step0000000004.weights.h5",
        "epoch00001-batch0000002-step0000000006.weights.h5",
    ]

    # A new process: other initial weights, a fresh optimizer.
    resumed = build(method, seed=1)
    backup = kc.callbacks.BackupAndRestore(str(tmp_path))
    assert backup.resume_step == 6
    count = Count()
    fit(resumed, [backup, count], start_batch=backup.resume_step)
    assert count.batches == STEPS_PER_EPOCH * EPOCHS - 6
    assert int(resumed.optimizer.iterations.numpy()) == STEPS_PER_EPOCH * EPOCHS
    if method == "simclr_queue":  # the queue's keys, labels and slots are among the weights below
        assert int(resumed.negatives.filled.numpy()) == STEPS_PER_EPOCH * EPOCHS * 2 * BATCH
    if method == "supcon_bank":  # every row written, 12 updates (rows, labels, counts are among the weights below)
        assert int(resumed.negatives.written.numpy().sum()) == 40 and int(resumed.negatives.update_count.numpy()) == 12
    if method == "swav_queue":  # full, and wrapped round: the next slot is where 12 steps of 8 pairs leave it
        assert (int(resumed.queue.filled.numpy()), int(resumed.queue.pointer.numpy())) == (32, 96 % 32)
    for (path, want), (_, got) in zip(weights_of(reference), weights_of(resumed)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=path)
    for want, got in zip(reference.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6, err_msg=want.path)
    assert not tmp_path.exists() or backups(tmp_path) == []  # a finished run removes its backups


@pytest.mark.fit_raises
def test_a_torn_or_corrupted_backup_is_skipped(tmp_path):
    reference = build("simclr")
    fit(reference, [])
    model = build("simclr")
    with pytest.raises(KeyboardInterrupt):
        fit(model, [kc.callbacks.BackupAndRestore(str(tmp_path), save_freq=3), Crash(10)])
    names = backups(tmp_path)
    assert names == [
        "epoch00002-batch0000000-step0000000008.weights.h5",
        "epoch00002-batch0000001-step0000000009.weights.h5",
    ]
    newest = tmp_path / names[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    (tmp_path / ("tmp-epoch00002-batch0000002-step0000000010.weights.h5")).write_bytes(b"half-written")

    backup = kc.callbacks.BackupAndRestore(str(tmp_path))
    with pytest.warns(UserWarning, match="cannot be read"):
        assert backup.resume_step == 8
    resumed = build("simclr", seed=1)
    fit(resumed, [backup], start_batch=backup.resume_step)
    for (path, want), (_, got) in zip(weights_of(reference), weights_of(resumed)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=path)


@pytest.mark.fit_raises
def test_only_the_newest_backups_are_kept(tmp_path):
    model = build("simclr")
    with pytest.raises(KeyboardInterrupt):
        fit(model, [kc.callbacks.BackupAndRestore(str(tmp_path), save_freq=1, keep=3), Crash(6)])
    assert [int(n.split("step")[1][:10]) for n in backups(tmp_path)] == [4, 5, 6]
    assert not any(n.startswith("tmp-") for n in os.listdir(tmp_path))


@pytest.mark.fit_raises
def test_a_nan_loss_raises_naming_the_step_rate_and_hint_and_keeps_the_last_finite_backup(tmp_path):
    model = build("simclr")
    callbacks = [
        kc.callbacks.BackupAndRestore(str(tmp_path), save_freq=1),
        kc.callbacks.TerminateOnNaN(hint="Lower --learning_rate."),
    ]
    with pytest.raises(
        RuntimeError,
        match=r"NaN or Inf loss encountered at batch 1 \(optimizer step 6, learning rate 0\.0[0-9]+\)\. Lower --learning_rate\.",
    ):
        model.fit(data(nan_batch=5), epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, callbacks=callbacks, verbose=0)
    assert np.isnan(model.get_weights()[0]).any()  # the NaN did reach the weights
    backup = kc.callbacks.BackupAndRestore(str(tmp_path))
    assert backup.resume_step == 5  # steps 1-5 were finite; step 6 (batch index 5) was not
    # The kept backup holds exactly the weights after step 5 of the same run without the NaN.
    reference = build("simclr")
    reference.fit(data(), epochs=1, steps_per_epoch=5, verbose=0)
    restored = build("simclr", seed=1)
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(os.path.join(str(tmp_path), backups(tmp_path)[-1]))
    assert "step0000000005" in backups(tmp_path)[-1]
    for (path, want), (_, got) in zip(weights_of(reference), weights_of(restored)):
        np.testing.assert_array_equal(got, want, err_msg=path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep"):
        kc.callbacks.BackupAndRestore("/tmp/x", keep=1)
    with pytest.raises(ValueError, match="save_freq"):
        kc.callbacks.BackupAndRestore("/tmp/x", save_freq="batch")


def test_view_pairs_grid_puts_each_image_on_a_row():
    views = np.zeros((3, 2, 4, 4, 1), "float32")
    views[1, 1] = 1.0
    grid = kc.callbacks.view_pairs_grid(views)
    assert grid.shape == (3 * 6, 2 * 6, 3)
    np.testing.assert_array_equal(grid[6 + 1 : 6 + 5, 6 + 1 : 6 + 5], 1.0)  # image 1, view 1
    np.testing.assert_array_equal(grid[6 + 1 : 6 + 5, 1:5], 0.0)  # image 1, view 0


def test_view_pairs_grid_draws_multi_crops_small_views_at_their_size_on_white():
    big, small = np.zeros((2, 2, 4, 4, 1), "float32"), np.full((2, 3, 2, 2, 1), 0.5, "float32")
    grid = kc.callbacks.view_pairs_grid((big, small))
    assert grid.shape == (2 * 6, 5 * 6, 3)
    np.testing.assert_array_equal(grid[1:5, 1:5], 0.0)  # image 0, global view 0
    tile = grid[1:5, 2 * 6 + 1 : 2 * 6 + 5]  # image 0, the first small view: 2x2 of grey, the rest white
    np.testing.assert_array_equal(tile[:2, :2], 0.5)
    np.testing.assert_array_equal(tile[2:], 1.0)
    np.testing.assert_array_equal(tile[:, 2:], 1.0)


def test_tensorboard_writes_every_epochs_metrics_with_a_batch_update_freq(tmp_path):
    """3 steps per epoch at `update_freq=20`: Keras 3.15's callback drops the epoch scalars (its batch-level
    `record_if` is still open); ours writes epoch_loss for both epochs."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    board = kc.callbacks.TensorBoard(str(tmp_path), update_freq=20)
    model.fit(np.ones((30, 3)), np.ones((30, 1)), batch_size=10, epochs=2, verbose=0, callbacks=[board])
    steps = []
    for name in os.listdir(tmp_path / "train"):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "train" / name)):
            steps += [event.step for value in event.summary.value if value.tag == "epoch_loss"]
    assert sorted(steps) == [0, 1]
