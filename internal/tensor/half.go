package tensor

import "math"

// Half-precision values are held as float32 (which represents every FP16
// and BF16 value exactly) and converted to their 16-bit encodings only at
// the edges: onnxruntime's input buffers and the binary data extension.

// MaxFP16 is the largest finite FP16 value.
const MaxFP16 = 65504

// FP16Bits returns the IEEE 754 binary16 encoding of f rounded to nearest,
// ties to even. Values beyond the FP16 range become ±Inf.
func FP16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	switch {
	case exp == 0xff: // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp == 0 && mant == 0:
		return sign
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal (or zero) in binary16.
		if e < -10 {
			return sign
		}
		m := mant | 0x800000
		shift := uint32(14 - e)
		half := uint32(1) << (shift - 1)
		r := m >> shift
		rest := m & (1<<shift - 1)
		if rest > half || (rest == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | mant>>13
	rest := mant & 0x1fff
	if rest > 0x1000 || (rest == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, up to Inf: correct
	}
	return sign | uint16(r)
}

// FP16Float returns the float32 value of a binary16 encoding.
func FP16Float(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: mant * 2^-24.
		f := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			return -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// BF16Bits returns the bfloat16 encoding of f rounded to nearest, ties to
// even.
func BF16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7f800000 == 0x7f800000 && b&0x7fffff != 0 {
		return uint16(b>>16) | 0x40 // quiet NaN
	}
	rest := b & 0xffff
	r := b >> 16
	if rest > 0x8000 || (rest == 0x8000 && r&1 == 1) {
		r++
	}
	return uint16(r)
}

// BF16Float returns the float32 value of a bfloat16 encoding.
func BF16Float(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// RoundFP16 returns f rounded to the nearest FP16 value.
func RoundFP16(f float32) float32 { return FP16Float(FP16Bits(f)) }

// RoundBF16 returns f rounded to the nearest BF16 value.
func RoundBF16(f float32) float32 { return BF16Float(BF16Bits(f)) }
