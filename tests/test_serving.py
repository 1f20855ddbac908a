"""Tests for keras_contrastive.serving (TF Serving's protocol, without a server).

The reference for every number is the in-process encoder on `uint8 / 255`;
requests and warmup records are checked against the loaded SavedModel's own
signatures, not against the module's validation code. Requests are answered by
`serving_double`, the tests' in-process stand-in for the model server.
"""

import base64
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from serving_double import predict
from serving_double import rest_predict

# A plain dependency of the package: missing, the module fails to import (no skip).
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from keras_contrastive import export
from keras_contrastive import serving

H, W, C, DIM = 16, 16, 3, 8
MODEL_NAME = "tiny_model"


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, H, W, C), dtype=np.uint8)


def _reference(encoder, images):
    x = images.astype("float32") / 255.0
    return keras.ops.convert_to_numpy(encoder(x, training=False))


def _embeddings(response):
    return tf.make_ndarray(response.outputs["embeddings"])


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    inp = keras.Input((H, W, C))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(DIM)(x)
    model = keras.Model(inp, out, name="tiny_encoder")
    # Moving statistics far from any batch's, so that serving BN in training
    # mode would give different numbers.
    bn = model.layers[2]
    bn.moving_mean.assign(np.linspace(-0.3, 0.4, 4).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.05, 3.0, 4).astype("float32"))
    bn.gamma.assign(np.array([1.5, 0.5, 2.0, 1.0], "float32"))
    return model


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / MODEL_NAME
    return export.export_encoder(encoder, base)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def _read_records(version_path):
    # Independent of serving.read_warmup_requests: raw TFRecords, parsed here.
    path = os.path.join(version_path, "assets.extra", "tf_serving_warmup_requests")
    assert os.path.isfile(path)
    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        assert log.WhichOneof("log_type") == "predict_log"
        logs.append(log)
    return logs


def test_warmup_file_is_written_and_parses(exported):
    logs = _read_records(exported)
    requests = [log.predict_log.request for log in logs]
    assert 1 <= len(requests) <= 1000
    assert {r.model_spec.name for r in requests} == {MODEL_NAME}
    by_signature = {}
    for r in requests:
        assert r.model_spec.signature_name  # set explicitly, never implied
        name = r.model_spec.signature_name
        (input_name,) = r.inputs
        batch = tf.make_ndarray(r.inputs[input_name]).shape[0]
        by_signature.setdefault(name, []).append(batch)
    assert sorted(by_signature["serving_default"]) == [1, 2]
    assert by_signature["serving_bytes"] == [1]
    assert export.load_metadata(exported)["warmup_file"] == ("assets.extra/tf_serving_warmup_requests")
    assert serving.read_warmup_requests(exported) == logs


