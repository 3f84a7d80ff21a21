// Package cni is the chained CNI plugin that hands each new pod to the ztdns
// node agent, and the installer that puts the plugin into the node's CNI
// configuration. What the plugin and the agent say to each other is
// pkg/control's (control.CNIAddRequest, control.CNIDelRequest).
//
// The plugin is thin (the istio-cni and containernetworking meta-plugin
// pattern): it runs after the primary network plugin, reads what the agent
// needs from the runtime (the pod's IPs from prevResult, its identity from
// CNI_ARGS, its network-namespace cookie from inside CNI_NETNS), sends one
// request over the agent's control socket and prints prevResult through
// unchanged. The agent checks what it is told against the network namespace,
// decides whether the pod is captured and marks it.
package cni
