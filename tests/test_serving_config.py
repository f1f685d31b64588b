"""The TensorFlow Serving config files parse against TF Serving's own message types.

``models.config`` is parsed with ``ModelServerConfig`` from tensorflow-serving-api.
No PyPI package ships ``BatchingParameters`` or ``MonitoringConfig``, so their
descriptors are built here, field for field, from the upstream ``.proto`` files
named below; ``text_format`` then rejects any field name or type they lack.
"""
import pathlib

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

CONFIG_DIR = (pathlib.Path(__file__).resolve().parent.parent
              / "manifests" / "base" / "serving-config")

_T = descriptor_pb2.FieldDescriptorProto
# name, number, label, type, message type
# tensorflow/serving: tensorflow_serving/servables/tensorflow/session_bundle_config.proto,
# message BatchingParameters.
BATCHING_PARAMETERS_FIELDS = [
    ("max_batch_size", 1, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _T.LABEL_REPEATED, _T.TYPE_INT64, None),
    ("pad_variable_length_inputs", 7, _T.LABEL_OPTIONAL, _T.TYPE_BOOL, None),
]
# tensorflow/serving: tensorflow_serving/config/monitoring_config.proto.
PROMETHEUS_CONFIG_FIELDS = [
    ("enable", 1, _T.LABEL_OPTIONAL, _T.TYPE_BOOL, None),
    ("path", 2, _T.LABEL_OPTIONAL, _T.TYPE_STRING, None),
]
MONITORING_CONFIG_FIELDS = [
    ("prometheus_config", 1, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE,
     ".tensorflow.serving.PrometheusConfig"),
]


def _message_classes():
    """``{name: message class}`` for the mirrored TF Serving messages."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving_mirror.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    for name, fields in (("BatchingParameters", BATCHING_PARAMETERS_FIELDS),
                         ("PrometheusConfig", PROMETHEUS_CONFIG_FIELDS),
                         ("MonitoringConfig", MONITORING_CONFIG_FIELDS)):
        message = file.message_type.add(name=name)
        for field, number, label, kind, type_name in fields:
            message.field.add(name=field, number=number, label=label, type=kind,
                              **({"type_name": type_name} if type_name else {}))
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")}


MESSAGES = _message_classes()


def _parse(message_class, filename):
    return text_format.Parse((CONFIG_DIR / filename).read_text(), message_class())


def test_models_config_serves_the_pushed_directory():
    config = _parse(model_server_config_pb2.ModelServerConfig, "models.config")
    [model] = config.model_config_list.config
    assert model.name == "recommender"
    assert model.base_path == "/models/recommender"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 1


def test_batching_parameters_are_valid_and_sized_for_two_cores():
    p = _parse(MESSAGES["BatchingParameters"], "batching_parameters.txt")
    assert p.num_batch_threads.value == 2
    assert p.max_batch_size.value >= 16  # 16 concurrent clients fit in one batch
    assert p.batch_timeout_micros.value <= 1000  # well inside the 10 ms p99 budget
    assert p.max_enqueued_batches.value >= p.num_batch_threads.value
    # TF Serving's rules for allowed_batch_sizes: increasing, last == max_batch_size.
    sizes = list(p.allowed_batch_sizes)
    assert sizes == sorted(sizes) and (not sizes or sizes[-1] == p.max_batch_size.value)
    assert p.pad_variable_length_inputs  # recommend_excluding's [batch, M] input


def test_monitoring_config_enables_prometheus():
    m = _parse(MESSAGES["MonitoringConfig"], "monitoring.config")
    assert m.prometheus_config.enable
    assert m.prometheus_config.path.startswith("/")


@pytest.mark.parametrize("message,text", [
    ("BatchingParameters", "max_batch_sizes { value: 32 }"),  # misspelt field
    ("BatchingParameters", "max_batch_size: 32"),  # a wrapper, not a plain int
    ("BatchingParameters", "num_batch_threads { value: \"two\" }"),
    ("MonitoringConfig", "prometheus_config { enabled: true }"),
])
def test_the_mirrored_messages_reject_what_tf_serving_would(message, text):
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text, MESSAGES[message]())
