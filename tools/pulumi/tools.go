//go:build tools

// Package tools pins the Pulumi CLI this project builds (`go install` refuses pkg/v3: replace
// directives in its go.mod).
package tools

import (
	_ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
)
