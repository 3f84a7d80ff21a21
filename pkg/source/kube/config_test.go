package kube

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestRESTConfigErrors(t *testing.T) {
	// Outside a pod: no service account and no API server variables.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	missing := filepath.Join(t.TempDir(), "no-such-kubeconfig")
	tests := []struct {
		name    string
		path    string
		wantErr string
	}{
		{name: "no kubeconfig outside a cluster", path: "", wantErr: "give --kubeconfig"},
		{name: "kubeconfig file missing", path: missing, wantErr: "kubeconfig " + missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := RESTConfig(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("RESTConfig(%q) = %v, %v; want an error containing %q", tt.path, cfg, err, tt.wantErr)
			}
		})
	}
}
