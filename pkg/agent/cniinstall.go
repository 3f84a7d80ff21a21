// The CNI installer: it keeps the chained plugin in the node's CNI
// configuration while the agent serves, and how its last look went is what
// ztdns_cni_config_installed and status say.

package agent

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ztdns/ztdns/pkg/cni"
	"github.com/ztdns/ztdns/pkg/redirect"
)

// CNIConfig installs the chained plugin into the node's CNI configuration.
type CNIConfig struct {
	// BinDir and ConfDir are the runtime's (mounted from the host).
	BinDir  string
	ConfDir string
	// Plugin is the plugin's conflist entry.
	Plugin cni.Config
}

// cniInstallInterval is how often the installer looks again, besides
// whenever a file in the conf dir changes (cni.KeepInstalled, which looks
// at most once a second): for the primary plugin's configuration to
// appear, and for it to be rewritten without our entry (primary plugins
// regenerate their conflist). A variable: tests shorten it.
var cniInstallInterval = 5 * time.Second

// installCNI puts the plugin into the node's CNI configuration and keeps it
// there until ctx ends: when the agent stops, or hands over to a successor,
// which keeps its own there.
func (a *Agent) installCNI(ctx context.Context) error {
	// A kernel that cannot read a network namespace's cookie gets no
	// plugin: it could capture no pod, and would fail every ADD under
	// onAgentUnreachable "fail". An entry an earlier agent installed is
	// taken out, as `ztdns uninstall` does.
	if err := redirect.CheckNetnsCookie(); errors.Is(err, unix.ENOPROTOOPT) {
		a.log.Warn("not installing the CNI plugin: no pod on this node can be captured", "err", err)
		if err := cni.Uninstall(cni.InstallConfig{ConfDir: a.cfg.CNI.ConfDir, Logger: a.log}); err != nil {
			a.log.Warn("could not take an earlier agent's CNI plugin out of the chain", "err", err)
		}
		a.cniInstall.refuse(err)
		<-ctx.Done()
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	plugin := a.cfg.CNI.Plugin
	if plugin.SocketPath == "" {
		plugin.SocketPath = a.cfg.Socket
	}
	entry, err := plugin.Entry()
	if err != nil {
		return err
	}
	cfg := cni.InstallConfig{BinDir: a.cfg.CNI.BinDir, ConfDir: a.cfg.CNI.ConfDir, Binary: self, PluginConf: entry, Logger: a.log,
		OnRepair:    metricCNIConfigRepairs.Inc,
		OnContested: func(on bool) { metricCNIConfigContested.Set(boolValue(on)) },
		OnInstalled: a.cniInstall.set,
		OnChain:     a.istioChain.onChain()}
	defer a.istioChain.stop()
	return cni.KeepInstalled(ctx, cfg, cniInstallInterval)
}

// cniInstallState is how the CNI installer's last look went: what
// ztdns_cni_config_installed and status's warning say.
type cniInstallState struct {
	mu        sync.Mutex
	looked    bool  // the installer has looked once
	err       error // why the plugin is not installed; nil once it is
	installed bool
	refused   error // why it never will be (installCNI)
}

// refuse records that the plugin is not installed, ever, and why.
func (s *cniInstallState) refuse(why error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.looked, s.err, s.installed, s.refused = true, why, false, why
}

func (s *cniInstallState) set(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.looked, s.err, s.installed = true, err, err == nil
}

// get reports whether the plugin is installed, and the status warning
// saying why not ("" when it is).
func (s *cniInstallState) get() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.installed {
		return true, ""
	}
	if s.refused != nil {
		return false, "the CNI plugin is not installed, and no pod on this node is captured: " + s.refused.Error()
	}
	why := "its first look is under way"
	if s.looked {
		why = s.err.Error()
	}
	return false, "the CNI plugin is not installed, so pods that start now are captured only when the agent's scan " +
		"finds them (within about 30 s; a pod that ends sooner, a short Job, never); trying again on every change " +
		"in the conf dir and every 5 s: " + why
}
