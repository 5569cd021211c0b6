package sim

import (
	"bytes"
	"testing"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

// FuzzReadCSV: a traffic CSV is user input. No panic; what is accepted
// gives every row a valid tensor per input (finite floats, integers in
// range), and one label per row when a label column was asked for.
func FuzzReadCSV(f *testing.F) {
	f.Add([]byte("a,b,y\n1,2,0\n3.5,-4,1\n"), true, uint8(0))
	f.Add([]byte("a,b\n1,2\n"), false, uint8(1))
	f.Add([]byte("a,a,y\n1,2,3\n"), true, uint8(2))
	f.Add([]byte("a,b,y\n1,NaN,0\n"), true, uint8(3))
	f.Add([]byte("a,b,y\n1e39,1.0,true\n"), true, uint8(4))
	f.Add([]byte("a,b\n\"x,y\",-129\n"), false, uint8(5))
	f.Add([]byte(""), false, uint8(0))
	types := tensor.Datatypes()
	f.Fuzz(func(t *testing.T, data []byte, label bool, typ uint8) {
		// Input x: every column but the label, as FP32; or, for odd typ,
		// x from column a and z from column b, of fuzzed datatypes.
		o := CSVOptions{Inputs: []CSVInput{{Name: "x"}}}
		if typ%2 == 1 {
			o.Inputs = []CSVInput{
				{Name: "x", Datatype: types[int(typ/2)%len(types)], Columns: []string{"a"}},
				{Name: "z", Datatype: types[int(typ/4)%len(types)], Columns: []string{"b"}, Rank1: true},
			}
		}
		if label {
			o.Label = "y"
		}
		d, err := readCSV(bytes.NewReader(data), "traffic.csv", o)
		if err != nil {
			return
		}
		if err := d.check(); err != nil {
			t.Fatalf("accepted data that does not check: %v", err)
		}
		for r := range d.Len() {
			in, _, labelled := d.Row(r)
			if labelled != label {
				t.Fatalf("row %d labelled %v, want %v", r, labelled, label)
			}
			for _, x := range in {
				if err := x.Check(); err != nil {
					t.Fatalf("row %d: %v", r, err)
				}
				if x.Finite() >= 0 {
					t.Fatalf("row %d: input %s has non-finite values %v", r, x.Name, x.Data)
				}
			}
		}
	})
}