def test_warmup_requests_match_signatures_and_run(encoder, exported, loaded):
    for log in _read_records(exported):
        request = log.predict_log.request
        name = request.model_spec.signature_name
        signature = loaded.signatures[name]
        _, specs = signature.structured_input_signature
        assert sorted(request.inputs) == sorted(specs)
        for input_name, spec in specs.items():
            proto = request.inputs[input_name]
            assert proto.dtype == spec.dtype.as_datatype_enum
            shape = [d.size for d in proto.tensor_shape.dim]
            assert len(shape) == spec.shape.rank
            assert spec.shape.is_compatible_with(shape)
            if spec.dtype == tf.uint8:
                assert shape[1:] == [H, W, C]

        response = predict(loaded, request)
        assert response.model_spec.signature_name == name
        assert response.model_spec.name == MODEL_NAME
        got = _embeddings(response)
        if name == "serving_bytes":
            encoded = tf.make_ndarray(request.inputs["image_bytes"])
            images = np.stack([tf.io.decode_png(b, channels=C).numpy() for b in encoded])
        else:
            images = tf.make_ndarray(request.inputs["images"])
        want = _reference(encoder, images)
        if name == "embed_normalized":
            want = want / np.linalg.norm(want, axis=1, keepdims=True)
        assert got.shape == (len(images), DIM) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_request_round_trips_through_bytes(encoder, exported, loaded):
    images = _images(3, seed=7)
    request = serving.predict_request(images, model_name=MODEL_NAME)
    tensor = request.inputs["images"]
    assert list(request.inputs) == ["images"]
    assert tensor.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in tensor.tensor_shape.dim] == [3, H, W, C]

    wire = request.SerializeToString()
    parsed = predict_pb2.PredictRequest()
    parsed.ParseFromString(wire)
    assert parsed == request

    direct = loaded.signatures["serving_default"](images=tf.constant(images))
    direct = direct["embeddings"].numpy()
    expected = _reference(encoder, images)
    np.testing.assert_allclose(direct, expected, atol=1e-5)

    from_bytes = predict(loaded, wire)
    # A path (the base directory: its latest version) is loaded per call.
    from_path = predict(os.path.dirname(exported), parsed)
    assert from_path.model_spec.version.value == 1
    for response in (from_bytes, from_path):
        response = predict_pb2.PredictResponse.FromString(response.SerializeToString())
        assert response.model_spec.name == MODEL_NAME
        assert list(response.outputs) == ["embeddings"]
        np.testing.assert_allclose(_embeddings(response), direct, atol=1e-6)
        np.testing.assert_allclose(_embeddings(response), expected, atol=1e-5)


def _with_extra(request):
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto(np.zeros([2], "float32")))


def _without_images(request):
    del request.inputs["images"]


def _as_float(request):
    pixels = tf.make_ndarray(request.inputs["images"]).astype("float32") / 255.0
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(pixels))


def _small_images(request):
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(_images(2, 0)[:, :8, :8]))


def _no_batch(request):
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(_images(1, 0)[0]))


def _unknown_signature(request):
    request.model_spec.signature_name = "embed"


def _unknown_output(request):
    request.output_filter.append("logits")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            _with_extra,
            r"input size does not match signature: 2!=1 len\(\{extra,images\}\) "
            r"!= len\(\{images\}\)\. Sent extra: \{extra\}\. Missing but "
            r"required: \{\}\..*images: uint8 \[None, 16, 16, 3\]",
        ),
        (
            _without_images,
            r"input size does not match signature: 0!=1 .*Sent extra: \{\}\. "
            r"Missing but required: \{images\}",
        ),
        (
            _as_float,
            r"Expects arg\[0\] to be uint8 but float is provided: input "
            r"'images' of signature 'serving_default' expects uint8 "
            r"\[None, 16, 16, 3\], got float32 \[2, 16, 16, 3\]",
        ),
        (
            _small_images,
            r"input 'images' of signature 'serving_default' has shape "
            r"\[2, 8, 8, 3\], expected \[None, 16, 16, 3\]",
        ),
        (_no_batch, r"has shape \[16, 16, 3\].*needs a batch dimension"),
        (_unknown_signature, r'Serving signature key "embed" not found'),
        (_unknown_output, r"output tensor alias not found in signature: logits"),
    ],
)
def test_predict_rejects_bad_requests(loaded, corrupt, message):
    request = serving.predict_request(_images(2, seed=3))
    predict(loaded, request)  # valid before corruption
    corrupt(request)
    with pytest.raises(ValueError, match=message):
        predict(loaded, request)


def test_predict_request_selects_version(exported):
    base = os.path.dirname(exported)
    request = serving.predict_request(_images(1, seed=4))
    request.model_spec.version.value = 1
    assert predict(base, request).model_spec.version.value == 1
    request.model_spec.version.value = 5
    with pytest.raises(ValueError, match=r"Servable not found for request"):
        predict(base, request)
    request.model_spec.version.value = 2
    with pytest.raises(ValueError, match="asks for version 2 but .* is version 1"):
        predict(exported, request)


