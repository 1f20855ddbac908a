"""Linear and kNN evaluation of a frozen encoder: an export, or a `.keras` file.

Command (after `python recipes/simclr.py` has exported an encoder):

    python recipes/linear_eval.py --encoder_path saved_models/simclr_fashion_mnist

The standard protocol of SimCLR, MoCo v3 and SupCon papers on a frozen encoder:
features of the training split (pooled, before any projection head) train a
linear classifier, scored on the test split; a weighted kNN classifier (k=200,
cosine, temperature 0.1) on the same features is the second figure. An export
is evaluated through its SavedModel (`serving_default`, what TF Serving would
run), a `.keras` file (an encoder or a whole trainer) through Keras. The
image size and channels come from the export's metadata unless given. Prints
both accuracies next to the ones recorded at export time, and writes
`results.json` under --model_dir.

Expected on 2 CPU cores with the defaults: about a minute (feature extraction
for 70k images, then the probe).
"""

import argparse
import json
import os

import common

import keras_contrastive as kc


def main(argv=None):
    parser = common.add_common_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]), "linear_eval")
    parser.add_argument(
        "--encoder_path", default="saved_models/simclr_fashion_mnist", help="export dir/version or .keras"
    )
    parser.set_defaults(image_size=None, channels=None)
    args = common.parse_args(parser, argv)
    if args.shard_input:
        parser.error("--shard_input splits pre-training input; this recipe reads its (small) data on every worker")
    common.start(args)

    # 1. The frozen encoder on uint8 images: the served graph of an export, or a .keras file.
    recorded = {}
    if args.encoder_path.endswith(".keras"):
        encoder = kc.downstream.load_encoder(args.encoder_path, trainable=False)
    else:
        version = kc.downstream.resolve_version(args.encoder_path)
        metadata = kc.export.load_metadata(version)
        recorded = metadata.get("evaluation") or {}
        encoder = kc.downstream.load_encoder(version, trainable=False, prefer_keras_file=False)
        print(f"Evaluating the export {version} ({metadata.get('method', 'unknown method')}).")
    height, _, channels = encoder.input_shape[1:]
    args.image_size = args.image_size or height
    args.channels = args.channels if args.channels is not None else channels

    # 2. Data at the encoder's input size, streamed; 3. kNN and linear probe on the frozen features.
    results = common.evaluate_frozen(args, encoder)
    for name, value in results.items():
        if name in recorded:
            print(f"{name}: {value:.4f} (recorded at export: {recorded[name]:.4f})")

    os.makedirs(args.model_dir, exist_ok=True)
    with open(os.path.join(args.model_dir, "results.json"), "w") as f:
        json.dump({"encoder_path": args.encoder_path, **results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
