// Package cron parses standard five-field cron expressions (minute, hour,
// day of month, month, day of week; lists, ranges, steps, month and day
// names, and the @hourly, @daily, @weekly, @monthly and @yearly
// shorthands) and finds when one next fires. Imported by controlplane/api
// and controlplane/retrain.
package cron

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

// Schedule is a parsed cron expression.
type Schedule struct {
	spec                          string
	minute, hour, dom, month, dow uint64 // bit i set: value i matches
	domRestricted, dowRestricted  bool   // the field does not start with '*'
}

// field is one of the five fields: its name and the range of its values.
type field struct {
	name     string
	min, max int
	names    []string // names of values from min, if any
}

var fields = [5]field{
	{name: "minute", min: 0, max: 59},
	{name: "hour", min: 0, max: 23},
	{name: "day of month", min: 1, max: 31},
	{name: "month", min: 1, max: 12, names: []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}},
	// 7 is Sunday too.
	{name: "day of week", min: 0, max: 7, names: []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}},
}

// shorthands are the @ forms.
var shorthands = map[string]string{
	"@yearly":   "0 0 1 1 *",
	"@annually": "0 0 1 1 *",
	"@monthly":  "0 0 1 * *",
	"@weekly":   "0 0 * * 0",
	"@daily":    "0 0 * * *",
	"@midnight": "0 0 * * *",
	"@hourly":   "0 * * * *",
}

// horizon bounds the search for the next time: long enough for any date
// that exists (29 February can be 8 years away).
const horizon = 9

// Parse reads a five-field expression or a shorthand. Day of month and
// day of week combine as in Vixie cron: when both are restricted (neither
// starts with '*'), a day matching either fires. An expression that can
// never fire (30 February) is an error.
func Parse(spec string) (*Schedule, error) {
	expr := strings.TrimSpace(spec)
	if strings.HasPrefix(expr, "@") {
		full, ok := shorthands[strings.ToLower(expr)]
		if !ok {
			return nil, fmt.Errorf("cron %q: unknown shorthand (want @hourly, @daily, @weekly, @monthly or @yearly)", spec)
		}
		expr = full
	}
	parts := strings.Fields(expr)
	if len(parts) != 5 {
		return nil, fmt.Errorf("cron %q: want 5 fields (minute hour day-of-month month day-of-week), got %d", spec, len(parts))
	}
	s := &Schedule{spec: strings.TrimSpace(spec)}
	sets := [5]*uint64{&s.minute, &s.hour, &s.dom, &s.month, &s.dow}
	for i, p := range parts {
		set, err := parseField(p, fields[i])
		if err != nil {
			return nil, fmt.Errorf("cron %q: %s: %w", spec, fields[i].name, err)
		}
		*sets[i] = set
	}
	if s.dow&(1<<7) != 0 { // 7 is Sunday
		s.dow |= 1
		s.dow &^= 1 << 7
	}
	s.domRestricted = !strings.HasPrefix(parts[2], "*")
	s.dowRestricted = !strings.HasPrefix(parts[4], "*")
	if s.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, fmt.Errorf("cron %q: names no date that exists; it would never fire", spec)
	}
	return s, nil
}

// parseField reads a comma-separated list of *, N, N-M, with an optional
// /STEP on each.
func parseField(s string, f field) (uint64, error) {
	var set uint64
	for item := range strings.SplitSeq(s, ",") {
		rng, stepText, hasStep := strings.Cut(item, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepText)
			if err != nil || n < 1 || n > f.max {
				return 0, fmt.Errorf("step %q: want a number from 1 to %d", stepText, f.max)
			}
			step = n
		}
		var lo, hi int
		switch {
		case rng == "*":
			lo, hi = f.min, f.max
			if f.name == "day of week" {
				hi = 6 // 7 repeats Sunday
			}
		case strings.Contains(rng, "-"):
			a, b, _ := strings.Cut(rng, "-")
			var err error
			if lo, err = value(a, f); err != nil {
				return 0, err
			}
			if hi, err = value(b, f); err != nil {
				return 0, err
			}
			if lo > hi {
				return 0, fmt.Errorf("range %q runs backwards", rng)
			}
		default:
			v, err := value(rng, f)
			if err != nil {
				return 0, err
			}
			lo, hi = v, v
			if hasStep { // N/S is N through the maximum
				hi = f.max
			}
		}
		for v := lo; v <= hi; v += step {
			set |= 1 << v
		}
	}
	return set, nil
}

func value(s string, f field) (int, error) {
	for i, n := range f.names {
		if strings.EqualFold(s, n) {
			return f.min + i, nil
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < f.min || v > f.max {
		if s == "" {
			return 0, errors.New("empty value")
		}
		return 0, fmt.Errorf("%q: want %d-%d%s", s, f.min, f.max, nameHint(f))
	}
	return v, nil
}

func nameHint(f field) string {
	if len(f.names) == 0 {
		return ""
	}
	return " or " + f.names[0] + "-" + f.names[len(f.names)-1]
}

// String is the expression as given.
func (s *Schedule) String() string { return s.spec }

// PerHour is the most times the schedule fires within one hour (the
// minutes its minute field names).
func (s *Schedule) PerHour() int { return bits.OnesCount64(s.minute) }

// Next is the first minute strictly after t at which s fires, in t's
// location; the zero time if there is none within nine years (never, for
// an expression Parse accepted).
func (s *Schedule) Next(t time.Time) time.Time {
	loc := t.Location()
	t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), 0, 0, loc).Add(time.Minute)
	limit := t.AddDate(horizon, 0, 0)
	for t.Before(limit) {
		switch {
		case s.month&(1<<int(t.Month())) == 0:
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, loc)
		case !s.dayMatches(t):
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
		case s.hour&(1<<t.Hour()) == 0:
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, loc)
		case s.minute&(1<<t.Minute()) == 0:
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute()+1, 0, 0, loc)
		default:
			return t
		}
	}
	return time.Time{}
}

func (s *Schedule) dayMatches(t time.Time) bool {
	dom := s.dom&(1<<t.Day()) != 0
	dow := s.dow&(1<<int(t.Weekday())) != 0
	if s.domRestricted && s.dowRestricted {
		return dom || dow
	}
	return dom && dow
}
