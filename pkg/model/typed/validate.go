package typed

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// What the API server (or Istio's validation) refuses and the reduction
// would serve wrong: a name in upper case is listed but never answered (a
// query is matched in lower case), a port past 65535 would be served
// wrapped around. A watch only ever sees objects the API server accepted,
// so these checks are made for manifests only, here: a regular expression
// per object is no cost to a file, and would be to a watch of thousands.

// Name rules of the API server (k8s.io/kubernetes pkg/apis/*/validation).
var (
	// Since Kubernetes 1.37 (RelaxedServiceNameValidation, on by default
	// since 1.36) a Service name is a DNS-1123 label, as a namespace's:
	// before, a DNS-1035 label (no leading digit).
	serviceName = validation.IsDNS1123Label
	// Pods, EndpointSlices and custom resources (ServiceEntries).
	subdomainName = validation.IsDNS1123Subdomain
	namespaceName = validation.IsDNS1123Label
)

// checkMeta reports a name or namespace the API server refuses. what names
// the object as the reduction's messages do ("service shop/web").
func checkMeta(what string, m *metav1.ObjectMeta, name func(string) []string, namespaced bool) []error {
	var errs []error
	if msgs := name(m.Name); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("%s: metadata.name %q is not valid: %s", what, m.Name, strings.Join(msgs, "; ")))
	}
	if namespaced && m.Namespace != "" {
		if msgs := namespaceName(m.Namespace); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("%s: metadata.namespace %q is not valid: %s", what, m.Namespace, strings.Join(msgs, "; ")))
		}
	}
	return errs
}

// objectName names a namespaced object as the reduction's messages do.
func objectName(kind string, m *metav1.ObjectMeta) string {
	ns := m.Namespace
	if ns == "" {
		ns = "default"
	}
	return kind + " " + ns + "/" + m.Name
}

// checkPort reports a port number outside 1-65535, which the API server
// refuses for a Service and Istio's CRD for a ServiceEntry. field names it
// as the manifest does ("port", "number"); the value is quoted so that the
// manifest source finds its line.
func checkPort(what, field string, n int64) error {
	if 1 <= n && n <= 65535 {
		return nil
	}
	return fmt.Errorf("%s: %s %q must be between 1 and 65535, inclusive", what, field, strconv.FormatInt(n, 10))
}

// checkAddress reports a ServiceEntry address with an IPv6 zone
// ("fe80::1%eth0"), which Istio's validation accepts and no answer can
// carry: a watch skips it (kubeapi.ServiceEntry.ModelSkipping), a manifest
// is refused, as the objects of the API server's own types are.
func checkAddress(what, a string) error {
	ip, err := netip.ParseAddr(a)
	if err != nil || ip.Zone() == "" {
		return nil
	}
	return fmt.Errorf("%s: address %q is not an IP address or CIDR: an IPv6 zone (%%%s) is not allowed", what, a, ip.Zone())
}

// maxHostLength is the longest ServiceEntry host Istio's validation
// accepts.
const maxHostLength = 255

// checkHost reports a ServiceEntry host that Istio's validation
// (ValidateServiceEntry, agent.ValidateWildcardDomain) refuses, and with it
// the whole ServiceEntry: a host that is no DNS name ("a..b", "foo.*.x",
// "_x.example"), "*", or all digits in its last label (an address). The
// empty host and "." are the reduction's to report (package kubeapi), in
// every mode. A partial wildcard ("*foo.example") Istio only warns of, and
// "*.", which it accepts: they are left to the name table, which leaves
// them out with a warning, as in Kubernetes mode.
func checkHost(what, host string) error {
	if strings.TrimSuffix(host, ".") == "" {
		return nil
	}
	var why string
	switch {
	case host == "*": // Istio's CRD (self != "*") and webhook refuse only "*": "*." is left to the table
		why = "it would be every name"
	case len(host) > maxHostLength:
		why = fmt.Sprintf("longer than %d characters", maxHostLength)
	default:
		// As Istio: a trailing dot leaves an empty last label, which is
		// allowed, and no top-level label to be all digits.
		labels := strings.Split(host, ".")
		if last := labels[len(labels)-1]; len(labels) > 1 && allDigits(last) {
			why = "its last label is all digits (an address is written in spec.addresses)"
			break
		}
		for i, l := range labels {
			if i == 0 && wildcardLabel(l) || dnsLabel(l) || i > 0 && i == len(labels)-1 && l == "" {
				continue
			}
			why = "labels are 1 to 63 letters, digits or '-' (not first or last), and only the first may be a wildcard (*, *name)"
			break
		}
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("%s: host %q is not a valid DNS name: %s", what, host, why)
}

// dnsLabel reports whether l is a DNS-1123 label, in either case (Istio's
// labels.IsDNS1123Label).
func dnsLabel(l string) bool {
	if l == "" || len(l) > validation.DNS1123LabelMaxLength || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		switch c := l[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-':
		default:
			return false
		}
	}
	return true
}

// wildcardLabel reports whether l may be a host's first label in Istio's
// validation (labels.IsWildcardDNS1123Label): "*", or a DNS-1123 label
// with or without "*" or "*-" before it.
func wildcardLabel(l string) bool {
	if len(l) > validation.DNS1123LabelMaxLength {
		return false
	}
	if l == "*" {
		return true
	}
	if rest, ok := strings.CutPrefix(l, "*-"); ok {
		return dnsLabel(rest)
	}
	return dnsLabel(strings.TrimPrefix(l, "*"))
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
