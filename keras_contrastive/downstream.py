"""Reuse trained encoders downstream: reload an export or a `.keras` file as a Keras model.

Downstream models here take raw uint8 images `[batch, H, W, C]`, the serving
contract's input, whichever form the encoder was saved in.
"""

import os

import keras

from keras_contrastive import layers
from keras_contrastive import savedmodel

# Re-exported: `kc.downstream.resolve_version` is how the recipes find an
# export's version directory.
from keras_contrastive.savedmodel import resolve_version


@keras.saving.register_keras_serializable(package="keras_contrastive")
class ToUint8(keras.layers.Layer):
    """Casts images to uint8 (a SavedModel's serving signature takes uint8).

    Input: uint8 or float `[batch, H, W, C]` holding 0-255 values.
    """

    def call(self, images):
        if keras.backend.standardize_dtype(images.dtype) == "uint8":
            return images
        return keras.ops.cast(keras.ops.clip(keras.ops.round(images), 0, 255), "uint8")


@keras.saving.register_keras_serializable(package="keras_contrastive")
class SavedModelEncoder(keras.layers.Layer):
    """An exported encoder (SavedModel) as a Keras layer: uint8 images to embeddings.

    Wraps `keras.layers.TFSMLayer` on the export's `serving_default`
    signature and returns its `embeddings` output. The exported graph runs
    BatchNorm in inference mode, so fine-tuning through it updates the
    weights with frozen BN statistics.

    Args:
        filepath: str. A version directory (`.../3`) or a model directory
            (its highest version is used).
        trainable: bool. Whether the encoder's variables are trained.
            Defaults to False.
    """

    def __init__(self, filepath, trainable=False, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.filepath = str(filepath)
        self.version_path = resolve_version(self.filepath)
        self.savedmodel = keras.layers.TFSMLayer(
            self.version_path, call_endpoint=savedmodel.SERVING_SIGNATURE, trainable=trainable
        )
        metadata = savedmodel.load_metadata(self.version_path)
        self.input_shape_ = tuple(metadata["input"]["shape"][1:])
        self.output_dim = int(metadata["output"]["dim"])

    def call(self, images):
        return self.savedmodel(images)[savedmodel.OUTPUT_NAME]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(filepath=self.filepath)
        return config


def load_encoder(path, trainable=True, prefer_keras_file=True):
    """Loads a trained encoder as a Keras model on uint8 images.

    Args:
        path: str. A `.keras` file (an encoder, or a trainer whose `.encoder`
            is used), or an export (`kc.export.export_encoder`'s version
            directory or its model directory).
        trainable: bool. Defaults to True (fine-tuning); False for a linear
            probe on frozen features.
        prefer_keras_file: bool. For an export, load the `.keras` file that
            `export_encoder` saves beside the SavedModel when there is one;
            False always goes through the SavedModel (`TFSMLayer`). Defaults
            to True.

    Returns:
        keras.Model: uint8 `[batch, H, W, C]` to `[batch, dim]`. From a
        `.keras` file the encoder itself runs inside (BN follows `training`);
        from a SavedModel, a `SavedModelEncoder` layer (BN in inference mode).
        A `.keras` file keeps the dtype policies it was saved with (a checkpoint
        of a `mixed_bfloat16` run computes in bfloat16), except in a process
        whose global policy is `float32`: there the encoder computes in float32
        (`kc.layers.set_compute_dtype`), as the export of the same weights
        does, so that evaluation is not rounded to bfloat16.
    """
    path = str(path)
    if not path.endswith(".keras"):
        version = resolve_version(path)
        beside = os.path.join(version, savedmodel.METADATA_DIR, savedmodel.KERAS_FILE)
        if prefer_keras_file and os.path.exists(beside):
            path = beside
        elif trainable:
            # Keras 3.15 optimizers name their slot variables after the model
            # variable, and TFSMLayer's TensorFlow variables are named like
            # "stem_conv_kernel:0", which Keras rejects as a scope name; plain
            # SGD (no slots) would work, momentum and Adam fail obscurely.
            raise ValueError(
                f"{version} has no {savedmodel.METADATA_DIR}/{savedmodel.KERAS_FILE} beside its SavedModel, "
                "and Keras cannot fine-tune a TFSMLayer with a stateful optimizer. Use "
                "trainable=False (frozen features), or re-export with kc.export.export_encoder, "
                "which saves the .keras file beside the SavedModel."
            )
    if path.endswith(".keras"):
        loaded = keras.saving.load_model(path, compile=False)
        encoder = getattr(loaded, "encoder", loaded)
        if keras.config.dtype_policy().name == "float32":
            layers.set_compute_dtype(encoder, "float32")
        encoder.trainable = trainable
        inputs = keras.Input(encoder.input_shape[1:], dtype="uint8", name="images")
        features = encoder(keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")(inputs))
        return keras.Model(inputs, features, name=f"{encoder.name}_from_keras")
    layer = SavedModelEncoder(path, trainable=trainable, name="exported_encoder")
    inputs = keras.Input(layer.input_shape_, dtype="uint8", name="images")
    return keras.Model(inputs, layer(ToUint8(name="to_uint8")(inputs)), name="encoder_from_savedmodel")
