// The NetworkPolicy agent of the project's local cluster: kube-network-policies (Kubernetes SIG
// Network's reference agent, nfqueue + nftables) run as a host process. Upstream's command only
// knows the in-cluster config; this one takes a kubeconfig (the agent's own client certificate) and
// removes its nftables table on SIGTERM as well as SIGINT, so `./dev cluster down` leaves no rule.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the agent's identity (required)")
	nodeName := flag.String("hostname-override", "", "the node whose pods the agent guards (default: the host name)")
	queueID := flag.Int("nfqueue-id", 100, "the nfqueue number")
	failOpen := flag.Bool("fail-open", false, "let packets through while no agent reads the queue")
	tableName := flag.String("nftables-table", "kube-network-policies", "name of the agent's inet nftables table")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" {
		klog.Exit("--kubeconfig is required")
	}
	if *nodeName == "" {
		name, err := os.Hostname()
		if err != nil {
			klog.Exitf("no host name: %v", err)
		}
		*nodeName = name
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Exitf("reading %s: %v", *kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Exitf("client: %v", err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer cancel()

	factory := informers.NewSharedInformerFactory(client, 0)
	controller, err := networkpolicy.NewController(client,
		factory.Networking().V1().NetworkPolicies(), factory.Core().V1().Namespaces(), factory.Core().V1().Pods(),
		nil, nil, nil, nil,
		networkpolicy.Config{
			FailOpen: *failOpen, QueueID: *queueID, NodeName: *nodeName, NFTableName: *tableName,
			// The conntrack race this works around is fixed in Linux 6.12 and later.
			NetfilterBug1766Fix: false,
		})
	if err != nil {
		klog.Exitf("controller: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- controller.Run(ctx) }()
	factory.Start(ctx.Done())

	select {
	case err = <-done: // the queue could not be opened, or the caches never synced
		klog.Exitf("controller stopped: %v", err)
	case <-ctx.Done():
	}
	// Run removes the nftables table as it returns.
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		klog.Warning("controller did not stop within 10 s")
	}
}
