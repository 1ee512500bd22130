"""Run inside an app pod (stdin to python3): the Kafka cluster as the app's own credentials see it.

Prints one JSON line: brokers (ids), controller, cluster id, and per topic its partitions' replica and ISR counts
and its min.insync.replicas."""

import json

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from pynomaly.config import load_settings
from pynomaly.messaging.kafka_admin import connection_config

admin = KafkaAdminClient(**connection_config(load_settings()))
try:
    cluster = admin.describe_cluster()
    topics = [t for t in admin.describe_topics() if not t["name"].startswith("__")]
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t["name"]) for t in topics])
    configs = {
        name: int(entries["min.insync.replicas"]["value"])
        for name, entries in described["topic"].items()
        if "min.insync.replicas" in entries
    }
    print(
        json.dumps(
            {
                "brokers": sorted(b["broker_id"] for b in cluster["brokers"]),
                "controller": cluster["controller_id"],
                "cluster_id": cluster["cluster_id"],
                "topics": {
                    t["name"]: {
                        "partitions": [
                            {"leader": p["leader_id"], "replicas": len(p["replica_nodes"]), "isr": len(p["isr_nodes"])}
                            for p in t["partitions"]
                        ],
                        "min_insync": configs.get(t["name"]),
                    }
                    for t in topics
                },
            }
        )
    )
finally:
    admin.close()
