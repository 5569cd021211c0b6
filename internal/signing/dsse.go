package signing

import (
	"crypto/ed25519"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// MaxSignatures bounds the signatures an envelope may carry; more is refused
// as malformed before any of them is checked, so a hostile envelope cannot
// make a device verify signatures without end.
const MaxSignatures = 32

// PAE is the DSSE v1 pre-authentication encoding that signatures cover:
//
//	"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
//
// where LEN is the byte length in ASCII decimal without leading zeros.
func PAE(payloadType string, payload []byte) []byte {
	b := make([]byte, 0, len("DSSEv1")+len(payloadType)+len(payload)+24)
	b = append(b, "DSSEv1 "...)
	b = strconv.AppendInt(b, int64(len(payloadType)), 10)
	b = append(b, ' ')
	b = append(b, payloadType...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(payload)), 10)
	b = append(b, ' ')
	b = append(b, payload...)
	return b
}

// Sign wraps payload in a DSSE envelope signed by every key, in order.
func Sign(payloadType string, payload []byte, keys ...*KeyPair) (*efpb.Envelope, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("sign %s: no signing keys given", payloadType)
	}
	if len(keys) > MaxSignatures {
		return nil, fmt.Errorf("sign %s: %d keys given, at most %d signatures fit an envelope", payloadType, len(keys), MaxSignatures)
	}
	if payloadType == "" {
		return nil, fmt.Errorf("sign: %w: empty payload type", ErrMalformed)
	}
	pae := PAE(payloadType, payload)
	env := &efpb.Envelope{
		PayloadType: payloadType,
		Payload:     append([]byte(nil), payload...),
		Signatures:  make([]*efpb.Signature, 0, len(keys)),
	}
	for i, k := range keys {
		if k == nil || len(k.Private) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("sign %s: key %d is not an ed25519 private key", payloadType, i)
		}
		env.Signatures = append(env.Signatures, &efpb.Signature{
			Keyid: KeyID(k.Private.Public().(ed25519.PublicKey)),
			Sig:   ed25519.Sign(k.Private, pae),
		})
	}
	return env, nil
}

// SignMessage marshals m deterministically and signs it with Sign.
func SignMessage(payloadType string, m proto.Message, keys ...*KeyPair) (*efpb.Envelope, error) {
	payload, err := marshal(m)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", payloadType, err)
	}
	return Sign(payloadType, payload, keys...)
}

func marshal(m proto.Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}
