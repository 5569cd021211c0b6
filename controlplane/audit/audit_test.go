package audit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/edgefleet/edgefleet/internal/store"
)

func TestRecordListAndReopen(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(store.Options{Dir: dir})
	require.NoError(t, err)
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	l, err := Open(db.Namespace("audit"), func() time.Time { return now })
	require.NoError(t, err)

	_, err = l.Record(Entry{Actor: "admin", Action: "model.upload", Target: "fraud@1.0.0"})
	require.NoError(t, err)
	_, err = l.Record(Entry{Actor: "system", Action: "rollout.gate_breached", Target: "r1", Result: "paused",
		Details: map[string]any{"failure_rate": 0.5}})
	require.NoError(t, err)
	_, err = l.Record(Entry{Actor: "ops", Action: "rollout.resume", Target: "r1"})
	require.NoError(t, err)
	_, err = l.Record(Entry{Actor: "ops"})
	require.Error(t, err, "an entry needs an action")

	all, err := l.List(Query{})
	require.NoError(t, err)
	require.Len(t, all, 3)
	assert.Equal(t, []uint64{1, 2, 3}, []uint64{all[0].Seq, all[1].Seq, all[2].Seq})
	assert.Equal(t, "ok", all[0].Result)
	assert.Equal(t, 0.5, all[1].Details["failure_rate"])

	rollouts, err := l.List(Query{Action: "rollout."})
	require.NoError(t, err)
	assert.Len(t, rollouts, 2)
	last, err := l.List(Query{Limit: 1})
	require.NoError(t, err)
	require.Len(t, last, 1)
	assert.Equal(t, "rollout.resume", last[0].Action)

	require.NoError(t, db.Close())
	db, err = store.Open(store.Options{Dir: dir})
	require.NoError(t, err)
	defer db.Close()
	l, err = Open(db.Namespace("audit"), nil)
	require.NoError(t, err)
	e, err := l.Record(Entry{Actor: "ops", Action: "deploy"})
	require.NoError(t, err)
	assert.Equal(t, uint64(4), e.Seq, "sequence numbers continue after a restart")
}
