"""A real multi-node Ray cluster on 127.0.0.1, for the cluster tests, in a process of its own.

Ray's own `ray.cluster_utils.Cluster` starts each node (GCS + raylet for the head, a raylet and its
workers for the others) as separate processes on this host, with the node IP given here: `ray start
--node-ip-address 127.0.0.1` would replace the loopback address with the machine's routable one.
Commands come as JSON lines on stdin, answers go out as JSON lines on stdout:

    {"add": "b", "num_cpus": 1}   -> {"name": "b", "node_id": ..., "raylet_pid": ...}
    {"kill": "b"}                 -> kill -9 the node's raylet and every process under it (its workers)
    {"nodes": true}               -> {"nodes": [...]}

The first line out is {"address": "127.0.0.1:PORT", "nodes": [...]} once the head and the workers
named on the command line (`name:cpus` ...) are up. Closing stdin stops the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import Any

import psutil


def _info(name: str, node: Any) -> dict[str, Any]:
    raylet = node.all_processes["raylet"][0].process
    return {"name": name, "node_id": node.node_id, "raylet_pid": raylet.pid}


def _kill_node(cluster: Any, node: Any) -> list[int]:
    """SIGKILL the node's raylet and all its descendants (trial workers), as a crashed machine would."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    victims = [raylet, *raylet.children(recursive=True)]
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)  # SIGKILLs the node's remaining processes
    return [p.pid for p in victims]


def main() -> None:
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster() records itself in /tmp/ray/ray_current_cluster, where any `ray.init()` on this machine
    # would find and join it: a test cluster must stay private to its test.
    ray._private.utils.write_ray_address = lambda *args, **kwargs: None
    temp_dir = f"/tmp/csr{os.getpid()}"  # short: Ray's socket paths must stay under 107 characters
    cluster = Cluster(initialize_head=True, head_node_args={
        "node_ip_address": "127.0.0.1", "num_cpus": 0, "include_dashboard": False, "temp_dir": temp_dir})
    nodes: dict[str, Any] = {"head": cluster.head_node}
    for spec in sys.argv[1:]:
        name, cpus = spec.split(":")
        nodes[name] = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=int(cpus), resources={name: 1})

    def say(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    say({"address": cluster.address, "temp_dir": temp_dir,
         "nodes": [_info(n, node) for n, node in nodes.items()]})
    for line in sys.stdin:
        command = json.loads(line)
        if "add" in command:
            name = command["add"]
            nodes[name] = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=command.get("num_cpus", 1),
                                           resources={name: 1})
            say(_info(name, nodes[name]))
        elif "kill" in command:
            node = nodes.pop(command["kill"])
            say({"killed": command["kill"], "pids": _kill_node(cluster, node)})
        elif "nodes" in command:
            say({"nodes": [_info(n, node) for n, node in nodes.items()]})
    cluster.shutdown()


if __name__ == "__main__":
    main()
