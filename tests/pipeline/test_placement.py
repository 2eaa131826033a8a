"""Placement on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``): each stage
actor lands on the node that advertises its custom resource, as on real devices started with
``ray start --address ... --resources '{"rpi-1": 1}'``."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.errors import ConfigError
from edgelesspart.pipeline import raykit
from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
from edgelesspart.runtime.manifest import load_manifest

pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def cluster():
    """A head (1 CPU) and three 'devices' rpi-0, rpi-1, rpi-2, each 1 CPU; shut down after."""
    import ray

    c = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    nodes = {f"rpi-{i}": c.add_node(num_cpus=1, resources={f"rpi-{i}": 1}) for i in range(3)}
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield nodes
    ray.shutdown()
    c.shutdown()


def test_stage_actors_run_on_the_nodes_with_their_resources(cluster, chain_bundle):
    # GIVEN stage0 -> rpi-2, stage1 -> rpi-0, stage2 -> rpi-1 (deliberately not in order)
    stages = default_stages(load_manifest(chain_bundle.path))
    placement = raykit.parse_placement(
        "stage0=rpi-2,stage1=rpi-0,2=rpi-1", [s.name for s in stages]
    )
    with Pipeline(chain_bundle.path, stages_with(stages, placement=placement)) as pipe:
        # WHEN the chain answers
        results = pipe.run_many(chain_bundle.x[:3])
        where = {w["stage"]: w["node_id"] for w in pipe.workers}
    # THEN each actor lives on the node that advertises its resource, and the answers are right
    for stage, resource in placement.items():
        assert where[stage] == cluster[resource].node_id
    probs = np.concatenate([r.probs for r in results])
    np.testing.assert_allclose(probs, chain_bundle.expected[:3], atol=2e-3)


def test_unknown_resource_is_refused_before_any_actor_starts(cluster, chain_bundle):
    stages = stages_with(
        default_stages(load_manifest(chain_bundle.path)), placement={"stage1": "jetson-9"}
    )
    with pytest.raises(ConfigError, match=r"No Ray node offers resource\(s\) \['jetson-9'\]"):
        Pipeline(chain_bundle.path, stages).start()