def _rest_numbers(result, key):
    return np.asarray(result[key], dtype=np.float32)


def test_rest_instances_and_inputs_agree(encoder, loaded):
    images = _images(3, seed=11)
    expected = _reference(encoder, images)
    pixels = images.tolist()
    bodies = {
        "predictions": [
            {"instances": pixels},
            json.dumps({"signature_name": "serving_default", "instances": pixels}),
            {"instances": [{"images": image} for image in pixels]},
        ],
        "outputs": [
            {"inputs": {"images": pixels}},
            json.dumps({"inputs": pixels}),
        ],
    }
    for key, forms in bodies.items():
        for body in forms:
            result = rest_predict(loaded, body)
            assert list(result) == [key]
            got = _rest_numbers(result, key)
            assert got.shape == (3, DIM)
            np.testing.assert_allclose(got, expected, atol=1e-5)
    # JSON out and back in: what a client actually receives.
    wire = json.loads(json.dumps(rest_predict(loaded, {"instances": pixels})))
    np.testing.assert_allclose(_rest_numbers(wire, "predictions"), expected, atol=1e-5)

    normalized = rest_predict(loaded, {"signature_name": "embed_normalized", "instances": pixels})
    np.testing.assert_allclose(
        _rest_numbers(normalized, "predictions"),
        expected / np.linalg.norm(expected, axis=1, keepdims=True),
        atol=1e-5,
    )


def test_rest_base64_png_matches_uint8(encoder, exported):
    images = _images(2, seed=12)
    pngs = [tf.io.encode_png(image).numpy() for image in images]
    assert all(png.startswith(b"\x89PNG") for png in pngs)
    b64 = [{"b64": base64.b64encode(png).decode("ascii")} for png in pngs]
    uint8 = rest_predict(exported, {"instances": images.tolist()})
    rows = rest_predict(exported, {"signature_name": "serving_bytes", "instances": b64})
    columns = rest_predict(
        exported,
        {"signature_name": "serving_bytes", "inputs": {"image_bytes": b64}},
    )
    want = _rest_numbers(uint8, "predictions")
    np.testing.assert_allclose(_rest_numbers(rows, "predictions"), want, atol=1e-5)
    np.testing.assert_allclose(_rest_numbers(columns, "outputs"), want, atol=1e-5)
    np.testing.assert_allclose(want, _reference(encoder, images), atol=1e-5)
    # The gRPC form of the same bytes.
    request = serving.predict_request(pngs, signature_name="serving_bytes")
    np.testing.assert_allclose(_embeddings(predict(exported, request)), want, atol=1e-5)


_IMAGE = _images(1, seed=0)[0].tolist()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"instances": [_IMAGE], "inputs": [_IMAGE]}, "only one of 'inputs' or 'instances'"),
        ({"signature_name": "serving_default"}, "Missing 'inputs' or 'instances' key"),
        ({"instances": [_IMAGE, _IMAGE[:8]]}, r"element 1.*expecting shape \[16, 16, 3\].*\[8, 16, 3\]"),
        (
            {"instances": [_IMAGE[:-1] + [_IMAGE[-1][:5]]]},
            r"ragged nested list: got a list of 5 at index \[15\], expected a list of 16",
        ),
        ({"signature_name": "embed", "instances": [_IMAGE]}, r'Serving signature key "embed" not found'),
        ({"instances": []}, "No values in 'instances'"),
        ([_IMAGE], "must be a JSON object"),
        ('{"instances": [', "JSON Parse error"),
        ({"instances": [[[[0.5] * C] * W] * H]}, r"JSON value 0.5 of type float is not of expected type: uint8"),
        ({"instances": [[[[256] * C] * W] * H]}, r"256 is out of range for uint8"),
        ({"inputs": {"image": [_IMAGE]}}, r"Missing named input: images in 'inputs' object"),
        (
            {"instances": [{"images": _IMAGE, "extra": 1}]},
            r"keys \['extra', 'images'\] must be equal to .*\['images'\]",
        ),
        ({"signature_name": "serving_bytes", "instances": [{"b64": "!!notbase64"}]}, "Unable to base64 decode"),
        ({"signature_name": "serving_bytes", "instances": [{"b64": "aGk="}]}, "failed on the request's inputs"),
    ],
)
def test_rest_rejects_malformed_bodies(loaded, body, message):
    with pytest.raises(ValueError, match=message):
        rest_predict(loaded, body)


