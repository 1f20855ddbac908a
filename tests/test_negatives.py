import keras
import numpy as np
import pytest
from conftest import assert_replicas_match_one_replica
from conftest import cpu_strategy
from conftest import random_views
from conftest import tiny_encoder
from conftest import train

import keras_contrastive as kc


def built_queue(size, dim, **kwargs):
    queue = kc.negatives.Queue(size, **kwargs)
    queue.build((None, dim))
    return queue


def test_the_queue_holds_the_last_keys_in_order_and_wraps_around(rng):
    queue = built_queue(10, 3, keep_labels=True)
    keys, labels = rng.normal(size=(16, 3)).astype("float32"), np.arange(16, dtype="int32")
    _, _, valid = queue.contents()
    assert not valid.numpy().any()
    for step in range(4):
        queue.enqueue(keys[4 * step : 4 * step + 4], labels[4 * step : 4 * step + 4])
        seen = 4 * (step + 1)
        kept, kept_labels = queue.ordered()
        np.testing.assert_array_equal(kept, keys[max(0, seen - 10) : seen])
        np.testing.assert_array_equal(kept_labels, labels[max(0, seen - 10) : seen])
        _, slot_labels, valid = queue.contents()
        assert valid.numpy().sum() == min(seen, 10)
        assert (slot_labels.numpy()[~valid.numpy()] == -1).all()
    # 16 keys through 10 slots: keys 10-15 overwrote slots 0-5, the oldest kept (6-9) sit in slots 6-9.
    np.testing.assert_array_equal(queue.contents()[0].numpy(), np.concatenate([keys[10:16], keys[6:10]]))
    assert int(queue.pointer.numpy()) == 6


def test_a_list_of_keys_is_enqueued_in_list_order(rng):
    queue = built_queue(8, 2)
    first, second = rng.normal(size=(2, 3, 2)).astype("float32")
    queue.enqueue([first, second])
    np.testing.assert_array_equal(queue.ordered()[0], np.concatenate([first, second]))


def test_bad_arguments_fail_with_what_to_do():
    with pytest.raises(ValueError, match="`size` must be an int > 0"):
        kc.negatives.Queue(0)
    with pytest.raises(ValueError, match="at least the keys per step"):
        built_queue(4, 2).enqueue(np.zeros((5, 2), "float32"))
    with pytest.raises(ValueError, match="dimension 2"):
        built_queue(4, 2).enqueue(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="pass `labels`"):
        built_queue(4, 2, keep_labels=True).enqueue(np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="Build the queue"):
        kc.negatives.Queue(4).enqueue(np.zeros((1, 2), "float32"))


def nt_xent_with_negatives_reference(z1, z2, temperature, negatives, valid):
    """NT-Xent (Chen et al. eq. 1) in float64 loops: every view an anchor, its other view the positive, the
    other 2N - 2 views and the valid queued keys the negatives."""

    def unit(x):
        x = np.asarray(x, "float64")
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    views, queued = unit(np.concatenate([z1, z2])), unit(negatives)[np.asarray(valid)]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        candidates = [views[i] @ views[k] for k in range(2 * n) if k != i]
        candidates += [views[i] @ q for q in queued]
        logits = np.array(candidates) / temperature
        total += -views[i] @ views[positive] / temperature + np.log(np.exp(logits).sum())
    return total / (2 * n)


def test_nt_xent_with_queued_negatives_against_its_definition(rng):
    z1, z2 = rng.normal(size=(2, 6, 5))
    negatives = rng.normal(size=(7, 5))
    valid = np.array([True, True, False, True, False, True, True])
    got = kc.losses.nt_xent(z1, z2, 0.3, negatives=negatives, negatives_valid=valid)
    want = nt_xent_with_negatives_reference(z1, z2, 0.3, negatives, valid)
    np.testing.assert_allclose(float(got), want, rtol=1e-10)
    # No queue at all is the plain loss; an all-invalid queue changes nothing.
    plain = kc.losses.nt_xent(z1, z2, 0.3)
    none_valid = kc.losses.nt_xent(z1, z2, 0.3, negatives=negatives, negatives_valid=np.zeros(7, bool))
    np.testing.assert_allclose(float(none_valid), float(plain), rtol=1e-12)
    assert float(got) > float(plain) + 0.1


