package agent

import (
	"encoding/json"
	"slices"
	"testing"
)

// The phase names are persisted in every slot with an update in progress
// and read by other packages: renaming one breaks resuming after an
// upgrade, and every caller comparing strings.
func TestPhaseValuesAreStable(t *testing.T) {
	want := []string{"manifest", "downloading", "verifying", "staging"}
	var got []string
	for _, p := range Phases() {
		b, err := json.Marshal(target{Phase: p})
		if err != nil {
			t.Fatal(err)
		}
		var back struct{ Phase string }
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		got = append(got, back.Phase)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Phases() persist as %q, want %q", got, want)
	}
	if hp := HookPhases(); !slices.Equal(hp, Phases()[1:]) {
		t.Errorf("HookPhases() = %q, want every phase after %q", hp, PhaseManifest)
	}
	Phases()[0] = "changed"
	if Phases()[0] != PhaseManifest {
		t.Error("Phases() returned shared state")
	}
}
