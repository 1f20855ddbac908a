import json

import pytest
import tensorflow as tf

from keras_contrastive import distribute


def test_strategy_by_name(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.strategy("default") is tf.distribute.get_strategy()
    mirrored = distribute.strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert distribute.strategy("auto") is tf.distribute.get_strategy()  # no GPU, no TF_CONFIG
    with pytest.raises(ValueError, match="Unknown strategy"):
        distribute.strategy("gpu")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.strategy("multi_worker")


def test_auto_reads_tf_config_workers(monkeypatch):
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    calls = []
    monkeypatch.setattr(
        tf.distribute,
        "MultiWorkerMirroredStrategy",
        lambda communication_options: calls.append(communication_options) or "mwms",
    )
    assert distribute.strategy("auto", collective_timeout=30) == "mwms"
    assert len(calls) == 1 and calls[0].timeout_seconds == 30


def test_multi_worker_after_tensorflow_started_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})
    )
    tf.constant(1.0) + 1.0  # TensorFlow has run ops in this process
    with pytest.raises(RuntimeError, match="before TensorFlow runs any op"):
        distribute.strategy("multi_worker")


def test_is_chief_and_logs_outside_multi_worker(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief()
    for task, chief in [({"type": "worker", "index": 0}, True), ({"type": "worker", "index": 1}, False)]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": task}))
        assert distribute.is_chief() is chief
    cluster = {"chief": ["c:1"], "worker": ["a:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief() is False
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.is_chief(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    logs = {"loss": tf.constant(1.0)}
    assert distribute.keras_reducible(logs) is logs  # untouched unless multi-worker


def test_sync_batch_norm_default_follows_the_replica_count():
    assert distribute.sync_batch_norm_default(None) is False
    assert distribute.sync_batch_norm_default(True) is True
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        assert distribute.sync_batch_norm_default(None) is True
        assert distribute.sync_batch_norm_default(False) is False
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        assert distribute.sync_batch_norm_default(None) is False


def test_replica_helpers_without_a_strategy():
    assert distribute.num_replicas() == 1
    assert int(distribute.replica_id()) == 0
    x = tf.constant([[1.0, 2.0]])
    assert distribute.all_gather(x) is x
    assert distribute.check_even_split(3) is None
