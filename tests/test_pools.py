"""Pool profiles, actor sizing and the GPU device an actor gets: pure functions, no Ray."""

import pytest

from effnet_ray.errors import UserError
from effnet_ray.models.cache import local_ir
from effnet_ray.models.pools import all_pools, parse_pool
from effnet_ray.run.inference import openvino_device
from effnet_ray.run.placement import (
    MAX_DECODERS_PER_ACTOR,
    auto_actors,
    decoders_per_actor,
    fitting_actors,
)


def test_every_bundled_profile_loads():
    pools = all_pools()
    assert {"cpu", "cpu-pinned", "intel-gpu"} <= set(pools)
    assert pools["intel-gpu"]["device"] == "GPU" and pools["intel-gpu"]["actor_gpus"] == 1
    assert pools["cpu-pinned"]["actor_resources"] == {"ov_cpu": 1}


@pytest.mark.parametrize("change, message", [
    ({"actors": "many"}, "'actors'"),
    ({"actors": 0}, "'actors'"),
    ({"actor_resources": {"CPU": 2}}, "give CPU with its own option"),
    ({"actor_resources": {"ov": -1}}, "positive amount"),
    ({"actor_labels": {"zone": 3}}, "string value"),
    ({"surprise": 1}, "unknown keys"),
])
def test_a_bad_profile_is_refused_with_its_fault(change, message):
    good = dict(all_pools()["cpu"], description="test")
    with pytest.raises(UserError, match=message):
        parse_pool({**good, **change}, "test.toml")


def test_actors_fit_per_node_and_leave_cpus_for_decoding():
    nodes = [{"CPU": 16.0}, {"CPU": 16.0}, {"CPU": 8.0, "GPU": 2.0}]
    assert fitting_actors(nodes, {"CPU": 4}) == 10
    assert auto_actors(nodes, {"CPU": 4}, 40) == 9  # keep 2.5 of 40 CPUs for decoding
    assert auto_actors(nodes, {"CPU": 1, "GPU": 1}, 40) == 2
    pinned = [{"CPU": 2.0, "ov_cpu": 2.0}, {"CPU": 1.0}]
    assert auto_actors(pinned, {"CPU": 1, "ov_cpu": 1}, 3) == 2
    # labels chose the first node only; the other node's CPU still decodes
    assert auto_actors(pinned[:1], {"CPU": 1}, 3) == 2
    assert auto_actors(pinned[:1], {"CPU": 1}, 2) == 1
    assert fitting_actors([{"CPU": 2.0}], {"CPU": 1, "ov_cpu": 1}) == 0


@pytest.mark.parametrize("device, ray_ids, visible, expected", [
    ("GPU", ["2"], ["GPU.0", "GPU.1", "GPU.2", "GPU.3"], "GPU.2"),  # OpenVINO sees all
    ("GPU", ["2"], ["GPU"], "GPU"),  # Ray's mask reached OpenVINO: only the actor's GPU
    ("GPU", ["1", "3"], ["GPU.0", "GPU.1"], "GPU.0"),
    ("GPU.1", ["0"], ["GPU.0", "GPU.1"], "GPU.1"),  # explicit: kept
    ("CPU", [], [], "CPU"),
    ("GPU", [], ["GPU.0", "GPU.1"], "GPU"),  # outside Ray's GPU accounting
])
def test_the_gpu_ray_assigned_is_the_one_openvino_uses(device, ray_ids, visible, expected):
    assert openvino_device(device, ray_ids, visible) == expected


def test_a_node_whose_model_file_differs_is_refused(lite0_ir, tmp_path):
    with pytest.raises(UserError, match="differs from the one the run was started with"):
        local_ir(str(lite0_ir), tmp_path, expected_sha256="0" * 64)


def test_decoding_threads_in_an_actor_take_what_decoding_tasks_would():
    gib = 2**30
    reader = {"CPU": 0.5, "memory": gib}
    # one actor on 2 CPUs: the 4 decoding tasks the node holds become 4 threads
    assert decoders_per_actor({"CPU": 2, "memory": 20 * gib}, 1, {"CPU": 1}, reader) == 4
    # memory bounds them as it bounds tasks, also the memory the actors reserve
    assert decoders_per_actor({"CPU": 2, "memory": 2.5 * gib}, 1, {"CPU": 1}, reader) == 2
    assert decoders_per_actor({"CPU": 8, "memory": 4 * gib}, 2,
                              {"CPU": 4, "memory": 1 * gib}, reader) == 1
    # shared among the actors, rounded up, at least one each
    assert decoders_per_actor({"CPU": 8, "memory": 64 * gib}, 3, {"CPU": 2}, reader) == 6
    assert decoders_per_actor({"CPU": 2, "memory": 0.1 * gib}, 1, {"CPU": 1}, reader) == 1
    # beyond MAX_DECODERS_PER_ACTOR threads, tasks (processes) decode instead
    assert decoders_per_actor({"CPU": 64, "memory": 256 * gib}, 1, {"CPU": 1}, reader) == 0
    assert 0 < decoders_per_actor({"CPU": 2 * MAX_DECODERS_PER_ACTOR, "memory": 256 * gib},
                                  4, {"CPU": 1}, reader) <= MAX_DECODERS_PER_ACTOR
