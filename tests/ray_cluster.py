"""A Ray cluster of several nodes on this machine, for tests/test_ray_fleet.py: run it inside a network
namespace with only lo up (every Ray process it starts stays in there).

    ip netns exec NS python -m tests.ray_cluster

It starts the nodes of NODES (each with its own resources), connects as a driver, and prints one JSON
line: {"address", "nodes": [{"name", "node_id", "ip", "resources", "raylet_pid"}]}. Then it answers one
JSON line per line read: "actors" lists the cluster's actors that are not dead ({"class", "state",
"pid"}). At end of input (or "stop") it shuts the cluster down.
"""

from __future__ import annotations

import json
import os
import sys

# name -> add_node() arguments: resources that tell the nodes apart (CPU and GPU are counted, not real)
NODES = {
    "head": {"num_cpus": 2},
    "arena": {"num_cpus": 4, "resources": {"arena": 1}},
    "gpu": {"num_cpus": 4, "num_gpus": 1},
}


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    assert os.environ.get("RAY_USAGE_STATS_ENABLED") == "0", "run with RAY_USAGE_STATS_ENABLED=0"
    common = {"node_ip_address": "127.0.0.1", "include_dashboard": False, "object_store_memory": 80 * 2**20}
    names = list(NODES)
    cluster = Cluster(initialize_head=True, head_node_args={**common, **NODES[names[0]]})
    try:
        started = {names[0]: cluster.head_node}
        for name in names[1:]:
            started[name] = cluster.add_node(**common, **NODES[name])
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        alive = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        nodes = []
        for name, node in started.items():
            info = alive[node.node_id]
            nodes.append(
                {
                    "name": name,
                    "node_id": node.node_id,
                    "ip": info["NodeManagerAddress"],
                    "resources": info["Resources"],
                    "raylet_pid": node.all_processes["raylet"][0].process.pid,
                }
            )
        print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
        for line in sys.stdin:
            if line.strip() == "actors":
                table = ray._private.state.actors()  # (the GCS's actor table: no dashboard needed)
                live = [
                    {"class": a["ActorClassName"], "state": a["State"], "pid": a.get("Pid")}
                    for a in table.values()
                    if a["State"] != "DEAD"
                ]
                print(json.dumps(live), flush=True)
            elif line.strip() == "stop":
                break
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
