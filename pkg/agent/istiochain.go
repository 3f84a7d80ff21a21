package agent

import (
	"log/slog"
	"sync"
	"time"

	"github.com/ztdns/ztdns/pkg/capture"
	"github.com/ztdns/ztdns/pkg/cni"
)

// istioChain follows whether istio-cni is in the node's CNI chain, as the
// CNI installer finds it (cni.Chain.IstioCNI), for the capture decision
// (capture.Controller.SetNoIstioCNI): without it, istio-cni set up none of
// the node's new sandboxes, and an ambient.istio.io/redirection a pod
// carries was written for another (see ambient.Policy.NoIstioCNI).
//
// The first look counts at once. Later, istio-cni back counts at once, and
// istio-cni gone only once it has stayed gone for capture.EnrollmentGrace:
// a primary plugin that writes its configuration again drops istio-cni's
// entry (and ztdns's) until istio-cni's installer puts it back, within a
// second, and the pods it enrolled must not be released meanwhile.
//
// Its zero value follows nothing (start).
type istioChain struct {
	mu    sync.Mutex
	set   func(missing bool) // the controller's SetNoIstioCNI; nil: not following
	log   *slog.Logger
	grace time.Duration

	told    bool   // the controller was told
	missing bool   // what it was told
	file    string // the file the runtime uses, as last looked at
	gone    *time.Timer
	gen     uint64 // ends a gone timer that fired late
	stopped bool

	// excludes compares istio-cni's excluded namespaces with the agent's,
	// whether or not the chain is followed for the decision.
	excludes istioExcludes
}

// watchIstioChain starts following the node's CNI chain where the agent
// installs the plugin and captures: for the capture decision when it
// requires istio-cni's enrollment, and to compare istio-cni's excluded
// namespaces with its own (istioExcludes); with a first look now, before
// the agent decides anything.
func (a *Agent) watchIstioChain() {
	if a.cfg.CNI == nil || a.dataplane == nil {
		return
	}
	a.istioChain.excludes.start(a.cfg.ExcludeNamespaces, a.log)
	if a.cfg.watchesPods() && !a.cfg.IgnoreEnrollment {
		a.istioChain.start(a.dataplane.controller.SetNoIstioCNI, a.log, capture.EnrollmentGrace)
	}
	if c, err := cni.ReadChain(a.cfg.CNI.ConfDir); err == nil {
		a.istioChain.observe(c)
	} // no configuration: no pod starts until there is one, and the installer's look tells
}

func (s *istioChain) start(set func(missing bool), log *slog.Logger, grace time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set, s.log, s.grace = set, log, grace
}

// onChain is the CNI installer's cni.InstallConfig.OnChain: nil when s
// follows nothing and compares nothing.
func (s *istioChain) onChain() func(cni.Chain) {
	s.mu.Lock()
	following := s.set != nil
	s.mu.Unlock()
	if !following && !s.excludes.comparing() {
		return nil
	}
	return s.observe
}

// stop ends a wait for istio-cni's entry gone: the installer stopped.
func (s *istioChain) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.gen++
	if s.gone != nil {
		s.gone.Stop()
		s.gone = nil
	}
}

// observe takes a look at the chain.
func (s *istioChain) observe(c cni.Chain) {
	s.excludes.observe(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set == nil || s.stopped {
		return
	}
	s.file = c.File
	switch {
	case !s.told:
		s.apply(!c.IstioCNI)
	case c.IstioCNI:
		s.gen++
		if s.gone != nil {
			s.gone.Stop()
			s.gone = nil
		}
		s.apply(false)
	case !s.missing && s.gone == nil:
		gen := s.gen
		s.gone = time.AfterFunc(s.grace, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.gen == gen {
				s.gone = nil
				s.apply(true)
			}
		})
	}
}

// apply tells the controller when it changes, and logs it.
func (s *istioChain) apply(missing bool) {
	if s.told && missing == s.missing {
		return
	}
	first := !s.told
	s.told, s.missing = true, missing
	s.set(missing)
	switch {
	case missing:
		s.log.Warn("istio-cni is not in the node's CNI chain, so it set up none of the sandboxes made since: "+
			"pods the labels put in the ambient mesh whose sandbox is made since are not captured (not-enrolled), whatever their ambient.istio.io/redirection says; "+
			"those it enrolled before stay captured", "file", s.file)
	case !first:
		s.log.Info("istio-cni is in the node's CNI chain again: pods are captured as istio-cni enrolls them", "file", s.file)
	}
}

// warning is status's warning while istio-cni is missing, "" otherwise.
func (s *istioChain) warning() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.missing {
		return ""
	}
	return "istio-cni is not in the node's CNI chain (" + s.file + "), so it set up none of the sandboxes made since: " +
		"pods the labels put in the ambient mesh whose sandbox was made since are not captured (not-enrolled), whatever their ambient.istio.io/redirection says, " +
		"until it is (--require-istio-enrollment=false captures them on their labels alone); those it enrolled before stay captured"
}
