package oip

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/edgefleet/edgefleet/internal/tensor"
)

// The binary tensor data extension carries a tensor's elements as raw
// bytes after the JSON header: little-endian, row-major; BOOL one byte
// per element (0 or 1); FP16 and BF16 their 16-bit encodings; BYTES each
// element as a 4-byte little-endian length and its bytes.

// BinaryExtension is the name reported in GET /v2 extensions.
const BinaryExtension = "binary_tensor_data"

// HeaderContentLength is the header naming the JSON part's length in a
// body (request or response) that carries binary tensor data.
const HeaderContentLength = "Inference-Header-Content-Length"

// Parameters of the extension.
const (
	ParamBinaryDataSize   = "binary_data_size"
	ParamBinaryData       = "binary_data"
	ParamBinaryDataOutput = "binary_data_output"
)

// binarySize returns the bytes t takes in binary form.
func binarySize(t *Tensor) int64 {
	if s, ok := t.Data.([]string); ok {
		n := int64(0)
		for _, e := range s {
			n += 4 + int64(len(e))
		}
		return n
	}
	return int64(t.Len()) * int64(t.DT().Size())
}

// appendBinary appends t's elements in binary form.
func appendBinary(b []byte, t *Tensor) []byte {
	switch v := t.Data.(type) {
	case []bool:
		for _, x := range v {
			if x {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		}
	case []uint8:
		b = append(b, v...)
	case []int8:
		for _, x := range v {
			b = append(b, byte(x))
		}
	case []uint16:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint16(b, x)
		}
	case []int16:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint16(b, uint16(x))
		}
	case []uint32:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, x)
		}
	case []int32:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, uint32(x))
		}
	case []uint64:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint64(b, x)
		}
	case []int64:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint64(b, uint64(x))
		}
	case []float64:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(x))
		}
	case []float32:
		switch t.DT() {
		case tensor.FP16:
			for _, x := range v {
				b = binary.LittleEndian.AppendUint16(b, tensor.FP16Bits(x))
			}
		case tensor.BF16:
			for _, x := range v {
				b = binary.LittleEndian.AppendUint16(b, tensor.BF16Bits(x))
			}
		default:
			for _, x := range v {
				b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
			}
		}
	case []string:
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(x)))
			b = append(b, x...)
		}
	}
	return b
}

// decodeBinary decodes n elements of datatype d from raw, which must hold
// exactly them.
func decodeBinary(raw []byte, d tensor.Datatype, n int64) (any, error) {
	if d == tensor.Bytes {
		out := make([]string, 0, min(n, int64(len(raw)/4)))
		for i := int64(0); i < n; i++ {
			if len(raw) < 4 {
				return nil, fmt.Errorf("binary data ends in element %d's length; shape needs %d BYTES elements", i, n)
			}
			l := binary.LittleEndian.Uint32(raw)
			raw = raw[4:]
			if uint64(l) > uint64(len(raw)) {
				return nil, fmt.Errorf("binary data element %d says %d bytes, %d are left", i, l, len(raw))
			}
			out = append(out, string(raw[:l]))
			raw = raw[l:]
		}
		if len(raw) != 0 {
			return nil, fmt.Errorf("binary data has %d bytes after the %d BYTES elements the shape needs", len(raw), n)
		}
		return out, nil
	}
	size := int64(d.Size())
	if size == 0 || int64(len(raw)) != n*size {
		return nil, fmt.Errorf("binary data is %d bytes; %d %s elements take %d", len(raw), n, d, n*size)
	}
	out := tensor.Make(d, int(n))
	switch v := out.(type) {
	case []bool:
		for i := range v {
			switch raw[i] {
			case 0:
			case 1:
				v[i] = true
			default:
				return nil, fmt.Errorf("binary BOOL element %d is %d, want 0 or 1", i, raw[i])
			}
		}
	case []uint8:
		copy(v, raw)
	case []int8:
		for i := range v {
			v[i] = int8(raw[i])
		}
	case []uint16:
		for i := range v {
			v[i] = binary.LittleEndian.Uint16(raw[2*i:])
		}
	case []int16:
		for i := range v {
			v[i] = int16(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case []uint32:
		for i := range v {
			v[i] = binary.LittleEndian.Uint32(raw[4*i:])
		}
	case []int32:
		for i := range v {
			v[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	case []uint64:
		for i := range v {
			v[i] = binary.LittleEndian.Uint64(raw[8*i:])
		}
	case []int64:
		for i := range v {
			v[i] = int64(binary.LittleEndian.Uint64(raw[8*i:]))
		}
	case []float64:
		for i := range v {
			v[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
		}
	case []float32:
		for i := range v {
			switch d {
			case tensor.FP16:
				v[i] = tensor.FP16Float(binary.LittleEndian.Uint16(raw[2*i:]))
			case tensor.BF16:
				v[i] = tensor.BF16Float(binary.LittleEndian.Uint16(raw[2*i:]))
			default:
				v[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
			}
		}
	}
	return out, nil
}
