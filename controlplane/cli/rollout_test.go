package cli

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/controlplane/api"
)

func TestParseStage(t *testing.T) {
	tests := []struct {
		in      string
		want    api.RolloutStage
		wantErr string
	}{
		{"canary:2", api.RolloutStage{Canary: 2}, ""},
		{"percent:12.5%", api.RolloutStage{Percent: 12.5}, ""},
		{"devices:d1,d2", api.RolloutStage{Devices: []string{"d1", "d2"}}, ""},
		{"group:site=b/bake=10m/min=3", api.RolloutStage{Selector: "site=b", Bake: api.Duration(10 * time.Minute), MinDevices: 3}, ""},
		{"canary:2/shadow", api.RolloutStage{Canary: 2, Shadow: true}, ""},
		{"canary:0", api.RolloutStage{}, "canary wants a device count"},
		{"percent:101", api.RolloutStage{}, "percent wants a number"},
		{"group:site==b", api.RolloutStage{}, "group:site==b"},
		{"wave:3", api.RolloutStage{}, "unknown kind \"wave\""},
		{"canary", api.RolloutStage{}, "want canary:N"},
		{"canary:1/bake=soon", api.RolloutStage{}, "bake=\"soon\""},
		{"canary:1/speed=2", api.RolloutStage{}, "unknown option \"speed\""},
	}
	for _, tt := range tests {
		got, err := parseStage(tt.in)
		if tt.wantErr != "" {
			require.Error(t, err, "parseStage(%q)", tt.in)
			assert.Contains(t, err.Error(), tt.wantErr, "parseStage(%q)", tt.in)
			continue
		}
		require.NoError(t, err, "parseStage(%q)", tt.in)
		assert.Equal(t, tt.want, got, "parseStage(%q)", tt.in)
	}
}

func TestRolloutUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"rollout"},
		{"rollout", "explode"},
		{"rollout", "create", "fraud", "--selector", "a=b", "--stage", "canary:1"},
		{"rollout", "create", "fraud@2", "--selector", "a=b"},
		{"rollout", "create", "fraud@2", "--selector", "a=b", "--stage", "canary:1", "--on-breach", "boom"},
		{"rollout", "create", "fraud@2", "--selector", "a=b", "--stage", "canary:1", "--start-at", "tomorrow"},
		{"rollout", "create", "fraud@2", "--selector", "a=b", "--stage", "canary:1", "--window", "9-5"},
		{"rollout", "rollback", "r-1", "--selector", "a=b", "--device", "d1"},
		{"rollout", "get"},
	} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append([]string{"--token", "x"}, args...), func(string) string { return "" }, &out, &errOut)
		assert.Equal(t, 2, code, "%v: %s", args, errOut.String())
	}
}
