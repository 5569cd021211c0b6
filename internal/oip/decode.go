package oip

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// scanRequest decodes an inference request in one pass over body: the
// common form every client sends (the request's and its inputs' and
// outputs' known fields, strings without escapes, whole-number shapes),
// checking the JSON strictly as it goes and keeping each input's data as
// the span of body it is (like RawData). Parameter objects, which are
// rare and small, go through encoding/json.
//
// ok is false for anything else — a JSON error, an unknown or repeated
// field, a null or a value of the wrong kind, a string with escapes —
// and the caller then decodes body the general way, which says what is
// wrong; on the bodies it accepts it returns what that way returns
// (FuzzScanRequest checks both against each other).
func scanRequest(body []byte) (req *InferRequest, ok bool) {
	s := scanner{b: body}
	req = &InferRequest{}
	var seen uint8
	ok = s.object(func(key []byte) bool {
		switch string(key) {
		case "id":
			return s.once(&seen, 1) && s.str(&req.ID)
		case "parameters":
			return s.once(&seen, 2) && s.params(&req.Parameters)
		case "inputs":
			return s.once(&seen, 4) && s.array(func() bool {
				if len(req.Inputs) == MaxRequestTensors {
					return false // the general way refuses it, before allocating
				}
				req.Inputs = append(req.Inputs, RequestInput{})
				return s.input(&req.Inputs[len(req.Inputs)-1])
			}, func() { req.Inputs = []RequestInput{} })
		case "outputs":
			return s.once(&seen, 8) && s.array(func() bool {
				if len(req.Outputs) == MaxRequestTensors {
					return false
				}
				req.Outputs = append(req.Outputs, RequestOutput{})
				return s.output(&req.Outputs[len(req.Outputs)-1])
			}, func() { req.Outputs = []RequestOutput{} })
		}
		return false
	})
	if !ok || s.i != len(s.b) {
		return nil, false
	}
	return req, true
}

// maxScanDepth bounds the nesting of the values scanRequest checks
// (tensor data nests as deep as its shape's rank); deeper bodies take the
// general way.
const maxScanDepth = 64

// scanner steps through JSON, checking it as it goes.
type scanner struct {
	b     []byte
	i     int
	depth int
}

func (s *scanner) space() {
	for s.i < len(s.b) && isSpace(s.b[s.i]) {
		s.i++
	}
}

// next skips white space and reports whether c is next, consuming it.
func (s *scanner) next(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) peek() byte {
	s.space()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// once records field bit in seen, false if it was there already.
func (s *scanner) once(seen *uint8, bit uint8) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// object scans an object, calling field with each key (without quotes)
// positioned at its value, which field must consume.
func (s *scanner) object(field func(key []byte) bool) bool {
	if !s.next('{') {
		return false
	}
	if s.next('}') {
		return true
	}
	for {
		key, ok := s.plainString()
		if !ok || !s.next(':') || !field(key) {
			return false
		}
		if s.next('}') {
			return true
		}
		if !s.next(',') {
			return false
		}
	}
}

// array scans an array, calling elem positioned at each element; empty
// is called for an array without elements.
func (s *scanner) array(elem func() bool, empty func()) bool {
	if !s.next('[') {
		return false
	}
	if s.next(']') {
		empty()
		return true
	}
	for {
		if !elem() {
			return false
		}
		if s.next(']') {
			return true
		}
		if !s.next(',') {
			return false
		}
	}
}

// plainString scans a string without escapes or control characters,
// valid UTF-8, and returns its contents.
func (s *scanner) plainString() ([]byte, bool) {
	if !s.next('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.i++
	}
	return nil, false
}

func (s *scanner) str(dst *string) bool {
	v, ok := s.plainString()
	*dst = string(v)
	return ok
}

// params decodes a parameters object with encoding/json (after checking
// it is one).
func (s *scanner) params(dst *map[string]any) bool {
	if s.peek() != '{' {
		return false
	}
	start := s.i
	if !s.value() {
		return false
	}
	return json.Unmarshal(s.b[start:s.i], dst) == nil
}

func (s *scanner) input(in *RequestInput) bool {
	var seen uint8
	return s.object(func(key []byte) bool {
		switch string(key) {
		case "name":
			return s.once(&seen, 1) && s.str(&in.Name)
		case "shape":
			return s.once(&seen, 2) && s.array(func() bool {
				d, ok := s.int64()
				in.Shape = append(in.Shape, d)
				return ok
			}, func() { in.Shape = []int64{} })
		case "datatype":
			return s.once(&seen, 4) && s.str(&in.Datatype)
		case "parameters":
			return s.once(&seen, 8) && s.params(&in.Parameters)
		case "data":
			if !s.once(&seen, 16) {
				return false
			}
			s.space()
			start := s.i
			if !s.value() {
				return false
			}
			in.Data = s.b[start:s.i:s.i]
			return true
		}
		return false
	})
}

func (s *scanner) output(out *RequestOutput) bool {
	var seen uint8
	return s.object(func(key []byte) bool {
		switch string(key) {
		case "name":
			return s.once(&seen, 1) && s.str(&out.Name)
		case "parameters":
			return s.once(&seen, 2) && s.params(&out.Parameters)
		}
		return false
	})
}

// int64 scans a whole number without fraction or exponent that fits.
func (s *scanner) int64() (int64, bool) {
	s.space()
	start := s.i
	end, ok := s.number()
	if !ok || end != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(view(s.b[start:s.i]), 10, 64)
	return v, err == nil
}

// number scans a JSON number; frac is non-nil when it has a fraction or
// an exponent.
func (s *scanner) number() (frac []byte, ok bool) {
	b, i := s.b, s.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	default:
		return nil, false
	}
	fracStart := i
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return nil, false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return nil, false
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	s.i = i
	if i > fracStart {
		return b[fracStart:i], true
	}
	return nil, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// value scans one JSON value of any kind, checking it strictly.
func (s *scanner) value() bool {
	switch s.peek() {
	case '{':
		if s.depth >= maxScanDepth {
			return false
		}
		s.depth++
		ok := s.object(func([]byte) bool { return s.value() })
		s.depth--
		return ok
	case '[':
		if s.depth >= maxScanDepth {
			return false
		}
		s.depth++
		ok := s.array(s.value, func() {})
		s.depth--
		return ok
	case '"':
		return s.anyString()
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	_, ok := s.number()
	return ok
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// anyString scans a string with any valid escapes (its bytes are not
// checked as UTF-8: encoding/json replaces invalid sequences when it
// decodes one).
func (s *scanner) anyString() bool {
	s.i++ // opening quote
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(s.b)-s.i < 5 {
					return false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !isHex(h) {
						return false
					}
				}
				s.i += 4
			default:
				return false
			}
		}
		s.i++
	}
	return false
}

func isHex(c byte) bool {
	return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}
