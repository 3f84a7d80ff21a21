package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParsePodArgs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    string
		want    podArgs
		wantErr string // empty: no error; else a CNI error code 4 containing it
	}{
		{
			name: "as containerd passes them",
			args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0b9e-11",
			want: podArgs{namespace: "shop", name: "web-0", uid: "0b9e-11"},
		},
		{
			name: "without a UID",
			args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
			want: podArgs{namespace: "shop", name: "web-0"},
		},
		{
			name: "unknown keys without IgnoreUnknown",
			args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;SOMETHING_NEW=x",
			want: podArgs{namespace: "shop", name: "web-0"},
		},
		{name: "empty", args: "", wantErr: "lacks [K8S_POD_NAMESPACE K8S_POD_NAME]"},
		{name: "no name", args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop", wantErr: "lacks [K8S_POD_NAME]"},
		{name: "empty namespace", args: "K8S_POD_NAMESPACE=;K8S_POD_NAME=web-0", wantErr: "lacks [K8S_POD_NAMESPACE]"},
		{name: "not key=value", args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME", wantErr: "parse CNI_ARGS"},
		{name: "unknown keys refused explicitly", args: "IgnoreUnknown=0;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;X=1", wantErr: "parse CNI_ARGS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parsePodArgs(tt.args)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Errorf("parsePodArgs = %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(cniErr.Error(), tt.wantErr) {
				t.Errorf("parsePodArgs = %+v, %v; want CNI error %d containing %q", got, err, types.ErrInvalidEnvironmentVariables, tt.wantErr)
			}
		})
	}
}
