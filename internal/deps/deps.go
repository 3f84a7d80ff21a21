//go:build tools

// Package deps pins modules that packages under construction will import, so
// that `go mod tidy` run by one change does not drop another's requirements.
// Remove entries as real imports land.
package deps

import (
	_ "github.com/containernetworking/cni/libcni"
	_ "github.com/containernetworking/cni/pkg/skel"
	_ "github.com/containernetworking/plugins/pkg/ns"
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/miekg/dns"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/vishvananda/netlink"
	_ "golang.org/x/sys/unix"
	_ "istio.io/client-go/pkg/apis/networking/v1"
	_ "istio.io/client-go/pkg/clientset/versioned"
	_ "k8s.io/client-go/kubernetes"
	_ "sigs.k8s.io/yaml"
)
