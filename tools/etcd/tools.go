//go:build tools

// Package tools pins the etcd server this project builds (`go install` refuses etcd's module:
// its go.mod has replace directives).
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
