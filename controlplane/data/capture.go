package data

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/ingest"
	"github.com/edgefleet/edgefleet/internal/store"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// Bounds of what one uploaded batch may hold.
const (
	maxBatchItems   = 4096
	maxTensorsInRow = 64
	maxIDLen        = 128
)

// storedRow is a captured row as kept: the device's row with where and
// when it arrived.
type storedRow struct {
	Device   string `json:"device"`
	Site     string `json:"site,omitempty"`
	Received int64  `json:"received_ms"`
	// Proto is the efpb.CaptureRow as the device sent it (with the label
	// joined in when it arrived later).
	Proto []byte `json:"row"`

	Row *efpb.CaptureRow `json:"-"`
}

type pendingLabel struct {
	Label int64 `json:"label"`
	At    int64 `json:"at_ms"`
}

func decodeStored(val []byte) (*storedRow, error) {
	r := &storedRow{}
	if err := json.Unmarshal(val, r); err != nil {
		return nil, err
	}
	r.Row = &efpb.CaptureRow{}
	if err := proto.Unmarshal(r.Proto, r.Row); err != nil {
		return nil, err
	}
	return r, nil
}

// rowKey names a captured row; the inference id is escaped, so it holds
// no '/'.
func rowKey(prefix, model, dev, id string, row uint32) string {
	return fmt.Sprintf("%s%s/%s/%s/%08x", prefix, model, dev, url.PathEscape(id), row)
}

// cutKey splits "<device>/<rest>".
func cutKey(k string) (dev, rest string, ok bool) { return strings.Cut(k, "/") }

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// checkRow says what is wrong with a row ("" when nothing).
func checkRow(model, version, id string, tensors int) string {
	switch {
	case topics.ValidModelName(model) != nil:
		return fmt.Sprintf("model name %q", model)
	case version != "" && topics.ValidModelVersion(version) != nil:
		return fmt.Sprintf("model version %q", version)
	case id == "" || len(id) > maxIDLen:
		return fmt.Sprintf("inference id of %d bytes (want 1..%d)", len(id), maxIDLen)
	case tensors > maxTensorsInRow:
		return fmt.Sprintf("%d tensors (max %d)", tensors, maxTensorsInRow)
	}
	return ""
}

