"""Options: defaults in one place, precedence, identity, validation; no Ray, no I/O."""

import subprocess
import sys

import pytest
from PIL import Image

from effnet_ray.errors import UserError
from effnet_ray.options import MAX_PIXELS, LabelOptions, default, option_names

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray


def test_defaults_live_on_the_fields():
    options = LabelOptions.build(["in"], "out")
    assert options.read.batch_size == default("batch_size") == 32
    assert options.inference.top_k == default("top_k") == 5
    assert options.read.max_pixels == MAX_PIXELS
    assert options.placement.actor_gpus == 0.0
    assert options.inference.cache_dir is None


def test_explicit_beats_the_pool_profile_beats_the_default():
    pooled = LabelOptions.build(["in"], "out", pool="cpu")
    assert pooled.placement.actor_cpus == 4 and pooled.inference.threads == 4
    assert pooled.placement.actors == "auto"
    mine = LabelOptions.build(["in"], "out", pool="cpu", actor_cpus=2, actors="3")
    assert mine.placement.actor_cpus == 2 and mine.placement.actors == 3


def test_a_gpu_device_reserves_a_gpu_unless_told_otherwise():
    assert LabelOptions.build(["in"], "out", device="GPU").placement.actor_gpus == 1.0
    assert LabelOptions.build(["in"], "out", device="GPU", actor_gpus=0).placement.actor_gpus == 0


def test_identity_names_what_decides_the_rows():
    identity = LabelOptions.build(["a", "b"], "out", top_k=3).identity()
    assert identity == {"inputs": ["a", "b"], "layout": "auto", "image_column": "image",
                        "id_column": "id", "unit_size": 64, "batch_size": 32, "decode": "exact",
                        "model": "efficientnet-b7-pytorch", "precision": "auto", "top_k": 3,
                        "embeddings": False, "no_logits": False}


def test_every_flat_name_belongs_to_one_group():
    names = option_names()
    assert len(names) == len(set(names))
    assert names["max_bytes"] == "read" and names["address"] == "placement"


@pytest.mark.parametrize("given, message", [
    ({"output": ""}, "--output is empty"),
    ({"output": "   "}, "--output is empty"),
    ({"layout": "zip"}, "unknown layout"),
    ({"batch_size": 0}, "--batch-size must be positive"),
    ({"max_bytes": -1}, "--max-bytes must be positive"),
    ({"max_shard_bytes": 0}, "--max-shard-bytes must be positive"),
    ({"top_k": 1001}, "--top-k must be between 1 and 1000"),
    ({"top_k": "many"}, "--top-k must be a number"),
    ({"actors": "0"}, "--actors must be a positive number"),
    ({"actors": "2.5"}, "--actors must be a positive number"),
    ({"device": "TPU"}, "unknown device"),
    ({"precision": "int4"}, "unknown precision"),
    ({"threads": -1}, "--threads must be 0"),
    ({"actor_gpus": -1}, "--actor-gpus must be 0 or positive"),
    ({"actor_resources": '{"CPU": 1}'}, "give CPU with its own option"),
    ({"actor_labels": "[1]"}, "must be a JSON object"),
    ({"storage_options": "{nope"}, "--storage-options is not valid JSON"),
    ({"storage_options": 5}, "--storage-options must be a JSON object"),
    ({"pool": "nosuch"}, "unknown pool"),
    ({"model": "resnet"}, "unknown model"),
    ({"colour": "red"}, "unknown option(s): colour"),
    ({"stall_timeout": 0}, "--stall-timeout must be positive"),
    ({"max_pixels": 10**12}, "--max-pixels must be at most"),
])
def test_a_bad_option_is_one_clear_error(given, message):
    output = given.pop("output", "out")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LabelOptions.build(["in"], output, **given)


def test_no_input_and_an_empty_input_are_refused():
    with pytest.raises(UserError, match="no input"):
        LabelOptions.build([], "out")
    with pytest.raises(UserError, match="empty string"):
        LabelOptions.build([""], "out")


def test_options_are_frozen_and_keep_credentials_out_of_their_repr():
    options = LabelOptions.build(["in"], "out", storage_options='{"secret": "s3cr3t"}')
    assert "s3cr3t" not in repr(options)
    with pytest.raises(AttributeError):
        options.output = "elsewhere"
    assert isinstance(options, LabelOptions)


def test_parsing_options_imports_neither_ray_nor_openvino():
    code = ("import sys; from effnet_ray.options import LabelOptions; "
            "LabelOptions.build(['x'], 'y', pool='cpu'); "
            "print(sorted(m for m in ('ray', 'openvino', 'fsspec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_pillow_global_limit_is_left_alone():
    before = Image.MAX_IMAGE_PIXELS
    import effnet_ray.inputs.preprocessing  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS == before and before is not None


def test_decoding_tasks_hold_several_units_yet_keep_every_cpu_busy():
    from effnet_ray.run.job import MAX_READ_BLOCKS, read_tasks

    assert read_tasks(75, 2) == 10  # 8 units a task
    assert read_tasks(10, 2) == 4  # 2 tasks a CPU, smaller ones
    assert read_tasks(3, 64) == 3  # never more tasks than units
    assert read_tasks(10**6, 10_000) == MAX_READ_BLOCKS
    assert read_tasks(0, 2) == 1


def test_storage_options_given_as_text_reach_the_options():
    options = LabelOptions.build(["s3://b/in"], "s3://b/out",
                                 storage_options='{"key": "k", "secret": "s"}')
    assert options.storage_options == {"key": "k", "secret": "s"}
