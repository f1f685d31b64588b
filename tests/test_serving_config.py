"""The TensorFlow Serving config files parse against TF Serving's own message types.

``models.config`` is parsed with ``ModelServerConfig`` from tensorflow-serving-api.
No PyPI package ships ``BatchingParameters`` or ``MonitoringConfig``, so their
descriptors are built field for field from the upstream ``.proto`` files
(``BatchingParameters`` in ``serving/batching_config.py``, with which the local
server reads the same file); ``text_format`` then rejects any field name or type
they lack.
"""
import pathlib

import pytest
from google.protobuf import descriptor_pb2, text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.batching_config import (BatchingParameters, mirrored_message_classes,
                                     parse_batching_parameters)

CONFIG_DIR = (pathlib.Path(__file__).resolve().parent.parent
              / "manifests" / "base" / "serving-config")

_T = descriptor_pb2.FieldDescriptorProto
# tensorflow/serving: tensorflow_serving/config/monitoring_config.proto.
PROMETHEUS_CONFIG_FIELDS = [
    ("enable", 1, _T.LABEL_OPTIONAL, _T.TYPE_BOOL, None),
    ("path", 2, _T.LABEL_OPTIONAL, _T.TYPE_STRING, None),
]
MONITORING_CONFIG_FIELDS = [
    ("prometheus_config", 1, _T.LABEL_OPTIONAL, _T.TYPE_MESSAGE,
     ".tensorflow.serving.PrometheusConfig"),
]
MESSAGES = {"BatchingParameters": BatchingParameters, **mirrored_message_classes(
    [("PrometheusConfig", PROMETHEUS_CONFIG_FIELDS),
     ("MonitoringConfig", MONITORING_CONFIG_FIELDS)])}


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
    parse_batching_parameters(text_format.MessageToString(p))  # the local server takes it


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
