"""Writes the model card of an exported encoder: MODEL_CARD.md and model_card.json beside its versions.

Command (after a recipe exported an encoder):

    python recipes/model_card.py saved_models/simclr_fashion_mnist_pretrained/1

Reads the export's metadata (recipe, flags, seed, versions, the recipe's kNN and
linear-probe accuracy on the full test split), then measures the quick check that
`tests/test_shipped_encoder.py` repeats in seconds: weighted kNN (k=200, cosine,
T=0.1) with the first 10,000 training images as the bank and the first 2,000 test
images as queries, through the SavedModel's `serving_default` (what TF Serving
runs), next to raw pixels on the same subset. The card goes into the model's base
directory, which TF Serving ignores (it loads only numbered versions).
"""

import argparse
import json
import os

import numpy as np
import tensorflow as tf

import keras_contrastive as kc

#: The quick check: bank and query sizes (first N of each split, fixed).
QUICK_BANK = 10_000
QUICK_QUERIES = 2_000


def quick_check(version_path, image_size, channels):
    """kNN accuracy of the served encoder and of raw pixels on the fixed subset."""
    x_train, y_train = kc.data.load_arrays("fashion_mnist", "train", image_size=image_size, channels=channels)
    x_test, y_test = kc.data.load_arrays("fashion_mnist", "test", image_size=image_size, channels=channels)
    x_train, y_train = x_train[:QUICK_BANK], y_train[:QUICK_BANK]
    x_test, y_test = x_test[:QUICK_QUERIES], y_test[:QUICK_QUERIES]
    served = tf.saved_model.load(version_path).signatures["serving_default"]

    def embed(images):
        return np.concatenate(
            [
                served(images=tf.constant(images[i : i + 1000]))["embeddings"].numpy()
                for i in range(0, len(images), 1000)
            ]
        )

    def pixels(images):
        return images.reshape(len(images), -1).astype("float32") / 255.0

    encoder = kc.evaluation.knn_accuracy(embed(x_train), y_train, embed(x_test), y_test, verbose=0)
    raw = kc.evaluation.knn_accuracy(pixels(x_train), y_train, pixels(x_test), y_test, verbose=0)
    return encoder, raw


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("version_path", help="a version directory written by a recipe, e.g. saved_models/x/1")
    args = parser.parse_args(argv)
    version_path = os.path.normpath(args.version_path)
    metadata = kc.export.load_metadata(version_path)
    flags = metadata.get("args") or {}
    if metadata.get("recipe") is None or flags.get("dataset") != "fashion_mnist":
        raise SystemExit(f"{version_path} was not exported by a recipe trained on fashion_mnist; no card written.")
    _, height, width, channels = metadata["input"]["shape"]
    if height != width:
        raise SystemExit(f"expected square images, the export takes {height}x{width}.")

    print("Quick check: weighted kNN, bank train[:10000], queries test[:2000]...")
    knn_quick, pixels_quick = quick_check(version_path, height, channels)
    evaluation = metadata.get("evaluation", {})
    command = f"python {metadata['recipe']} {flags.get('flags', '')}".strip()
    card = {
        "model": os.path.basename(os.path.dirname(os.path.abspath(version_path))),
        "version": int(os.path.basename(version_path)),
        "method": metadata.get("method"),
        "command": command,
        # Every flag's value, so the run can be repeated after the recipe's defaults change.
        "all_flags": {k: v for k, v in sorted(flags.items()) if k != "flags"},
        "seed": flags.get("seed"),
        "epochs": flags.get("epochs"),
        "tensorflow_version": metadata["tensorflow_version"],
        "keras_version": metadata["keras_version"],
        "created": metadata["created"],
        "input": metadata["input"],
        "output": metadata["output"],
        "full_test": {
            "knn_accuracy": evaluation.get("knn_accuracy"),
            "linear_probe_accuracy": evaluation.get("linear_probe_accuracy"),
            "protocol": "frozen pooled features; weighted kNN k=200 cosine T=0.1 over the 60k train split; "
            "scikit-learn logistic regression (L-BFGS, C=1); 10k test split",
        },
        "quick_check": {
            "knn_accuracy": round(knn_quick, 4),
            "raw_pixels_knn_accuracy": round(pixels_quick, 4),
            "bank": f"train[:{QUICK_BANK}]",
            "queries": f"test[:{QUICK_QUERIES}]",
            "k": 200,
            "temperature": 0.1,
        },
    }
    base = os.path.dirname(os.path.abspath(version_path))
    with open(os.path.join(base, "model_card.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    with open(os.path.join(base, "MODEL_CARD.md"), "w") as f:
        f.write(render(card))
    print(json.dumps(card["quick_check"], indent=2))
    print(f"Wrote {base}/MODEL_CARD.md and model_card.json")


def render(card):
    full, quick = card["full_test"], card["quick_check"]
    name, version = card["model"], card["version"]
    size = card["input"]["shape"][1:]
    padding = (
        "Fashion-MNIST's own 28x28, "
        if size[:2] == [28, 28]
        else f"Fashion-MNIST's 28x28 zero-padded to {size[0]}x{size[1]}, "
    )
    return f"""# {name}

A {card["method"]} encoder (projection head removed) trained on the real Fashion-MNIST training split
without its labels, in the TF Serving layout: `{name}/{version}/` is a SavedModel version.

- **Trained by**: `{card["command"]}` (seed {card["seed"]}, {card["epochs"]} epochs), TensorFlow
  {card["tensorflow_version"]}, Keras {card["keras_version"]}, on {card["created"][:10]}; every flag's value is in
  `model_card.json` ("all_flags").
- **Input**: `images`, uint8 `[batch, {size[0]}, {size[1]}, {size[2]}]` ({padding}the gray channel repeated
  {size[2]} times); the graph divides by 255 itself.
- **Output**: `embeddings`, float32 `[batch, {card["output"]["dim"]}]`, the pooled features (`embed_normalized`
  gives them L2-normalized).

## Accuracy (frozen encoder)

| | kNN (k=200, T=0.1) | linear probe |
|---|---|---|
| full protocol: 60k bank / probe training set, 10k test images | {full["knn_accuracy"]:.2%} | \
{full["linear_probe_accuracy"]:.2%} |
| quick check: bank {quick["bank"]}, queries {quick["queries"]} | {quick["knn_accuracy"]:.2%} | - |
| raw pixels, same quick check | {quick["raw_pixels_knn_accuracy"]:.2%} | - |

`tests/test_shipped_encoder.py` repeats the quick check through `serving_default` in a process that
cannot import Keras or this package, and fails below the card's figure minus one point.

## Serve it

```
docker run -p 8501:8501 -v "$PWD/saved_models/{name}:/models/{name}" -e MODEL_NAME={name} tensorflow/serving
curl -d '{{"instances": [...{size[0]}x{size[1]}x{size[2]} uint8 image...]}}' localhost:8501/v1/models/{name}:predict
```

Or in any TensorFlow process (no Keras, no keras_contrastive needed):

```python
import tensorflow as tf

embed = tf.saved_model.load("saved_models/{name}/{version}").signatures["serving_default"]
embeddings = embed(images=tf.zeros([8, {size[0]}, {size[1]}, {size[2]}], tf.uint8))["embeddings"]  # [8, {card["output"]["dim"]}]
```

## Fine-tune it

```
python recipes/finetune.py --encoder_path saved_models/{name} --label_fractions 0.1
python recipes/linear_eval.py --encoder_path saved_models/{name}
```
"""


if __name__ == "__main__":
    main()
