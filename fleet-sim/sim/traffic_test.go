package sim

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/fraud"
)

// TestFraudSourceNeverRepeatsAfterAShift: shifting the traffic's
// parameters must not start the streams over. The shift's parameters
// change how transactions are labelled, not what is drawn, so generators
// made anew from the same seeds sent every input of the run again, and a
// site's retrain dataset failed its duplicates check (125 of 592 rows).
func TestFraudSourceNeverRepeatsAfterAShift(t *testing.T) {
	tr := &Traffic{params: map[string]fraud.Params{}}
	var mine []*Member
	for _, id := range []string{"a", "b", "c"} {
		mine = append(mine, &Member{Device: Device{ID: id, Labels: map[string]string{"site": "s"}}})
	}
	src := &fraudSource{t: tr, w: 1, mine: mine}
	seen := map[string]bool{}
	draw := func(phase string) {
		for range 200 {
			for i := range mine {
				in, _, _ := src.next(i)
				k := fmt.Sprint(in[0].Data)
				require.False(t, seen[k], "%s: device %s sent an input it had sent before", phase, mine[i].Device.ID)
				seen[k] = true
			}
		}
	}
	src.refresh()
	draw("before the shift")
	tr.params["a"] = fraud.Params{Pattern: fraud.PatternCardTesting}
	src.refresh()
	draw("after a shift of device a")
	delete(tr.params, "a")
	src.refresh()
	draw("after a shift back")
}