// OnCapture is the capture topic's handler: it stores a batch's rows and
// labels once per (device, stream, batch) — in one synced transaction with
// the batch's name — and then acknowledges the batch to the device, also
// when it had stored it before (its ack was lost). Rows that fail a check
// are counted as dropped and left out; the rest of the batch is kept, so
// one bad row cannot block a device's queue. A batch that cannot be
// stored is not acknowledged: the device sends it again.
func (s *Service) OnCapture(topic string, payload []byte) {
	const kind = topics.KindCapture
	b := &efpb.CaptureBatch{}
	dev, ok := s.opts.Ingest.Decode(kind, topic, payload, b)
	if !ok {
		return
	}
	switch {
	case b.ProtocolVersion > efpb.ProtocolVersion:
		s.opts.Ingest.Drop(kind, ingest.ProtocolVersion, topic, fmt.Errorf("protocol_version %d", b.ProtocolVersion))
		return
	case !s.opts.Devices.Exists(dev):
		s.opts.Ingest.Drop(kind, ingest.UnknownDevice, topic, nil)
		return
	case b.Batch == 0 || len(b.Rows)+len(b.Labels) > maxBatchItems:
		s.opts.Ingest.Drop(kind, ingest.Invalid, topic, fmt.Errorf("batch %d with %d items (max %d)", b.Batch, len(b.Rows)+len(b.Labels), maxBatchItems))
		return
	}
	site := s.opts.Devices.Labels(dev)["site"]
	now := s.opts.Clock()
	seen := fmt.Sprintf("%s%s/%016x/%016x", prefixSeen, dev, b.Stream, b.Batch)
	var dup bool
	var stored int
	var bad []string // counted once the transaction is done: it may run again
	err := s.opts.KV.Update(func(tx *store.Tx) error {
		dup, stored, bad = false, 0, nil
		switch _, err := tx.Get(seen); {
		case err == nil:
			dup = true
			return nil
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		for _, r := range b.Rows {
			if why := checkRow(r.ModelName, r.ModelVersion, r.InferenceId, len(r.Inputs)+len(r.Outputs)); why != "" {
				bad = append(bad, "row: "+why)
				continue
			}
			n, err := s.storeRow(tx, dev, site, now, r)
			if err != nil {
				return err
			}
			stored += n
		}
		for _, l := range b.Labels {
			if why := checkRow(l.ModelName, "", l.InferenceId, 0); why != "" {
				bad = append(bad, "label: "+why)
				continue
			}
			if err := s.storeLabel(tx, dev, l); err != nil {
				return err
			}
			stored++
		}
		if err := tx.Set(seen, binary.BigEndian.AppendUint64(nil, uint64(now.UnixMilli()))); err != nil {
			return err
		}
		return tx.Set(prefixDropped+dev, binary.BigEndian.AppendUint64(nil, b.RowsDropped))
	}, true)
	if err != nil {
		s.opts.Ingest.Drop(kind, ingest.Store, topic, err)
		s.log.Error("capture batch not stored; the device will send it again", "device", dev, "batch", b.Batch, "err", err)
		return
	}
	for _, why := range bad {
		s.opts.Ingest.Drop(kind, ingest.Invalid, topic, errors.New(why))
	}
	if dup {
		s.batchesDup.Inc()
	} else {
		s.batchesSeen.Inc()
		s.rowsStored.Add(float64(stored))
	}
	ack, _ := proto.Marshal(&efpb.CaptureAck{ProtocolVersion: efpb.ProtocolVersion1, DeviceId: dev, Stream: b.Stream, Batches: []uint64{b.Batch}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.opts.Bus.Publish(ctx, s.opts.Scheme.CaptureAck(dev), ack, false); err != nil {
		// Stored: the device sends the batch again and gets the ack then.
		s.log.Warn("capture ack not published", "device", dev, "batch", b.Batch, "err", err)
	}
}

// storeRow keeps a row once (by model, device, inference id and row),
// joining a label that arrived before it; it returns 1 if it was new.
func (s *Service) storeRow(tx *store.Tx, dev, site string, now time.Time, r *efpb.CaptureRow) (int, error) {
	key := rowKey(prefixRow, r.ModelName, dev, r.InferenceId, r.Row)
	switch _, err := tx.Get(key); {
	case err == nil:
		return 0, nil
	case !errors.Is(err, store.ErrNotFound):
		return 0, err
	}
	lk := rowKey(prefixLabel, r.ModelName, dev, r.InferenceId, r.Row)
	var pl pendingLabel
	switch err := tx.GetJSON(lk, &pl); {
	case err == nil:
		r.Labelled, r.Label = true, pl.Label
		if err := tx.Delete(lk); err != nil {
			return 0, err
		}
	case !errors.Is(err, store.ErrNotFound):
		return 0, err
	}
	b, err := proto.Marshal(r)
	if err != nil {
		return 0, err
	}
	return 1, tx.SetJSON(key, storedRow{Device: dev, Site: site, Received: now.UnixMilli(), Proto: b})
}

// storeLabel joins a label to its row, or keeps it until the row arrives.
func (s *Service) storeLabel(tx *store.Tx, dev string, l *efpb.CaptureLabel) error {
	key := rowKey(prefixRow, l.ModelName, dev, l.InferenceId, l.Row)
	val, err := tx.Get(key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return tx.SetJSON(rowKey(prefixLabel, l.ModelName, dev, l.InferenceId, l.Row), pendingLabel{Label: l.Label, At: l.TimeUnixMs})
	case err != nil:
		return err
	}
	sr, err := decodeStored(val)
	if err != nil {
		return fmt.Errorf("stored row %s: %w", key, err)
	}
	sr.Row.Labelled, sr.Row.Label = true, l.Label
	if sr.Proto, err = proto.Marshal(sr.Row); err != nil {
		return err
	}
	return tx.SetJSON(key, sr)
}
