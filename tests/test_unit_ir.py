"""Finding the pooled features in an IR's graph, on tiny graphs built here."""

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from effnet_ray.errors import UserError
from effnet_ray.models.ir import pooled_features

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray


def classifier(compressed=False):
    features = ops.parameter([1, 8], np.float32, name="x")
    pooled = ops.relu(features)
    weights = ops.constant(np.ones((4, 8), np.float16 if compressed else np.float32))
    if compressed:  # OMZ's FP16 IRs decompress their weights first
        weights = ops.convert(weights, "f32")
    logits = ops.add(ops.matmul(pooled, weights, False, True),
                     ops.constant(np.zeros((1, 4), np.float32)))
    return ov.Model([ops.result(logits)], [features]), pooled


@pytest.mark.parametrize("compressed", [False, True])
def test_the_classifier_input_is_found_from_the_logits(compressed):
    model, pooled = classifier(compressed)
    found = pooled_features(model, "tiny")
    assert found.get_node().get_friendly_name() == pooled.get_friendly_name()


def test_a_graph_without_a_classifier_is_refused():
    x = ops.parameter([1, 8], np.float32)
    model = ov.Model([ops.result(ops.relu(x))], [x])
    with pytest.raises(UserError, match="cannot find the classifier's matrix multiply"):
        pooled_features(model, "tiny")
