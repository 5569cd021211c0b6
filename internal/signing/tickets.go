package signing

import (
	"sync"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// maxMemoTickets bounds the member tickets a Verifier remembers: more
// than any site has members. Only accepted tickets are remembered, so
// refused ones cannot fill it; when it is full it starts again.
const maxMemoTickets = 4096

// ticketMemo is the set of member tickets a Verifier accepted under one
// trust state, each by the exact bytes that were checked: its payload type,
// payload and every signature. Another signature over the same payload is
// another key, checked in full. A memo of an older trust state is never
// consulted: get and put start afresh when the state changed.
type ticketMemo struct {
	mu   sync.Mutex
	st   *trustState
	m    map[string]*efpb.MemberTicket // treated as immutable
	hits uint64                        // for tests
}

// get returns the ticket accepted under st with this key, or nil.
func (t *ticketMemo) get(st *trustState, key string) *efpb.MemberTicket {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.st != st {
		return nil
	}
	m := t.m[key]
	if m != nil {
		t.hits++
	}
	return m
}

// put remembers m, accepted under st with this key.
func (t *ticketMemo) put(st *trustState, key string, m *efpb.MemberTicket) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.st != st || len(t.m) >= maxMemoTickets {
		t.st, t.m = st, make(map[string]*efpb.MemberTicket)
	}
	t.m[key] = m
}

// ticketKey is the signed content of env, length-prefixed field by field
// so no two different envelopes share a key.
func ticketKey(env *efpb.Envelope) string {
	n := len(env.GetPayloadType()) + len(env.GetPayload()) + 16
	for _, s := range env.GetSignatures() {
		n += len(s.GetKeyid()) + len(s.GetSig()) + 8
	}
	b := make([]byte, 0, n)
	b = protowire.AppendString(b, env.GetPayloadType())
	b = protowire.AppendBytes(b, env.GetPayload())
	for _, s := range env.GetSignatures() {
		b = protowire.AppendString(b, s.GetKeyid())
		b = protowire.AppendBytes(b, s.GetSig())
	}
	return string(b)
}
