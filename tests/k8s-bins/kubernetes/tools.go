//go:build tools

// Keeps the commands we build in the module graph so `go mod tidy` resolves them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
