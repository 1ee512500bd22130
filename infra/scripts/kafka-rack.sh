#!/bin/sh
# The brokers' "rack" init container (infra/kafka_cluster.py): the node's zone becomes broker.rack.
# Its token (mounted here only) may read nodes and nothing else.
set -eu
kubectl get node "$NODE_NAME" -o jsonpath='{.metadata.labels.topology\.kubernetes\.io/zone}' > /etc/kafka-rack/rack
