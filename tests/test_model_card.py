"""recipes/model_card.py: the card's figures come from the export's metadata and from a kNN
that is recomputed here in numpy from the encoder's own features."""

import json
import os
import sys

import keras
import numpy as np
import pytest
from conftest import numpy_knn

import keras_contrastive as kc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    # A seeded random encoder: unseeded, one init in a few had near-tied neighbours that float32 and float64
    # ordered differently by more than the assert's slack (seen once in a full run).
    keras.utils.set_random_seed(0)
    encoder = kc.encoders.ResNet18((32, 32, 3), width_multiplier=0.125)
    flags = {"dataset": "fashion_mnist", "epochs": 1, "seed": 3, "flags": "--epochs 1 --seed 3"}
    metadata = {
        "method": "SimCLR",
        "recipe": "recipes/simclr.py",
        "args": flags,
        "evaluation": {"knn_accuracy": 0.5123, "linear_probe_accuracy": 0.6234},
    }
    base = tmp_path_factory.mktemp("card") / "tiny_encoder"
    return encoder, kc.export.export_encoder(encoder, str(base), metadata=metadata), metadata


@pytest.mark.slow
def test_card_figures_match_metadata_and_an_independent_knn(exported):
    import model_card

    encoder, version_path, metadata = exported
    model_card.main([version_path])
    base = os.path.dirname(version_path)
    card = json.load(open(os.path.join(base, "model_card.json")))

    assert card["model"] == "tiny_encoder" and card["version"] == 1 and card["method"] == "SimCLR"
    assert card["command"] == "python recipes/simclr.py --epochs 1 --seed 3"
    assert card["all_flags"] == {"dataset": "fashion_mnist", "epochs": 1, "seed": 3}
    assert card["seed"] == 3 and card["epochs"] == 1
    assert card["full_test"]["knn_accuracy"] == 0.5123 and card["full_test"]["linear_probe_accuracy"] == 0.6234
    written = kc.export.load_metadata(version_path)
    assert card["input"] == written["input"]
    assert card["input"]["dtype"] == "uint8" and card["input"]["shape"] == [None, 32, 32, 3]
    assert card["output"] == written["output"] and card["created"] == written["created"]

    x_train, y_train = kc.data.load_arrays("fashion_mnist", "train", image_size=32, channels=3)
    x_test, y_test = kc.data.load_arrays("fashion_mnist", "test", image_size=32, channels=3)
    x_bank, y_bank, x_query, y_query = x_train[:10_000], y_train[:10_000], x_test[:2_000], y_test[:2_000]

    def features(x):
        return np.asarray(encoder.predict(x.astype("float32") / 255.0, batch_size=1000, verbose=0), np.float64)

    def pixels(x):
        return x.reshape(len(x), -1).astype(np.float64) / 255.0

    want_encoder = numpy_knn(features(x_bank), y_bank, features(x_query), y_query)
    want_pixels = numpy_knn(pixels(x_bank), y_bank, pixels(x_query), y_query)
    quick = card["quick_check"]
    # Two queries' worth of slack: float32 serving vs float64 here may reorder a near tie.
    assert abs(quick["knn_accuracy"] - want_encoder) <= 1e-3, (quick, want_encoder)
    assert abs(quick["raw_pixels_knn_accuracy"] - want_pixels) <= 1e-3, (quick, want_pixels)
    assert quick["bank"] == "train[:10000]" and quick["queries"] == "test[:2000]"

    text = open(os.path.join(base, "MODEL_CARD.md")).read()
    assert text.startswith("# tiny_encoder\n")
    assert card["command"] in text and "51.23%" in text and "62.34%" in text
    assert f"{quick['knn_accuracy']:.2%}" in text and f"{quick['raw_pixels_knn_accuracy']:.2%}" in text
    assert "saved_models/tiny_encoder/1" in text  # the serving snippet names this model's version


def test_refuses_an_export_not_trained_on_fashion_mnist(tmp_path):
    import model_card

    encoder = kc.encoders.ResNet18((32, 32, 3), width_multiplier=0.125)
    metadata = {"method": "SimCLR", "recipe": "recipes/simclr.py", "args": {"dataset": "cifar10"}}
    version_path = kc.export.export_encoder(encoder, str(tmp_path / "other"), metadata=metadata)
    with pytest.raises(SystemExit, match="not exported by a recipe trained on fashion_mnist"):
        model_card.main([version_path])
    assert not os.path.exists(tmp_path / "other" / "model_card.json")
