package onnxmodel

import (
	"fmt"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// TensorProto fields Externalize reads and writes.
const (
	fTensorRawData      = 9
	fTensorExternalData = 13
	fTensorDataLocation = 14
	tensorLocExternal   = 1
	fEntryKey           = 1
	fEntryValue         = 2
)

// Externalize returns model with the raw data of every top-level graph
// initializer of at least minBytes replaced by an ONNX external-data
// reference to the same bytes where they already are: in the file named
// location (relative to the model's folder) that holds model itself, at
// their offset in it. onnxruntime maps external data from its file, so a
// session built from the result keeps its large weights as pages of the
// model file instead of parsing them into a protobuf and then copying them
// into tensors (twice the model's size at the peak of a load). n counts
// the initializers moved; with none, slim is model itself. Initializers in
// subgraphs, and tensors without raw data or with external data already,
// stay as they are.
func Externalize(model []byte, location string, minBytes int) (slim []byte, n int, err error) {
	// Count first, copying nothing: a model with nothing to move (weights
	// in typed fields, or small) is returned as it is without a rebuild.
	candidates := 0
	err = eachField(model, 0, func(num protowire.Number, typ protowire.Type, _, graph []byte, off int) error {
		if num != fModelGraph || typ != protowire.BytesType {
			return nil
		}
		return eachField(graph, off, func(num protowire.Number, typ protowire.Type, _, t []byte, off int) error {
			if num != fGraphInitializer || typ != protowire.BytesType {
				return nil
			}
			ok, err := movable(t, off, minBytes)
			if ok {
				candidates++
			}
			return err
		})
	})
	if err != nil {
		return nil, 0, fmt.Errorf("%w: externalize: %v", ErrMalformed, err)
	}
	if candidates == 0 {
		return model, 0, nil
	}
	out, n, err := rewriteFields(model, 0, func(num protowire.Number, typ protowire.Type, val []byte, off int) ([]byte, int, error) {
		if num != fModelGraph || typ != protowire.BytesType {
			return nil, 0, nil
		}
		return rewriteFields(val, off, func(num protowire.Number, typ protowire.Type, val []byte, off int) ([]byte, int, error) {
			if num != fGraphInitializer || typ != protowire.BytesType {
				return nil, 0, nil
			}
			t, ok, err := externalTensor(val, off, location, minBytes)
			if err != nil || !ok {
				return nil, 0, err
			}
			return t, 1, nil
		})
	})
	if err != nil {
		return nil, 0, fmt.Errorf("%w: externalize: %v", ErrMalformed, err)
	}
	if n == 0 {
		return model, 0, nil
	}
	return out, n, nil
}

// rawData finds the one raw_data of a TensorProto at offset off of the
// file; ok is false when it has none, several, or external data already.
func rawData(t []byte, off int) (rawOff, rawLen int, ok bool, err error) {
	raws := 0
	err = walkFields(t, off, func(num protowire.Number, typ protowire.Type, val []byte, voff int) {
		switch {
		case num == fTensorRawData && typ == protowire.BytesType:
			raws, rawOff, rawLen = raws+1, voff, len(val)
		case num == fTensorExternalData || num == fTensorDataLocation:
			raws = -1 << 30 // already external: leave it
		}
	})
	return rawOff, rawLen, err == nil && raws == 1, err
}

// movable says whether Externalize moves the TensorProto t.
func movable(t []byte, off, minBytes int) (bool, error) {
	_, n, ok, err := rawData(t, off)
	return ok && n >= minBytes, err
}

// externalTensor rewrites one TensorProto at offset off of the file;
// ok is false when it stays as it is.
func externalTensor(t []byte, off int, location string, minBytes int) (out []byte, ok bool, err error) {
	rawOff, rawLen, ok, err := rawData(t, off)
	if err != nil || !ok || rawLen < minBytes {
		return nil, false, err
	}
	out, _, err = rewriteFields(t, off, func(num protowire.Number, typ protowire.Type, val []byte, voff int) ([]byte, int, error) {
		if num == fTensorRawData {
			return []byte{}, 0, nil // dropped
		}
		return nil, 0, nil
	})
	if err != nil {
		return nil, false, err
	}
	for _, kv := range [][2]string{{"location", location}, {"offset", strconv.Itoa(rawOff)}, {"length", strconv.Itoa(rawLen)}} {
		var e []byte
		e = protowire.AppendTag(e, fEntryKey, protowire.BytesType)
		e = protowire.AppendString(e, kv[0])
		e = protowire.AppendTag(e, fEntryValue, protowire.BytesType)
		e = protowire.AppendString(e, kv[1])
		out = protowire.AppendTag(out, fTensorExternalData, protowire.BytesType)
		out = protowire.AppendBytes(out, e)
	}
	out = protowire.AppendTag(out, fTensorDataLocation, protowire.VarintType)
	out = protowire.AppendVarint(out, tensorLocExternal)
	return out, true, nil
}

// walkFields calls fn for every field of msg, which starts at offset base
// of the file; voff is the offset of a length-delimited value's bytes.
// Nothing is copied.
func walkFields(msg []byte, base int, fn func(num protowire.Number, typ protowire.Type, val []byte, voff int)) error {
	return eachField(msg, base, func(num protowire.Number, typ protowire.Type, _, val []byte, voff int) error {
		fn(num, typ, val, voff)
		return nil
	})
}

// eachField calls fn with each field of msg (at offset base of the file):
// its whole encoding raw, and for a length-delimited field its value and
// the value's offset.
func eachField(msg []byte, base int, fn func(num protowire.Number, typ protowire.Type, raw, val []byte, voff int) error) error {
	for off := 0; off < len(msg); {
		num, typ, n := protowire.ConsumeTag(msg[off:])
		if n < 0 {
			return protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, msg[off+n:])
		if m < 0 {
			return protowire.ParseError(m)
		}
		var val []byte
		voff := 0
		if typ == protowire.BytesType {
			v, ln := protowire.ConsumeBytes(msg[off+n:])
			val, voff = v, base+off+n+ln-len(v)
		}
		if err := fn(num, typ, msg[off:off+n+m], val, voff); err != nil {
			return err
		}
		off += n + m
	}
	return nil
}

// rewriteFields rebuilds msg (at offset base of the file) field by field:
// fn returns a field's new value (an empty non-nil slice drops the field),
// or nil to keep it as it is, and how many edits it made. It returns the
// rebuilt message and the edits counted.
func rewriteFields(msg []byte, base int, fn func(num protowire.Number, typ protowire.Type, val []byte, voff int) ([]byte, int, error)) ([]byte, int, error) {
	var out []byte
	edits := 0
	err := eachField(msg, base, func(num protowire.Number, typ protowire.Type, raw, val []byte, voff int) error {
		repl, k, err := fn(num, typ, val, voff)
		switch {
		case err != nil:
			return err
		case repl == nil:
			out = append(out, raw...)
		case len(repl) == 0 && k == 0:
			// dropped
		default:
			out = protowire.AppendTag(out, num, protowire.BytesType)
			out = protowire.AppendBytes(out, repl)
		}
		edits += k
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, edits, nil
}
