package efpb_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// olderSchema is edgefleet.proto as a build before shadows read it: the
// messages without their fields numbered 50 and up (DesiredState.shadows,
// Telemetry.shadow), decoded with the protobuf runtime the agents use.
func olderSchema(t *testing.T) protoreflect.FileDescriptor {
	t.Helper()
	fdp := protodesc.ToFileDescriptorProto(efpb.File_proto_edgefleet_proto)
	for _, m := range fdp.MessageType {
		var kept []*descriptorpb.FieldDescriptorProto
		for _, f := range m.Field {
			if f.GetNumber() < 50 {
				kept = append(kept, f)
			}
		}
		m.Field = kept
	}
	fd, err := protodesc.NewFile(fdp, nil)
	require.NoError(t, err)
	return fd
}

// TestShadowIgnoredByOlderAgents pins proto/HISTORY.md (2026-12-06): an
// agent built before shadows decodes a desired state that carries a
// challenger as exactly the desired state without it (it keeps serving the
// champion and never sees the challenger), and a control plane built before
// them reads a telemetry message with shadow reports as one without.
func TestShadowIgnoredByOlderAgents(t *testing.T) {
	old := olderSchema(t)
	b := fixtureWith(t, func(d *efpb.DesiredState) bool { return len(d.GetShadows()) > 0 })
	wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
	require.NoError(t, err)

	msg := dynamicpb.NewMessage(old.Messages().ByName("DesiredState"))
	require.NoError(t, proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(wire, msg))
	// What the older agent sees, re-read as today's type, is the desired
	// state minus the shadow: same generation, same served model.
	again, err := proto.Marshal(msg)
	require.NoError(t, err)
	seen := &efpb.DesiredState{}
	require.NoError(t, proto.Unmarshal(again, seen))
	want := proto.CloneOf(b)
	want.Shadows = nil
	assert.True(t, proto.Equal(want, seen), "an older agent reads %v, want %v", seen, want)

	tel := fixtureWith(t, func(m *efpb.Telemetry) bool { return m.GetShadow() != nil && m.GetShadow()[0].GetReady() })
	wire, err = proto.Marshal(tel)
	require.NoError(t, err)
	tmsg := dynamicpb.NewMessage(old.Messages().ByName("Telemetry"))
	require.NoError(t, proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(wire, tmsg))
	assert.Equal(t, tel.GetDeviceId(), tmsg.Get(old.Messages().ByName("Telemetry").Fields().ByName("device_id")).String())
}

// fixtureWith returns the first fixture of type M that ok accepts.
func fixtureWith[M proto.Message](t *testing.T, ok func(M) bool) M {
	t.Helper()
	for _, fx := range fixtures {
		if m, is := fx.msg.(M); is && ok(m) {
			return m
		}
	}
	var zero M
	t.Fatalf("no %T fixture matches", zero)
	return zero
}
