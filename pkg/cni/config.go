package cni

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ztdns/ztdns/pkg/control"
)

// PluginType is the plugin's "type" in a conflist, and so the name of its
// binary in the runtime's CNI bin dir.
const PluginType = "ztdns"

// Policies for Config.OnAgentUnreachable.
const (
	// PolicyAllow lets the pod start uncaptured when the agent cannot be
	// reached, logging it loudly; the agent's reconcile captures the pod
	// when it is back.
	PolicyAllow = "allow"
	// PolicyFail fails the ADD with "try again later", so the runtime
	// retries the pod's creation until the agent answers.
	PolicyFail = "fail"
)

// DefaultOnAgentUnreachable is PolicyAllow.
//
// The plugin runs for every pod on the node, and whether a pod is captured
// is decided by the agent, from namespace labels the plugin does not have. So
// with "fail" an agent that is down, crash-looping or being upgraded would
// stop every pod on the node from starting, including the ones that are not
// in the mesh, CoreDNS, and the components needed to repair the agent
// itself: ztdns would become a hard dependency of the node's networking for
// the sake of a DNS redirection. With "allow" the cost of an outage is
// bounded: pods created meanwhile resolve through their own nameserver
// (cluster DNS) until the agent returns and its reconcile marks them, which
// it can do in place because marking a network namespace needs neither a
// restart nor anything inside the pod. This is the same choice as the data
// path's fail-open heartbeat. Choose "fail" where a pod must never run a
// moment without capture (e.g. it depends on names only ztdns answers, like
// auto-allocated ServiceEntry VIPs, and caches failures).
const DefaultOnAgentUnreachable = PolicyAllow

// DefaultTimeout bounds one request to the agent. Marking is a map update,
// but the agent may briefly wait for its pod watch to see a pod it is told
// about before the API server's event arrives.
const DefaultTimeout = 5 * time.Second

// maxTimeout keeps a misconfigured timeout from stalling pod creation for
// longer than a runtime would wait for a plugin.
const maxTimeout = time.Minute

// pendingSubdir is where, next to the control socket, the plugin records the
// events the agent missed, unless Config.PendingDir says otherwise.
const pendingSubdir = "pending"

// Config is the ztdns entry of a conflist, the fields besides the standard
// "type", "name" and "cniVersion". Every field is optional.
type Config struct {
	// SocketPath is the agent's control socket (default
	// control.DefaultSocket, /var/run/ztdns/ztdns.sock).
	SocketPath string `json:"socketPath,omitempty"`
	// OnAgentUnreachable is what ADD does when the agent cannot be reached
	// (no socket, nobody listening, or no answer within Timeout): "allow"
	// (the default, see DefaultOnAgentUnreachable) or "fail".
	OnAgentUnreachable string `json:"onAgentUnreachable,omitempty"`
	// Timeout bounds each request to the agent, as a Go duration ("5s",
	// the default; at most 1m).
	Timeout string `json:"timeout,omitempty"`
	// PendingDir is where the plugin records the DELs (and, with "allow",
	// the ADDs) the agent could not take, for it to replay when it returns
	// (default: "pending" next to SocketPath). See PendingDeletes.
	PendingDir string `json:"pendingDir,omitempty"`
	// LogFile is a file the plugin appends its log to (default: none, the
	// log goes to stderr, which the runtime records). Never stdout: that is
	// the CNI result.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is "debug", "info" (the default), "warn" or "error".
	LogLevel string `json:"logLevel,omitempty"`
}

// Entry returns c as a conflist plugin entry, {"type": "ztdns", ...}, for
// InstallConfig.PluginConf.
func (c Config) Entry() (json.RawMessage, error) {
	return json.Marshal(struct {
		Type string `json:"type"`
		Config
	}{PluginType, c})
}

// Validate runs on c the checks the plugin runs on its conflist entry
// (defaults applied, set fields checked): an entry it fails would fail
// every pod's ADD, whatever OnAgentUnreachable says.
func (c Config) Validate() error {
	return (&netConf{Config: c}).applyDefaults()
}

// netConf is the network configuration the runtime gives the plugin on
// stdin, with Config's defaults applied and its values parsed.
type netConf struct {
	types.PluginConf
	Config

	timeout  time.Duration
	logLevel slog.Level
}

// parseConfig unmarshals the network configuration, parses prevResult (when
// there is one) into the current result type, applies defaults and
// validates. Its errors are CNI errors with the code to report.
func parseConfig(stdin []byte) (*netConf, *current.Result, error) {
	conf := &netConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "ztdns: parse network config", err.Error())
	}

	var prev *current.Result
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, nil, types.NewError(types.ErrDecodingFailure, "ztdns: parse prevResult", err.Error())
		}
		var err error
		if prev, err = current.NewResultFromResult(conf.PrevResult); err != nil {
			return nil, nil, types.NewError(types.ErrDecodingFailure, "ztdns: convert prevResult to CNI "+current.ImplementedSpecVersion, err.Error())
		}
	}

	if err := conf.applyDefaults(); err != nil {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig, "ztdns: invalid network config", err.Error())
	}
	return conf, prev, nil
}

// applyDefaults fills in unset fields and checks the set ones.
func (c *netConf) applyDefaults() error {
	if c.SocketPath == "" {
		c.SocketPath = control.DefaultSocket
	}
	if !filepath.IsAbs(c.SocketPath) {
		return fmt.Errorf("socketPath %q is not an absolute path", c.SocketPath)
	}

	if c.PendingDir == "" {
		c.PendingDir = filepath.Join(filepath.Dir(c.SocketPath), pendingSubdir)
	}
	if !filepath.IsAbs(c.PendingDir) {
		return fmt.Errorf("pendingDir %q is not an absolute path", c.PendingDir)
	}

	switch c.OnAgentUnreachable {
	case "":
		c.OnAgentUnreachable = DefaultOnAgentUnreachable
	case PolicyAllow, PolicyFail:
	default:
		return fmt.Errorf("onAgentUnreachable %q: want %q or %q", c.OnAgentUnreachable, PolicyAllow, PolicyFail)
	}

	c.timeout = DefaultTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil {
			return fmt.Errorf("timeout %q: want a duration such as \"5s\": %w", c.Timeout, err)
		}
		if d <= 0 || d > maxTimeout {
			return fmt.Errorf("timeout %q: want more than 0 and at most %s", c.Timeout, maxTimeout)
		}
		c.timeout = d
	}

	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return fmt.Errorf("logFile %q is not an absolute path", c.LogFile)
	}
	switch strings.ToLower(c.LogLevel) {
	case "", "info":
		c.logLevel = slog.LevelInfo
	case "debug":
		c.logLevel = slog.LevelDebug
	case "warn", "warning":
		c.logLevel = slog.LevelWarn
	case "error":
		c.logLevel = slog.LevelError
	default:
		return fmt.Errorf("logLevel %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}
