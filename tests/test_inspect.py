"""`python -m keras_contrastive.inspect`: figures and pictures of the shipped encoder, a ViT `.keras` file and an
export without its `.keras` file, checked against independent computations."""

import io
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import RESNET_PICTURES
from conftest import VIT_PICTURES
from conftest import numpy_knn

import keras_contrastive as kc
from keras_contrastive import inspect as kc_inspect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "saved_models", "simclr_fashion_mnist_pretrained")


def _png(path):
    image = tf.io.decode_png(tf.io.read_file(str(path))).numpy()
    assert image.ndim == 3 and image.shape[-1] == 3 and image.var() > 0, path
    return image


def _fashion(split, size, shape):
    images, labels = zip(
        *kc.data.load("fashion_mnist", split, image_size=shape[:2], channels=shape[2]).take(size).as_numpy_iterator()
    )
    return np.stack(images), np.array(labels)


def _check_written(output_dir, drawn, queries, neighbours, mapped, image_shape):
    assert {name[:-4] for name in os.listdir(output_dir) if name.endswith(".png")} == drawn
    height, width = image_shape[:2]
    retrieval = _png(os.path.join(output_dir, "retrieval.png"))
    assert retrieval.shape[:2] == (queries * (height + 6), (neighbours + 1) * (width + 6))
    assert _png(os.path.join(output_dir, "embedding_map.png")).shape == (512, 512, 3)
    for name in drawn:
        _png(os.path.join(output_dir, f"{name}.png"))
    logs = os.path.join(output_dir, "logs", "pictures")
    (event,) = os.listdir(logs)
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(os.path.join(logs, event)) for v in e.summary.value}
    assert tags == drawn
    projector = os.path.join(output_dir, "logs", "projector")
    labels = open(os.path.join(projector, "metadata.tsv")).read().splitlines()
    assert len(labels) == mapped
    (variable,) = [name for name, _ in tf.train.list_variables(projector) if name.startswith("embeddings")]
    assert tf.train.load_variable(projector, variable).shape[0] == mapped
    return labels


