package sim

import (
	"bytes"
	"math"
	"testing"
)

// FuzzReadCSV: a traffic CSV is user input. No panic; what is accepted has
// one value per feature per row, all finite, and one label per row when a
// label column was asked for.
func FuzzReadCSV(f *testing.F) {
	f.Add([]byte("a,b,y\n1,2,0\n3.5,-4,1\n"), true)
	f.Add([]byte("a,b\n1,2\n"), false)
	f.Add([]byte("a,a,y\n1,2,3\n"), true)
	f.Add([]byte("a,b,y\n1,NaN,0\n"), true)
	f.Add([]byte(""), false)
	f.Fuzz(func(t *testing.T, data []byte, label bool) {
		o := CSVOptions{Input: "in"}
		if label {
			o.Label = "y"
		}
		d, err := readCSV(bytes.NewReader(data), "traffic.csv", o)
		if err != nil {
			return
		}
		k := len(d.Features)
		if k == 0 || len(d.Rows)%k != 0 {
			t.Fatalf("%d features, %d values", k, len(d.Rows))
		}
		for _, v := range d.Rows {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("accepted a non-finite value %v", v)
			}
		}
		if label && len(d.Labels) != len(d.Rows)/k {
			t.Fatalf("%d labels for %d rows", len(d.Labels), len(d.Rows)/k)
		}
	})
}
