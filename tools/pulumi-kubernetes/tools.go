//go:build tools

// Package tools pins the Pulumi Kubernetes provider this project builds (see tools/toolchain.py).
package tools

import (
	_ "github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/pulumi-resource-kubernetes"
)
