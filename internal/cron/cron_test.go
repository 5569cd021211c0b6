package cron

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestNext(t *testing.T) {
	for _, tt := range []struct {
		spec, from, want string
	}{
		{"* * * * *", "2026-12-06 10:00", "2026-12-06 10:01"},
		{"0 * * * *", "2026-12-06 10:00", "2026-12-06 11:00"},
		{"@hourly", "2026-12-06 10:59", "2026-12-06 11:00"},
		{"@daily", "2026-12-06 10:00", "2026-12-07 00:00"},
		{"@midnight", "2026-12-31 23:59", "2027-01-01 00:00"},
		{"@weekly", "2026-12-06 10:00", "2026-12-13 00:00"}, // 6 Dec 2026 is a Sunday
		{"@monthly", "2026-12-06 10:00", "2027-01-01 00:00"},
		{"@yearly", "2026-12-06 10:00", "2027-01-01 00:00"},
		{"@annually", "2026-01-01 00:00", "2027-01-01 00:00"},
		{"30 3 * * *", "2026-12-06 03:30", "2026-12-07 03:30"},
		{"30 3 * * *", "2026-12-06 03:29", "2026-12-06 03:30"},
		{"15 2,14 * * *", "2026-12-06 03:00", "2026-12-06 14:15"},
		{"0 9-17/4 * * *", "2026-12-06 13:00", "2026-12-06 17:00"},
		{"0 22/1 * * *", "2026-12-06 22:30", "2026-12-06 23:00"},
		{"0 0 * * mon-fri", "2026-12-05 12:00", "2026-12-07 00:00"}, // Saturday → Monday
		{"0 0 * * 7", "2026-12-01 00:00", "2026-12-06 00:00"},       // 7 is Sunday
		{"0 0 * * SUN", "2026-12-06 00:00", "2026-12-13 00:00"},
		{"0 0 1 jan,jul *", "2026-02-01 00:00", "2026-07-01 00:00"},
		{"0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"},
		{"0 0 31 * *", "2026-04-01 00:00", "2026-05-31 00:00"},
		// Day of month and day of week both restricted: either matches.
		{"0 0 13 * 5", "2026-12-06 00:00", "2026-12-11 00:00"}, // Friday 11th before the 13th
		{"0 0 13 * 5", "2026-12-12 00:00", "2026-12-13 00:00"},
		// One of them starting with '*': both must match.
		{"0 0 */2 * 1", "2026-12-06 00:00", "2026-12-07 00:00"}, // Monday 7th: odd day, */2 from 1 matches 7
		{"0 0 */2 * 1", "2026-12-07 00:00", "2026-12-21 00:00"},
	} {
		s, err := Parse(tt.spec)
		require.NoError(t, err, "Parse(%q)", tt.spec)
		got := s.Next(at(tt.from))
		assert.Equal(t, at(tt.want), got, "Parse(%q).Next(%s) = %s, want %s", tt.spec, tt.from, got.Format("2006-01-02 15:04 Mon"), tt.want)
	}
}

func TestNextIgnoresSeconds(t *testing.T) {
	s, err := Parse("0 * * * *")
	require.NoError(t, err)
	from := time.Date(2026, 12, 6, 10, 59, 59, 999, time.UTC)
	assert.Equal(t, time.Date(2026, 12, 6, 11, 0, 0, 0, time.UTC), s.Next(from))
	assert.Equal(t, time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC), s.Next(time.Date(2026, 12, 6, 11, 0, 0, 1, time.UTC)),
		"strictly after: a time within the firing minute is past it")
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct{ spec, want string }{
		{"", "want 5 fields"},
		{"* * * *", "want 5 fields"},
		{"* * * * * *", "want 5 fields"},
		{"@every 1h", "unknown shorthand"},
		{"60 * * * *", `minute: "60": want 0-59`},
		{"* 24 * * *", `hour: "24": want 0-23`},
		{"* * 0 * *", `day of month: "0": want 1-31`},
		{"* * * 13 *", "month"},
		{"* * * * 8", "day of week"},
		{"* * * foo *", `"foo": want 1-12 or jan-dec`},
		{"5-1 * * * *", "runs backwards"},
		{"*/0 * * * *", "step"},
		{"*/x * * * *", "step"},
		{"1,,2 * * * *", "empty value"},
		{"0 0 30 2 *", "never fire"},
		{"0 0 31 4,6,9,11 *", "never fire"},
	} {
		_, err := Parse(tt.spec)
		require.Error(t, err, "Parse(%q)", tt.spec)
		assert.Contains(t, err.Error(), tt.want, "Parse(%q)", tt.spec)
	}
}

func TestPerHour(t *testing.T) {
	for spec, want := range map[string]int{"@hourly": 1, "@daily": 1, "0,30 * * * *": 2, "*/15 3 * * *": 4, "* * * * *": 60} {
		s, err := Parse(spec)
		require.NoError(t, err)
		assert.Equal(t, want, s.PerHour(), "Parse(%q).PerHour()", spec)
	}
}

// Next fires every matching minute and no other: checked against a
// minute-by-minute walk over a new year and a 29 February.
func TestNextAgreesWithAWalk(t *testing.T) {
	for _, spec := range []string{"17 */5 * * *", "0 12 1,15 * wed", "45 23 * feb-mar 0,6", "0 0 29 2 *"} {
		s, err := Parse(spec)
		require.NoError(t, err)
		from := at("2027-12-30 00:00")
		next := s.Next(from)
		for m := from.Add(time.Minute); m.Before(at("2028-04-01 00:00")); m = m.Add(time.Minute) {
			fires := s.month&(1<<int(m.Month())) != 0 && s.dayMatches(m) && s.hour&(1<<m.Hour()) != 0 && s.minute&(1<<m.Minute()) != 0
			switch {
			case fires && !next.Equal(m):
				t.Fatalf("Parse(%q).Next(%s) = %s, want %s", spec, from, next, m)
			case fires:
				from, next = m, s.Next(m)
			case !next.After(m):
				t.Fatalf("Parse(%q).Next(%s) = %s, which does not fire", spec, from, next)
			}
		}
	}
}