def build(strategy, size=40, learning_rate=0.0, dtype="float32"):
    with strategy.scope():
        model = kc.SimCLR(
            tiny_encoder(),
            temperature=0.2,
            projection_dim=8,
            negatives=kc.negatives.Queue(size, dtype=dtype),
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    return model


def projections(model, views):
    """The step's projections, by hand: encoder and head on the 2N views in training mode."""
    features = model.encoder(np.concatenate([views[:, 0], views[:, 1]]), training=True)
    z = model.projection_head(features, training=True).numpy()
    return np.split(z, 2)


def test_simclr_compares_with_the_previous_batches_and_enqueues_after_the_loss():
    model = build(cpu_strategy(1))  # learning rate 0: the weights stay, so each step's projections are known
    first, second = random_views(8, seed=1), random_views(8, seed=2)
    loss_1 = model.train_on_batch(first, return_dict=True)["loss"]
    z1, z2 = projections(model, first)
    # Step 1 saw an empty queue: plain NT-Xent. Then both views' unit projections were enqueued.
    np.testing.assert_allclose(loss_1, float(kc.losses.nt_xent(z1, z2, 0.2)), rtol=1e-5)
    unit = np.concatenate([z1, z2]) / np.linalg.norm(np.concatenate([z1, z2]), axis=1, keepdims=True)
    np.testing.assert_allclose(model.negatives.ordered()[0], unit, atol=1e-6)
    loss_2 = model.train_on_batch(second, return_dict=True)["loss"]
    y1, y2 = projections(model, second)
    want = nt_xent_with_negatives_reference(y1, y2, 0.2, unit, np.ones(16, bool))
    np.testing.assert_allclose(loss_2, want, rtol=1e-5)
    # evaluate reads the queue and leaves it as it is.
    before = model.negatives.ordered()[0]
    model.evaluate(first, batch_size=8, verbose=0)
    np.testing.assert_array_equal(model.negatives.ordered()[0], before)


@pytest.mark.parametrize("num_replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_two_replicas_fill_the_queue_and_train_as_one(float64, num_replicas):
    """Three steps of 32 keys through 40 slots (it wraps around) on 1 and 2 (4) replicas from the same weights:
    the same loss, weights and queue, slot by slot."""
    _, model, _, _ = assert_replicas_match_one_replica(
        lambda strategy: build(strategy, learning_rate=0.05, dtype="float64"), num_replicas, random_views(48)
    )
    assert int(model.negatives.filled.numpy()) == 40 and int(model.negatives.pointer.numpy()) == 96 % 40
    assert np.abs(model.negatives.keys.numpy()).max() > 0.1  # the queue was filled, not compared at zero


def test_the_queue_is_saved_with_the_model_and_in_its_config(tmp_path):
    model = build(cpu_strategy(1), size=24)
    model.train_on_batch(random_views(8))
    path = str(tmp_path / "simclr.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.negatives, kc.negatives.Queue) and restored.negatives.size == 24
    np.testing.assert_array_equal(restored.negatives.keys.numpy(), model.negatives.keys.numpy())
    assert int(restored.negatives.filled.numpy()) == 16 and int(restored.negatives.pointer.numpy()) == 16


def test_the_queue_under_jit_compile_matches_the_eager_step():
    views = random_views(16)
    eager, jit = build(cpu_strategy(1), learning_rate=0.05), build(cpu_strategy(1), learning_rate=0.05)
    jit.set_weights(eager.get_weights())
    jit.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    eager.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    for step in range(2):
        batch = views[8 * step : 8 * step + 8]
        want, got = eager.train_on_batch(batch), jit.train_on_batch(batch)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    # Step 2's keys come after one update: XLA's and the eager kernels' rounding moves them by up to 2e-4 (of
    # keys about 0.3 in size); a wrong slot or a missing enqueue moves them by the keys' own size.
    np.testing.assert_allclose(jit.negatives.keys.numpy(), eager.negatives.keys.numpy(), atol=1e-3)
    assert int(jit.negatives.filled.numpy()) == 32


def test_simclr_rejects_a_queue_it_cannot_use():
    with pytest.raises(ValueError, match="2 views"):
        kc.SimCLR(tiny_encoder(), projection_dim=8, num_views=3, negatives=kc.negatives.Queue(16))
    with pytest.raises(ValueError, match="must be a keras_contrastive.negatives.Queue"):
        kc.SimCLR(tiny_encoder(), projection_dim=8, negatives=16)
    with pytest.raises(ValueError, match="dimension 4; this model's are 8"):
        kc.SimCLR(tiny_encoder(), projection_dim=8, negatives=built_queue(16, 4))


def unit_rows(x):
    x = np.asarray(x, "float64")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def info_nce_with_negatives_reference(q, k, temperature, negatives):
    """MoCo's InfoNCE in float64 loops: query i against every key (its positive is key i) and the queued keys,
    times 2 tau (MoCo v3)."""
    q, k, negatives = unit_rows(q), unit_rows(k), unit_rows(negatives)
    total = 0.0
    for i in range(len(q)):
        logits = np.array([q[i] @ c for c in np.concatenate([k, negatives])]) / temperature
        total += np.log(np.exp(logits).sum()) - logits[i]
    return 2 * temperature * total / len(q)


def test_moco_v3_reads_the_queue_of_momentum_keys_in_both_terms():
    with cpu_strategy(1).scope():
        model = kc.MoCoV3(
            tiny_encoder(), temperature=0.2, hidden_dim=16, projection_dim=8, negatives=kc.negatives.Queue(32)
        )
        model.compile(optimizer=keras.optimizers.SGD(0.0))  # the branches stay equal and fixed

    def keys(views):
        return [
            model.momentum_projector(model.momentum_encoder(views[:, v], training=True), training=True).numpy()
            for v in (0, 1)
        ]

    def queries(views):
        return [
            model.predictor(model.projector(model.encoder(views[:, v], training=True), training=True), training=True)
            for v in (0, 1)
        ]

    first, second = random_views(8, seed=1), random_views(8, seed=2)
    model.train_on_batch(first)
    k1, k2 = keys(first)
    queued = unit_rows(np.concatenate([k1, k2]))
    np.testing.assert_allclose(model.negatives.ordered()[0], queued, atol=1e-6)
    loss = model.train_on_batch(second, return_dict=True)["loss"]
    (y1, y2), (c1, c2) = [np.asarray(q) for q in queries(second)], keys(second)
    want = info_nce_with_negatives_reference(y1, c2, 0.2, queued) + info_nce_with_negatives_reference(
        y2, c1, 0.2, queued
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert int(model.negatives.filled.numpy()) == 32


def supcon_with_queue_reference(z, labels, temperature, base_temperature, negatives, negative_labels):
    """SupCon L_out (Khosla et al. eq. 2) in float64 loops, every view an anchor; the queued keys join A(i), and
    P(i) where their label is the anchor's."""
    n, v, _ = z.shape
    views = unit_rows(np.transpose(z, (1, 0, 2)).reshape(n * v, -1))
    view_labels = np.tile(labels, v)
    candidates = np.concatenate([views, unit_rows(negatives)])
    candidate_labels = np.concatenate([view_labels, negative_labels])
    losses, count = 0.0, 0
    for i in range(n * v):
        others = [a for a in range(len(candidates)) if a != i]
        positives = [p for p in others if candidate_labels[p] == view_labels[i]]
        if not positives:
            continue
        log_denominator = np.log(sum(np.exp(views[i] @ candidates[a] / temperature) for a in others))
        mean_log_prob = np.mean([views[i] @ candidates[p] / temperature - log_denominator for p in positives])
        losses += -(temperature / base_temperature) * mean_log_prob
        count += 1
    return losses / count


def test_supcon_with_a_queue_against_its_definition(rng):
    # Labels 0-3 in the batch; the queue holds labels 3-5 and an empty slot. Anchors of label 3 find positives in
    # the queue; labels 4 and 5 are only negatives; the empty slot is neither.
    z, labels = rng.normal(size=(6, 2, 5)), np.array([0, 1, 2, 3, 0, 1])
    negatives, negative_labels = rng.normal(size=(4, 5)), np.array([3, 4, 5, -1])
    valid = np.array([True, True, True, False])
    got = kc.losses.supcon(z, labels, 0.3, 0.2, "all", negatives, negative_labels, valid)
    want = supcon_with_queue_reference(z, labels, 0.3, 0.2, negatives[:3], negative_labels[:3])
    np.testing.assert_allclose(float(got), want, rtol=1e-10)
    # Anchors of label 2 have their only positive in the batch: a queued key of label 2 must change the loss.
    moved = kc.losses.supcon(z, labels, 0.3, 0.2, "all", negatives, np.array([3, 4, 2, -1]), valid)
    assert abs(float(moved) - float(got)) > 1e-3


def build_supcon(strategy, learning_rate=0.05, dtype="float32"):
    with strategy.scope():
        model = kc.SupCon(
            tiny_encoder(),
            temperature=0.2,
            base_temperature=0.1,
            projection_dim=8,
            negatives=kc.negatives.Queue(40, keep_labels=True, dtype=dtype),
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    return model


def test_supcon_enqueues_labelled_keys_and_two_replicas_train_as_one(float64):
    views, labels = random_views(48), np.arange(48) % 5
    _, model, _, _ = assert_replicas_match_one_replica(
        lambda strategy: build_supcon(strategy, dtype="float64"), 2, views, labels
    )
    # The last step's 32 keys (16 images x 2 views, view-major) with their labels, then the 8 before them.
    kept, kept_labels = model.negatives.ordered()
    np.testing.assert_array_equal(kept_labels, np.concatenate([labels[24:32]] + [labels[32:48]] * 2))
    assert np.abs(kept).max() > 0.1


def test_supcon_asks_for_a_queue_with_labels():
    with pytest.raises(ValueError, match="keep_labels=True"):
        kc.SupCon(tiny_encoder(), projection_dim=8, negatives=kc.negatives.Queue(16))


@pytest.mark.parametrize("cls", [kc.SimCLR, kc.SupCon, kc.MoCoV3])
def test_every_trainer_rebuilds_its_queue_from_its_config(cls):
    kwargs = dict(hidden_dim=8) if cls is kc.MoCoV3 else {}
    model = cls(tiny_encoder(), projection_dim=8, negatives=kc.negatives.Queue(48, keep_labels=True), **kwargs)
    clone = cls.from_config(model.get_config())
    assert isinstance(clone.negatives, kc.negatives.Queue) and clone.negatives is not model.negatives
    assert (clone.negatives.size, clone.negatives.keep_labels, clone.negatives.dim) == (48, True, 8)
    assert not clone.needs_index
    bank = kc.negatives.MemoryBank(48, num_negatives=20, momentum=0.25, keep_labels=True, seed=7)
    clone = cls.from_config(cls(tiny_encoder(), projection_dim=8, negatives=bank, **kwargs).get_config())
    assert type(clone.negatives) is kc.negatives.MemoryBank and clone.needs_index
    got = clone.negatives
    assert (got.size, got.num_negatives, got.momentum, got.keep_labels, got.seed, got.dim) == (48, 20, 0.25, True, 7, 8)
    assert cls.from_config(cls(tiny_encoder(), projection_dim=8, **kwargs).get_config()).negatives is None


def mochi_reference(anchors, keys, valid, drawn, n_hardest):
    """MoCHi's synthetic negatives (Kalantidis et al. eqs. 3-4) for the given draws, in float64 numpy."""
    anchors, keys = unit_rows(anchors), unit_rows(keys)
    similarity = np.where(valid, anchors @ keys.T, -np.inf)
    similarities, usable = [], []
    for a, q in enumerate(anchors):
        hardest = np.argsort(-similarity[a], kind="stable")[:n_hardest]
        ok = np.isfinite(similarity[a, hardest])
        row, row_ok = [], []
        for i, j, alpha in zip(drawn["first"][a], drawn["second"][a], drawn["alpha"][a]):
            h = alpha * keys[hardest[i]] + (1 - alpha) * keys[hardest[j]]
            row.append(q @ h / np.linalg.norm(h))
            row_ok.append(ok[i] and ok[j])
        for j, beta in zip(drawn["hard"][a], drawn["beta"][a]):
            h = beta * q + (1 - beta) * keys[hardest[j]]
            row.append(q @ h / np.linalg.norm(h))
            row_ok.append(ok[j])
        similarities.append(row)
        usable.append(row_ok)
    return np.array(similarities), np.array(usable)


def test_mochi_mixes_each_anchors_hardest_keys_as_the_paper_defines(rng):
    mochi = kc.negatives.MoCHi(N=4, s=6, s_prime=3)
    anchors, keys = rng.normal(size=(5, 8)), rng.normal(size=(10, 8))
    valid = np.array([True] * 7 + [False] * 3)
    index, seed = np.array([3, 4, 5, 6, 7], "int32"), np.array([1, 2], "int32")
    drawn = {name: value.numpy() for name, value in mochi.draws(seed, index, 8).items()}
    assert drawn["first"].shape == (5, 6) and drawn["hard"].shape == (5, 3)
    assert 0 <= drawn["first"].min() and drawn["second"].max() < 4 and drawn["hard"].max() < 4
    assert 0 <= drawn["alpha"].min() and drawn["alpha"].max() < 1 and drawn["beta"].max() < 0.5
    got, usable = mochi.synthetic_logits(unit_rows(anchors), unit_rows(keys), valid, index, 8, seed)
    want, want_usable = mochi_reference(anchors, keys, valid, drawn, 4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    assert usable.numpy().all() and want_usable.all()  # 7 written slots >= N
    # Anchors 3-7 of 8 draw what the whole batch's rows 3-7 draw (any replica split).
    whole = mochi.draws(seed, np.arange(8, dtype="int32"), 8)
    for name, value in whole.items():
        np.testing.assert_array_equal(value.numpy()[3:], drawn[name])
    # With 2 written slots, mixes that reach past them are left out; the draws are the same.
    few = np.array([True, True] + [False] * 8)
    _, usable = mochi.synthetic_logits(unit_rows(anchors), unit_rows(keys), few, index, 8, seed)
    _, want_usable = mochi_reference(anchors, keys, few, drawn, 4)
    np.testing.assert_array_equal(usable.numpy(), want_usable)
    assert 0 < want_usable.sum() < want_usable.size


def test_simclr_with_mochi_adds_the_steps_synthetic_negatives():
    with cpu_strategy(1).scope():
        model = kc.SimCLR(
            tiny_encoder(),
            temperature=0.2,
            projection_dim=8,
            negatives=kc.negatives.Queue(32, mochi=kc.negatives.MoCHi(N=8, s=5, s_prime=3)),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    first, second = random_views(8, seed=1), random_views(8, seed=2)
    model.train_on_batch(first)
    queued = model.negatives.ordered()[0]
    loss = model.train_on_batch(second, return_dict=True)["loss"]
    z1, z2 = projections(model, second)
    seed = np.array([0, 2], "int32")  # the trainer's seed 0; step 1 (the second), term 0: 2 * 1 + 0
    mochi = model.negatives.mochi
    want = kc.losses.nt_xent(z1, z2, 0.2, queued, np.ones(16, bool), mochi, seed)
    np.testing.assert_allclose(loss, float(want), rtol=1e-5)
    plain = kc.losses.nt_xent(z1, z2, 0.2, queued, np.ones(16, bool))
    assert float(want) > float(plain) + 1e-3  # the synthetic negatives count


def build_moco(strategy, mochi, dtype="float32"):
    with strategy.scope():
        model = kc.MoCoV3(
            tiny_encoder(),
            temperature=0.2,
            hidden_dim=16,
            projection_dim=8,
            total_steps=10,
            negatives=kc.negatives.Queue(40, mochi=mochi, dtype=dtype),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


@pytest.mark.slow
def test_moco_v3_with_mochi_on_two_replicas_trains_as_one(float64):
    """Hard negatives are drawn by each query's row in the global batch: 2 replicas draw what 1 draws."""
    views, mochi = random_views(48), kc.negatives.MoCHi(N=16, s=12, s_prime=6)
    _, _, init, ref_hist = assert_replicas_match_one_replica(
        lambda strategy: build_moco(strategy, mochi, "float64"), 2, views
    )
    # The mixing changed the run: the same weights without MoCHi give another loss.
    plain = build_moco(cpu_strategy(1), None, "float64")
    plain.set_weights(init)
    assert abs(train(plain, views)["loss"][0] - ref_hist["loss"][0]) > 1e-4


def test_mochi_is_saved_with_its_queue_and_refused_where_it_has_no_meaning(tmp_path):
    queue = kc.negatives.Queue(64, mochi=kc.negatives.MoCHi(N=32, s=16, s_prime=8))
    model = kc.SimCLR(tiny_encoder(), projection_dim=8, negatives=queue)
    path = str(tmp_path / "mochi.keras")
    model.save(path)
    restored = keras.saving.load_model(path).negatives.mochi
    assert (restored.N, restored.s, restored.s_prime) == (32, 16, 8)
    with pytest.raises(ValueError, match="exceeds the queue's size"):
        kc.negatives.Queue(16, mochi=kc.negatives.MoCHi(N=32))
    with pytest.raises(ValueError, match="adds no negatives"):
        kc.negatives.MoCHi(N=4, s=0, s_prime=0)
    with pytest.raises(ValueError, match="SupCon cannot tell"):
        kc.SupCon(tiny_encoder(), projection_dim=8, negatives=kc.negatives.Queue(64, True, mochi=kc.negatives.MoCHi(8)))
    with pytest.raises(ValueError, match="positives, not negatives"):
        kc.NNCLR(tiny_encoder(), support_set=kc.negatives.Queue(64, mochi=kc.negatives.MoCHi(8)))


@pytest.mark.slow  # an XLA compile; the queue's jit test stays in the quick subset
def test_mochi_compiles_under_xla_with_static_shapes():
    """XLA draws other stateless numbers than the host, so this checks the compiled step, not its values."""
    with cpu_strategy(1).scope():
        model = kc.SimCLR(
            tiny_encoder(),
            projection_dim=8,
            negatives=kc.negatives.Queue(32, mochi=kc.negatives.MoCHi(N=8, s=5, s_prime=3)),
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=True)
    history = train(model, random_views(32), batch=8, steps=3)
    assert np.isfinite(history["loss"]).all() and int(model.negatives.filled.numpy()) == 32


# ------------------------------------------------------------------ memory bank (Wu et al. 2018)


def bank_reference(size, dim, steps, momentum):
    """The bank after `steps` of `(keys per view, index, labels)`, in float64 numpy: row i becomes
    unit(m v_i + (1 - m) k_i) (unit(k_i) on its first write), k_i the mean of example i's keys over its views and
    over its duplicates in the step."""
    bank, labels, written = np.zeros((size, dim)), np.full(size, -1), np.zeros(size, bool)
    for keys, index, step_labels in steps:
        mean = np.mean([np.asarray(k, "float64") for k in keys], axis=0)
        new = {i: mean[index == i].mean(axis=0) for i in set(index.tolist())}
        for i, k in new.items():
            row = momentum * bank[i] + (1 - momentum) * k if written[i] else k
            bank[i] = row / np.linalg.norm(row)
            written[i] = True
        for i, label in zip(index, step_labels):
            labels[i] = label
    return bank, labels, written


def built_bank(size, dim, **kwargs):
    bank = kc.negatives.MemoryBank(size, **kwargs)
    bank.build((None, dim))
    return bank


def test_the_memory_bank_keeps_a_running_average_of_each_examples_keys(rng):
    bank = built_bank(10, 3, momentum=0.3, keep_labels=True, num_negatives=None, dtype="float64")
    steps = []
    # Step 2 rewrites rows 1 and 2 (the momentum path) and holds example 7 twice (its keys averaged).
    for index in (np.array([0, 1, 2, 3]), np.array([7, 1, 7, 2])):
        keys = [rng.normal(size=(4, 3)), rng.normal(size=(4, 3))]
        labels = index % 3
        bank.enqueue(keys, [labels, labels], index=index)
        steps.append((keys, index, labels))
    want, want_labels, written = bank_reference(10, 3, steps, 0.3)
    np.testing.assert_allclose(bank.keys.numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(bank.labels.numpy(), want_labels)
    np.testing.assert_array_equal(bank.written.numpy() > 0, written)
    assert int(bank.update_count.numpy()) == 2
    kept, kept_labels = bank.ordered()
    np.testing.assert_allclose(kept, want[written], atol=1e-12)
    # The loss reads every written row except the step's own examples (their stale copies).
    keys, labels, valid = bank.contents(np.array([2, 5]))
    np.testing.assert_allclose(keys.numpy(), want, atol=1e-12)
    np.testing.assert_array_equal(valid.numpy(), written & ~np.isin(np.arange(10), [2, 5]))
    np.testing.assert_array_equal(bank.contents()[2].numpy(), written)  # no index (evaluation): no row masked


def test_the_memory_bank_draws_rows_uniformly_and_the_same_for_the_same_update(rng):
    bank = built_bank(8, 4, num_negatives=4000, seed=3)
    bank.enqueue(rng.normal(size=(6, 4)), index=np.arange(6))
    rows = bank.keys.numpy()

    def drawn(index):
        keys, _, valid = bank.contents(index)
        # Each drawn key is a row of the bank; rows 6 and 7 are still zero (never written): 6 stands for both.
        match = np.argmin(np.abs(keys.numpy()[:, None, :] - rows[None]).sum(axis=-1), axis=1)
        np.testing.assert_array_equal(keys.numpy(), rows[match])
        return match, valid.numpy()

    match, valid = drawn(np.array([1]))
    np.testing.assert_array_equal(valid, (match < 6) & (match != 1))
    counts = np.bincount(match, minlength=8)
    # 4000 draws over 8 rows: 500 each expected (standard deviation 21), 1000 for the two zero rows.
    assert counts[:6].min() > 400 and counts[:6].max() < 600 and 850 < counts[6] < 1150, counts
    again, _ = drawn(np.array([1]))
    np.testing.assert_array_equal(again, match)  # a step's draws depend on the update count alone
    bank.enqueue(rng.normal(size=(6, 4)), index=np.arange(6))
    rows = bank.keys.numpy()
    assert (drawn(np.array([1]))[0] != match).mean() > 0.5  # the next update draws anew


def test_the_memory_bank_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="`num_negatives` must be"):
        kc.negatives.MemoryBank(10, num_negatives=0)
    with pytest.raises(ValueError, match="`momentum` must be"):
        kc.negatives.MemoryBank(10, momentum=1.0)
    with pytest.raises(ValueError, match="exceeds the 8 rows"):
        kc.negatives.MemoryBank(10, num_negatives=8, mochi=kc.negatives.MoCHi(N=16))
    with pytest.raises(ValueError, match="feed each example's index"):
        built_bank(10, 2).enqueue(np.ones((2, 2), "float32"))
    with pytest.raises(Exception, match=r"must lie in \[0, 10\)"):
        built_bank(10, 2).enqueue(np.ones((2, 2), "float32"), index=np.array([3, 10]))
    with pytest.raises(ValueError, match="memory bank is not supported"):
        kc.NNCLR(tiny_encoder(), support_set=kc.negatives.MemoryBank(64))
    with pytest.raises(ValueError, match="feature queue holds the last batches"):
        kc.SwAV(tiny_encoder(), num_prototypes=4, queue=kc.negatives.MemoryBank(64))
    model = kc.SimCLR(tiny_encoder(), projection_dim=8, negatives=kc.negatives.MemoryBank(64))
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    with pytest.raises(ValueError, match="needs each example's index"):
        model.train_on_batch(random_views(8))
    # Evaluation reads the bank without indices (nothing masked as the batch's own) and writes nothing.
    assert np.isfinite(model.evaluate(random_views(8), batch_size=8, verbose=0)).all()
    with pytest.raises(ValueError, match="exactly 'views' and 'index'"):
        model.train_on_batch({"views": random_views(8), "ids": np.arange(8)})


def build_with_bank(strategy, cls=kc.SimCLR, learning_rate=0.0, dtype="float32", **bank):
    with strategy.scope():
        kwargs = dict(base_temperature=0.1) if cls is kc.SupCon else {}
        model = cls(
            tiny_encoder(),
            temperature=0.2,
            projection_dim=8,
            negatives=kc.negatives.MemoryBank(dtype=dtype, **{"size": 20, "num_negatives": None, **bank}),
            **kwargs,
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9))
    return model


def test_simclr_reads_the_bank_without_the_steps_examples_then_writes_them():
    model = build_with_bank(cpu_strategy(1), momentum=0.5)  # learning rate 0: each step's projections are known
    first, second = random_views(8, seed=1), random_views(8, seed=2)
    index_1, index_2 = np.arange(8), np.array([6, 7, 8, 9, 10, 11, 12, 13])  # rows 6 and 7 again in step 2
    loss_1 = model.train_on_batch({"views": first, "index": index_1}, return_dict=True)["loss"]
    z1, z2 = projections(model, first)
    np.testing.assert_allclose(loss_1, float(kc.losses.nt_xent(z1, z2, 0.2)), rtol=1e-5)  # an empty bank
    loss_2 = model.train_on_batch({"views": second, "index": index_2}, return_dict=True)["loss"]
    y1, y2 = projections(model, second)
    bank, _, written = bank_reference(20, 8, [([unit_rows(z1), unit_rows(z2)], index_1, index_1)], 0.5)
    # Rows 0-5 are negatives; rows 6 and 7 are this step's own examples, and the rest were never written.
    want = nt_xent_with_negatives_reference(y1, y2, 0.2, bank[:6], np.ones(6, bool))
    np.testing.assert_allclose(loss_2, want, rtol=1e-5)
    steps = [([unit_rows(z1), unit_rows(z2)], index_1, index_1), ([unit_rows(y1), unit_rows(y2)], index_2, index_2)]
    np.testing.assert_allclose(model.negatives.keys.numpy(), bank_reference(20, 8, steps, 0.5)[0], atol=2e-6)


@pytest.mark.parametrize(
    "cls,num_replicas", [(kc.SimCLR, 2), (kc.SupCon, 2), pytest.param(kc.SimCLR, 4, marks=pytest.mark.slow)]
)
def test_two_replicas_fill_the_bank_and_train_as_one(float64, cls, num_replicas):
    """Three steps of 16 examples drawn from 20 (rows written again, an example twice in a batch) on 1 and 2 (4)
    replicas: the same loss, weights, bank rows, labels and draws (12 of 20 rows per step; MoCHi for SimCLR)."""
    index = np.concatenate([np.arange(16), np.array([16, 17, 18, 19, 0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10])])
    index = np.concatenate([index, np.arange(16)])
    views = {"views": random_views(48), "index": index}
    labels = index % 5 if cls is kc.SupCon else None
    bank = dict(num_negatives=12, keep_labels=cls is kc.SupCon)
    if cls is kc.SimCLR:
        bank["mochi"] = kc.negatives.MoCHi(N=6, s=4, s_prime=2)
    _, model, _, _ = assert_replicas_match_one_replica(
        lambda strategy: build_with_bank(strategy, cls, learning_rate=0.05, dtype="float64", **bank),
        num_replicas,
        views,
        labels,
    )
    assert int(model.negatives.written.numpy().sum()) == 20 and int(model.negatives.update_count.numpy()) == 3
    if cls is kc.SupCon:
        np.testing.assert_array_equal(model.negatives.labels.numpy(), np.arange(20) % 5)


def test_the_bank_under_jit_compile_matches_the_eager_step(tmp_path):
    views, index = random_views(16), np.arange(16) % 10
    eager, jit = build_with_bank(cpu_strategy(1), learning_rate=0.05), build_with_bank(cpu_strategy(1))
    jit.set_weights(eager.get_weights())
    jit.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=True)
    for step in range(2):
        batch = {"views": views[8 * step : 8 * step + 8], "index": index[8 * step : 8 * step + 8]}
        np.testing.assert_allclose(jit.train_on_batch(batch), eager.train_on_batch(batch), rtol=1e-4)
    np.testing.assert_allclose(jit.negatives.keys.numpy(), eager.negatives.keys.numpy(), atol=1e-3)
    # Saved with the model: rows, labels, written rows and the update count (the next draws).
    path = str(tmp_path / "bank.keras")
    eager.save(path)
    restored = keras.saving.load_model(path).negatives
    assert isinstance(restored, kc.negatives.MemoryBank) and (restored.size, restored.num_negatives) == (20, None)
    for name in ("keys", "labels", "written", "update_count"):
        np.testing.assert_array_equal(getattr(restored, name).numpy(), getattr(eager.negatives, name).numpy())
    assert int(restored.update_count.numpy()) == 2 and int(restored.written.numpy().sum()) == 10
