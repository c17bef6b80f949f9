//go:build tools

// The commands deploy/local/kube.sh builds; importing them keeps `go mod tidy` from
// dropping what they need.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
