"""The SimCLR encoder shipped in `saved_models/`: TF Serving layout, model card, and its accuracy.

The accuracy check repeats the model card's quick check (weighted kNN, k=200, cosine, T=0.1, bank =
the first 10,000 training images, queries = the first 2,000 test images) through `serving_default`
in a process that cannot import Keras or keras_contrastive, with a kNN written here in numpy
(independent of `kc.evaluation`). It fails if the encoder scores below the card's figure minus one
point, or not clearly above raw pixels on the same subset.
"""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import NO_KERAS_PRELUDE
from conftest import numpy_knn

import keras_contrastive as kc

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO_ROOT, "saved_models", "simclr_fashion_mnist_pretrained")


def _card():
    with open(os.path.join(SHIPPED, "model_card.json")) as f:
        return json.load(f)


def _versions():
    return sorted(int(name) for name in os.listdir(SHIPPED) if name.isdigit())


def test_layout_is_tf_servings():
    # TF Serving watches a base directory of numbered versions, each a complete SavedModel.
    versions = _versions()
    assert versions == [_card()["version"]]
    version = os.path.join(SHIPPED, str(versions[0]))
    assert os.path.isfile(os.path.join(version, "saved_model.pb"))
    assert os.path.isfile(os.path.join(version, "variables", "variables.index"))
    # Nothing else in the base dir that TF Serving could mistake for a version.
    assert sorted(os.listdir(SHIPPED)) == sorted([str(versions[0]), "MODEL_CARD.md", "model_card.json"])
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(SHIPPED) for f in files)
    assert size < 20e6, f"{size / 1e6:.1f} MB: the shipped encoder should stay a few MB"


def test_card_matches_export_metadata():
    card = _card()
    metadata = kc.export.load_metadata(os.path.join(SHIPPED, str(card["version"])))
    assert metadata["method"] == card["method"] == "SimCLR"
    assert metadata["input"] == card["input"]
    _, height, width, channels = metadata["input"]["shape"]
    assert metadata["input"]["dtype"] == "uint8" and height == width >= 28 and channels == 3
    assert f"[batch, {height}, {width}, 3]" in open(os.path.join(SHIPPED, "MODEL_CARD.md")).read()
    assert card["full_test"]["knn_accuracy"] == metadata["evaluation"]["knn_accuracy"]
    assert card["full_test"]["linear_probe_accuracy"] == metadata["evaluation"]["linear_probe_accuracy"]
    assert card["command"] == f"python recipes/simclr.py {metadata['args']['flags']}"
    assert card["all_flags"] == {k: v for k, v in metadata["args"].items() if k != "flags"}
    text = open(os.path.join(SHIPPED, "MODEL_CARD.md")).read()
    assert card["command"] in text and f"{card['quick_check']['knn_accuracy']:.2%}" in text


_FRESH_PROCESS_KNN = (
    NO_KERAS_PRELUDE
    + inspect.getsource(numpy_knn)
    + textwrap.dedent(
        """
    data, version = sys.argv[1], sys.argv[2]
    arrays = np.load(data)
    signature = tf.saved_model.load(version).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, *arrays["x_bank"].shape[1:]], spec
    assert signature.structured_outputs["embeddings"].dtype == tf.float32

    def embed(images):
        return np.concatenate([
            signature(images=tf.constant(images[i : i + 500]))["embeddings"].numpy()
            for i in range(0, len(images), 500)
        ]).astype(np.float64)

    x_bank, y_bank, x_query, y_query = (arrays[n] for n in ("x_bank", "y_bank", "x_query", "y_query"))
    pixels = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255.0
    result = {
        "encoder": numpy_knn(embed(x_bank), y_bank, embed(x_query), y_query),
        "pixels": numpy_knn(pixels(x_bank), y_bank, pixels(x_query), y_query),
    }
    leaked = sorted(m for m in sys.modules if _blocked(m) or m.startswith("keras_contrastive"))
    assert not leaked, leaked
    print(json.dumps(result))
    """
    )
)


@pytest.mark.slow
def test_quick_check_in_a_process_without_keras(tmp_path):
    card = _card()
    quick = card["quick_check"]
    size = card["input"]["shape"][1]  # the card's input size, as a client reads it
    x_train, y_train = kc.data.load_arrays("fashion_mnist", "train", image_size=size, channels=3)
    x_test, y_test = kc.data.load_arrays("fashion_mnist", "test", image_size=size, channels=3)
    data = tmp_path / "subset.npz"
    np.savez(data, x_bank=x_train[:10_000], y_bank=y_train[:10_000], x_query=x_test[:2_000], y_query=y_test[:2_000])
    version = os.path.join(SHIPPED, str(card["version"]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_KNN, str(data), version],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The pixel figure is recomputed here, independent of the card: the subset and the kNN agree.
    assert result["pixels"] == pytest.approx(quick["raw_pixels_knn_accuracy"], abs=1e-3)
    assert result["encoder"] >= quick["knn_accuracy"] - 0.01
    assert result["encoder"] > result["pixels"] + 0.01


def _readme_blocks_using_the_shipped_encoder():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        text = f.read()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    return [block for block in blocks if "simclr_fashion_mnist_pretrained" in block]


def _run_in_repo(code):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600
    )


@pytest.mark.slow
def test_readme_examples_run_on_the_shipped_encoder():
    serving, finetuning = None, None
    for block in _readme_blocks_using_the_shipped_encoder():
        if "import keras\n" in block:
            finetuning = block
        else:
            serving = block
    assert serving is not None and finetuning is not None, "the README's serving and fine-tuning examples"
    # Serving: in a process that cannot import Keras or this package.
    proc = _run_in_repo(NO_KERAS_PRELUDE + serving + "\nassert embeddings.shape == (4, 128), embeddings.shape\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Fine-tuning: one epoch on 1,000 labelled images from the pretrained encoder is far above chance. Measured
    # after the epoch: 0.73-0.80 in four runs (2026-12-04). The epoch's running mean, which starts at chance,
    # was 0.54-0.61 there and 0.49 once in CI, too close to a bound.
    check = "\naccuracy = classifier.evaluate(x, y, verbose=0)[1]\nassert accuracy > 0.5, accuracy\n"
    proc = _run_in_repo(finetuning + check)
    assert proc.returncode == 0, proc.stderr[-3000:]
