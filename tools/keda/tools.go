//go:build tools

// Package tools pins KEDA's operator and metrics API server (see tools/toolchain.py, tier "chaos").
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