def test_export_without_tensorflow_serving_fails_naming_the_pip_command(encoder, tmp_path, monkeypatch):
    # A dependency now: every export carries the warmup file, and an
    # environment that lost the protos gets an error, not an export without it.
    names = [n for n in sys.modules if n.split(".")[0] == "tensorflow_serving"]
    for name in set(names) | {"tensorflow_serving"}:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        from tensorflow_serving.apis import predict_pb2 as _  # noqa: F401

    with pytest.raises(ImportError, match=r"pip install tensorflow-serving-api"):
        export.export_encoder(encoder, tmp_path / MODEL_NAME)
    assert not (tmp_path / MODEL_NAME).exists()  # checked before anything is written
    # Serving helpers themselves fail loudly, naming the install command.
    with pytest.raises(ImportError, match="pip install tensorflow-serving-api"):
        serving.predict_request(_images(2, seed=13))


def test_the_served_graph_checks_the_image_shape_itself(exported):
    """The model server feeds tensors to the graph from C++, past the Python-side shape checks
    of `signatures[...]()` and `Session.run`; the graph must hold the check (an image without
    the batch axis crashed the process in the convolution, one of another size gave wrong
    embeddings silently). Walks every function of the SavedModel for the EnsureShape op."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(exported, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    shapes = []
    for function in proto.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "EnsureShape":
                shapes.append([d.size for d in node.attr["shape"].shape.dim])
    assert [-1, H, W, C] in shapes


_FEED_PAST_THE_CHECKS = """
import sys
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

path, data = sys.argv[1], np.load(sys.argv[2])
proto = saved_model_pb2.SavedModel()
with open(path + "/saved_model.pb", "rb") as f:
    proto.ParseFromString(f.read())
signature = proto.meta_graphs[0].signature_def["serving_default"]
with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    free = tf.compat.v1.placeholder(tf.uint8, shape=None)
    tf.compat.v1.saved_model.loader.load(session, ["serve"], path, input_map={signature.inputs["images"].name: free})
    output = signature.outputs["embeddings"].name
    np.save(sys.argv[3], session.run(output, {free: data["good"]}))
    for name in ("no_batch_axis", "narrow", "one_channel"):
        try:
            session.run(output, {free: data[name]})
            print(name, "accepted", flush=True)
        except tf.errors.InvalidArgumentError:
            print(name, "rejected", flush=True)
"""


def test_the_served_graph_rejects_a_bad_shape_fed_past_the_python_checks(exported, encoder, tmp_path):
    """Feeds the graph as the model server does: the signature's input placeholder is replaced by one of unknown
    shape (`input_map`), so neither `signatures[...]()` nor `Session.run` can check the shape; only the graph's
    own check stands between a bad image and the convolution. In a subprocess: without the check, an image
    without its batch axis crashes the process."""
    good = _images(3, seed=7)
    data = tmp_path / "feeds.npz"
    np.savez(data, good=good, no_batch_axis=good[0], narrow=good[:, :, : W - 2], one_channel=good[..., :1])
    out = tmp_path / "good.npy"
    proc = subprocess.run(
        [sys.executable, "-c", _FEED_PAST_THE_CHECKS, exported, str(data), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), _reference(encoder, good), atol=1e-5)
    assert proc.stdout.split() == ["no_batch_axis", "rejected", "narrow", "rejected", "one_channel", "rejected"]
