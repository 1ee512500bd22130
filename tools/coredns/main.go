// Cluster DNS for the project's local Kubernetes cluster: CoreDNS with only the plugins its
// Corefile uses (tools/cluster/manifests/coredns.yaml), so it builds in a fraction of the time
// of the full distribution and never forwards a query off this machine.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins run in this order (the upstream order, restricted to the ones compiled in).
var directives = []string{"errors", "health", "ready", "kubernetes", "cache", "loadbalance"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
