package signing_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/internal/signing"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// TestMemberTicketRemembered: a site's gossip shows the same tickets over
// and over; a ticket accepted once is not checked against its signatures
// again while the trust bundle stays, and everything that can change with
// time or trust still can refuse it.
func TestMemberTicketRemembered(t *testing.T) {
	f := newFleet(t)
	ticket := &efpb.MemberTicket{ProtocolVersion: 1, DeviceId: "dev-1", Site: "s1", ExpiresUnix: testNow.Add(time.Hour).Unix()}
	env := signMsg(t, efpb.PayloadTypeMemberTicket, ticket, f.control)

	for i := range 3 {
		got, err := f.v.VerifyMemberTicket(env, testNow)
		require.NoError(t, err)
		assert.True(t, proto.Equal(ticket, got))
		assert.EqualValues(t, i, f.v.TicketMemoHits(), "check %d", i)
		got.Site = "changed by the caller"
	}
	got, err := f.v.VerifyMemberTicket(env, testNow)
	require.NoError(t, err)
	assert.Equal(t, "s1", got.Site, "a caller's change does not reach the memo")

	t.Run("expired", func(t *testing.T) {
		_, err := f.v.VerifyMemberTicket(env, testNow.Add(2*time.Hour))
		assert.ErrorIs(t, err, signing.ErrExpired)
	})
	t.Run("same payload, forged signature", func(t *testing.T) {
		forged := proto.Clone(env).(*efpb.Envelope)
		forged.Signatures[0].Sig[0] ^= 1
		_, err := f.v.VerifyMemberTicket(forged, testNow)
		assert.ErrorIs(t, err, signing.ErrThreshold)
	})
	t.Run("same signature, changed payload", func(t *testing.T) {
		changed := proto.Clone(env).(*efpb.Envelope)
		changed.Payload = append(changed.Payload, 0)
		_, err := f.v.VerifyMemberTicket(changed, testNow)
		assert.Error(t, err)
	})
	t.Run("trust bundle expired", func(t *testing.T) {
		_, err := f.v.VerifyMemberTicket(env, testNow.Add(31*24*time.Hour))
		assert.ErrorIs(t, err, signing.ErrExpired)
	})
	t.Run("control key rotated out", func(t *testing.T) {
		newControl := testKey(t, 9)
		_, err := f.v.UpdateTrustBundle(signBundle(t, bundle(2, f.root, f.release, newControl), f.root), testNow)
		require.NoError(t, err)
		hits := f.v.TicketMemoHits()
		_, err = f.v.VerifyMemberTicket(env, testNow)
		assert.ErrorIs(t, err, signing.ErrThreshold, "the ticket's signer is no longer trusted")
		assert.Equal(t, hits, f.v.TicketMemoHits(), "a new bundle forgets what the old one accepted")

		fresh := signMsg(t, efpb.PayloadTypeMemberTicket, ticket, newControl)
		_, err = f.v.VerifyMemberTicket(fresh, testNow)
		require.NoError(t, err)
		_, err = f.v.VerifyMemberTicket(fresh, testNow)
		require.NoError(t, err)
		assert.Equal(t, hits+1, f.v.TicketMemoHits())
	})
}

// BenchmarkVerifyMemberTicket: a ticket shown again (answered by the memo)
// against tickets checked in full (more distinct tickets than the memo
// keeps, cycled, so none is remembered when it comes round again: the
// benchmark fails if one was).
func BenchmarkVerifyMemberTicket(b *testing.B) {
	f := newFleet(b)
	ticket := &efpb.MemberTicket{ProtocolVersion: 1, DeviceId: "dev-1", Site: "s1", ExpiresUnix: testNow.Add(time.Hour).Unix()}
	b.Run("again", func(b *testing.B) {
		env := signMsg(b, efpb.PayloadTypeMemberTicket, ticket, f.control)
		for b.Loop() {
			if _, err := f.v.VerifyMemberTicket(env, testNow); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Made once: the benchmark function may run more than once, and the
	// same tickets again would be remembered from the run before.
	envs := make([]*efpb.Envelope, 5003)
	for i := range envs {
		tk := proto.Clone(ticket).(*efpb.MemberTicket)
		tk.ExpiresUnix += int64(i) + 1 // none is the ticket of "again"
		envs[i] = signMsg(b, efpb.PayloadTypeMemberTicket, tk, f.control)
	}
	next := 0
	b.Run("checked", func(b *testing.B) {
		hits := f.v.TicketMemoHits()
		n := 0
		for b.Loop() {
			if _, err := f.v.VerifyMemberTicket(envs[next%len(envs)], testNow); err != nil {
				b.Fatal(err)
			}
			next++
			n++
		}
		if h := f.v.TicketMemoHits() - hits; h > 0 {
			b.Fatalf("%d of %d checks were answered by the memo", h, n)
		}
	})
}