@pytest.mark.slow
def test_the_command_on_the_shipped_encoder_prints_what_an_independent_knn_computes(tmp_path):
    bank_size, test_size = 2000, 500
    cmd = [sys.executable, "-m", "keras_contrastive.inspect", SHIPPED, "--output_dir", str(tmp_path)]
    cmd += ["--bank_size", str(bank_size), "--test_size", str(test_size), "--mapped", "300"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The export's signatures and metadata (what `export inspect` printed before it folded in here).
    assert "signature 'serving_default'" in proc.stdout and '"method": "SimCLR"' in proc.stdout
    # Not a terminal: no progress bars.
    assert "━" not in proc.stdout and "[====" not in proc.stdout
    report = json.loads((tmp_path / "inspect.json").read_text())
    assert f"kNN accuracy (k=200, cosine, temperature 0.1): {report['knn_accuracy']:.4f}" in proc.stdout
    assert f"recall@1 {report['recall@1']:.4f}" in proc.stdout and "map@100" in proc.stdout

    # The same figure from the SavedModel's own signature and a numpy kNN.
    serve = tf.saved_model.load(kc.savedmodel.resolve_version(SHIPPED)).signatures["serving_default"]
    shape = kc.savedmodel.load_metadata(kc.savedmodel.resolve_version(SHIPPED))["input"]["shape"][1:]
    (bank, bank_labels), (test, test_labels) = _fashion("train", bank_size, shape), _fashion("test", test_size, shape)

    def embed(x):
        return np.concatenate([serve(images=tf.constant(x[i : i + 500]))["embeddings"] for i in range(0, len(x), 500)])

    expected = numpy_knn(embed(bank), bank_labels, embed(test), test_labels)
    assert abs(report["knn_accuracy"] - expected) <= 1.0 / test_size  # one query's vote may tie differently
    assert report["knn_accuracy"] > 0.75  # the card says 85% on the full splits; raw pixels give about 79%
    assert 0.0 < report["map@100"] <= report["recall@1"] <= report["recall@5"] <= report["recall@10"] <= 1.0

    labels = _check_written(tmp_path, RESNET_PICTURES, 8, 8, 300, shape)
    assert labels == [str(y) for y in test_labels[:300]]
    assert set(report["pictures"]) == RESNET_PICTURES


def _vit_file(tmp_path):
    keras.utils.set_random_seed(0)
    encoder = kc.encoders.ViT((28, 28, 1), patch_size=7, dim=16, depth=2, num_heads=2, name="tiny_vit")
    path = str(tmp_path / "vit.keras")
    encoder.save(path)
    return encoder, path


def test_a_vit_keras_file_gets_attention_maps_and_the_figures_of_its_features(tmp_path):
    encoder, path = _vit_file(tmp_path)
    out = tmp_path / "out"
    argv = [path, "--dataset", "fashion_mnist", "--output_dir", str(out), "--bank_size", "300", "--test_size", "60"]
    assert kc_inspect.main([*argv, "--mapped", "40", "--queries", "5", "--neighbours", "4", "--k", "20"]) == 0
    _check_written(out, VIT_PICTURES, 5, 4, 40, (28, 28, 1))
    (bank, bank_labels), (test, test_labels) = _fashion("train", 300, (28, 28, 1)), _fashion("test", 60, (28, 28, 1))
    features = lambda x: encoder.predict(x.astype("float32") / 255.0, verbose=0)  # noqa: E731
    report = json.loads((out / "inspect.json").read_text())
    assert report["knn_accuracy"] == pytest.approx(
        numpy_knn(features(bank), bank_labels, features(test), test_labels, k=20), abs=1 / 60
    )
    # The attention picture: one row per query, image | heat map | overlay.
    assert _png(out / "attention_maps.png").shape[:2] == (5 * 30, 3 * 30)


def test_an_export_without_its_keras_file_gets_the_pictures_its_signature_allows(tmp_path):
    keras.utils.set_random_seed(0)
    encoder = kc.encoders.ResNet18((28, 28, 1), stem="cifar", width_multiplier=0.125)
    version = kc.export.export_encoder(encoder, str(tmp_path / "export"))
    os.remove(os.path.join(version, kc.savedmodel.METADATA_DIR, kc.savedmodel.KERAS_FILE))
    out = tmp_path / "out"
    stream = io.StringIO()
    report = kc_inspect.inspect_encoder(
        str(tmp_path / "export"), str(out), "fashion_mnist", bank_size=200, test_size=30, k=10, mapped=30, out=stream
    )
    drawn = RESNET_PICTURES - {"first_layer_kernels", "feature_maps"}  # they need the Keras layers
    _check_written(out, drawn, 8, 8, 30, (28, 28, 1))
    assert set(report["pictures"]) == drawn and "signature 'serving_default'" in stream.getvalue()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_show_on_a_terminal_only(tmp_path, capsys):
    _, path = _vit_file(tmp_path)
    for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
        kc_inspect.inspect_encoder(
            path, str(tmp_path / "out"), "fashion_mnist", bank_size=100, test_size=20, k=5, mapped=20, out=stream
        )
        printed = capsys.readouterr().out
        assert ("image" in printed and "batch" in printed) == shown, printed


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    _, path = _vit_file(tmp_path)
    assert kc_inspect.main([path, "--output_dir", str(tmp_path / "out")]) == 2
    assert "--dataset" in capsys.readouterr().err  # a .keras file does not say what it was trained on
    assert kc_inspect.main([str(tmp_path / "missing.keras"), "--output_dir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    assert kc_inspect.main([str(tmp_path), "--dataset", "fashion_mnist", "--output_dir", str(tmp_path / "o")]) == 2
    assert "SavedModel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kc_inspect.main([path, "--output_dir", str(tmp_path), "--k", "0"])
