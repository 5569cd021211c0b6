package efpb_test

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/edgefleet/edgefleet/proto/efpb"
)

// fixtures is the one table of canonical encodings: a populated value of
// every wire message and its exact bytes under deterministic marshalling.
// It drives TestFixturesEncode, TestFixturesDecode and the fuzz seeds.
//
// The hex was produced once by marshalling the values and pasted here. If a
// change makes this table fail, the encoding changed: read proto/HISTORY.md.
// Never edit a hex string to make a test pass; a new field gets a new
// fixture entry (TestFixturesCoverEveryField insists on it).
var fixtures = []struct {
	name string
	msg  proto.Message
	hex  string
}{
	{
		name: "Envelope",
		msg: &efpb.Envelope{
			PayloadType: efpb.PayloadTypeManifest,
			Payload:     []byte{0x08, 0x01, 0x12, 0x05, 'f', 'r', 'a', 'u', 'd'},
			Signatures: []*efpb.Signature{
				{Keyid: "21fe31df", Sig: []byte{0xde, 0xad, 0xbe, 0xef}},
				{Keyid: "0a0b0c0d", Sig: []byte{0x01}},
			},
		},
		hex: "0a2b6170706c69636174696f6e2f766e642e65646765666c6565742e6d616e69" +
			"666573742b70726f746f62756612090801120566726175641a100a0832316665" +
			"333164661204deadbeef1a0d0a083061306230633064120101",
	},
	{
		name: "TrustBundle",
		msg: &efpb.TrustBundle{
			ProtocolVersion: 1,
			Version:         3,
			CreatedUnix:     1795608000,
			ExpiresUnix:     1827144000,
			Keys: []*efpb.PublicKey{
				{Keyid: "aa01", Algorithm: "ed25519", PublicKey: []byte{1, 2, 3, 4}},
				{Keyid: "bb02", Algorithm: "ed25519", PublicKey: []byte{5, 6, 7, 8}},
			},
			Roles: []*efpb.RoleKeys{
				{Role: efpb.Role_ROLE_ROOT, Keyids: []string{"aa01"}, Threshold: 1},
				{Role: efpb.Role_ROLE_RELEASE, Keyids: []string{"aa01", "bb02"}, Threshold: 2},
				{Role: efpb.Role_ROLE_CONTROL, Keyids: []string{"bb02"}},
			},
		},
		hex: "0801100318c09b9bd80620c082a0e7062a150a04616130311207656432353531" +
			"391a04010203042a150a04626230321207656432353531391a0405060708320a" +
			"0801120461613031180132100802120461613031120462623032180232080803" +
			"120462623032",
	},
	{
		// The trust topic's message (added 2026-12-06): fields 1-3 are the
		// newest bundle's envelope, previous the bundles before it.
		name: "TrustChain",
		msg: &efpb.TrustChain{
			PayloadType: efpb.PayloadTypeTrustBundle,
			Payload:     []byte{0x10, 0x03},
			Signatures:  []*efpb.Signature{{Keyid: "bb02", Sig: []byte{0x03}}},
			Previous: []*efpb.Envelope{
				{PayloadType: efpb.PayloadTypeTrustBundle, Payload: []byte{0x10, 0x01}, Signatures: []*efpb.Signature{{Keyid: "aa01", Sig: []byte{0x01}}}},
				{PayloadType: efpb.PayloadTypeTrustBundle, Payload: []byte{0x10, 0x02}, Signatures: []*efpb.Signature{
					{Keyid: "aa01", Sig: []byte{0x02}}, {Keyid: "bb02", Sig: []byte{0x02}},
				}},
			},
		},
		hex: "0a2e6170706c69636174696f6e2f766e642e65646765666c6565742e74727573" +
			"7462756e646c652b70726f746f627566120210031a090a046262303212010322" +
			"3f0a2e6170706c69636174696f6e2f766e642e65646765666c6565742e747275" +
			"737462756e646c652b70726f746f627566120210011a090a0461613031120101" +
			"224a0a2e6170706c69636174696f6e2f766e642e65646765666c6565742e7472" +
			"75737462756e646c652b70726f746f627566120210021a090a04616130311201" +
			"021a090a0462623032120102",
	},
	{
		name: "Manifest",
		msg: &efpb.Manifest{
			ProtocolVersion: 1,
			Name:            "fraud",
			Version:         "1.2.0",
			Sha256:          []byte{0xab, 0xcd},
			Size:            70000,
			ChunkSize:       65536,
			ChunkSha256:     [][]byte{{0x01, 0x02}, {0x03, 0x04}},
			Inputs:          []*efpb.TensorSpec{{Name: "features", Datatype: "FP32", Shape: []int64{-1, 4}}},
			Outputs:         []*efpb.TensorSpec{{Name: "probability", Datatype: "FP32", Shape: []int64{-1, 1}}},
			Reference: []*efpb.FeatureStats{{
				Name: "amount", Mean: 52.5, Stddev: 10.25, Min: -5, Max: 1000,
				BinEdges: []float64{10, 100}, BinFractions: []float64{0.25, 0.5, 0.25},
			}},
			TestVectors: []*efpb.TestVector{{
				Inputs:   []*efpb.Tensor{{Name: "features", Shape: []int64{1, 4}, Data: []float32{1, -2, 0.5, 4}}},
				Expected: []*efpb.Tensor{{Name: "probability", Shape: []int64{1, 1}, Data: []float32{0.75}}},
			}},
			Tolerance: 0.001,
			Training: &efpb.TrainingInfo{
				Algorithm:     "logreg",
				Seed:          42,
				Params:        []*efpb.KeyValue{{Key: "l2", Value: "0.01"}},
				DatasetSha256: "9f86d081",
				DatasetRows:   10000,
				Metrics:       []*efpb.Metric{{Name: "accuracy", Value: 0.97}},
				TrainedUnix:   1795600000,
			},
			CreatedUnix: 1795608000,
			ExpiresUnix: 1827144000,
			Runtime:     "onnxruntime",
			Opset:       17,
			Hardware:    []string{"rpi4", "x86_64"},
			Description: "fraud detector",
		},
		hex: "0801120566726175641a05312e322e302202abcd28f0a204308080043a020102" +
			"3a020304421d0a0866656174757265731204465033321a0bffffffffffffffff" +
			"ff01044a200a0b70726f626162696c6974791204465033321a0bffffffffffff" +
			"ffffff010152580a06616d6f756e74110000000000404a401900000000008024" +
			"402100000000000014c0290000000000408f4032100000000000002440000000" +
			"00000059403a18000000000000d03f000000000000e03f000000000000d03f5a" +
			"3b0a200a086665617475726573120201041a100000803f000000c00000003f00" +
			"00804012170a0b70726f626162696c697479120201011a040000403f656f1283" +
			"3a6a3e0a066c6f67726567102a1a0a0a026c321204302e303122083966383664" +
			"30383128904e32130a086163637572616379110ad7a3703d0aef3f3880dd9ad8" +
			"0670c09b9bd80678c082a0e70682010b6f6e6e7872756e74696d658801119201" +
			"04727069349201067838365f36349a010e6672617564206465746563746f72",
	},
	{
		// A second Manifest: the version 2 fields (added 2026-12-06): typed
		// tensors in the schema and test vectors, a class-map output with its
		// classes, a relative tolerance, label and score outputs, reference
		// statistics tied to an input.
		name: "Manifest",
		msg: &efpb.Manifest{
			ProtocolVersion: 2,
			Name:            "churn",
			Version:         "2.0.0",
			Sha256:          []byte{0xab, 0xcd},
			Size:            3000,
			ChunkSize:       65536,
			ChunkSha256:     [][]byte{{0x05, 0x06}},
			Inputs: []*efpb.TensorSpec{
				{Name: "amount", Datatype: "FP64", Shape: []int64{-1, 1}},
				{Name: "country", Datatype: "BYTES", Shape: []int64{-1}},
			},
			Outputs: []*efpb.TensorSpec{
				{Name: "label", Datatype: "INT64", Shape: []int64{-1}},
				{Name: "probabilities", Datatype: "FP32", Shape: []int64{-1, 2}, Kind: efpb.TensorKind_TENSOR_KIND_CLASS_MAP,
					Classes: &efpb.Tensor{Name: "classes", Datatype: "INT64", Shape: []int64{2}, IntData: []int64{0, 1}}},
			},
			Reference: []*efpb.FeatureStats{{Name: "amount", Input: "amount", Mean: 3, Stddev: 1, Min: 0, Max: 9,
				BinEdges: []float64{3}, BinFractions: []float64{0.5, 0.5}}},
			TestVectors: []*efpb.TestVector{{
				Inputs: []*efpb.Tensor{
					{Name: "amount", Datatype: "FP64", Shape: []int64{2, 1}, DoubleData: []float64{1.5, -2}},
					{Name: "country", Datatype: "BYTES", Shape: []int64{2}, BytesData: [][]byte{[]byte("de"), []byte("日本")}},
				},
				Expected: []*efpb.Tensor{
					{Name: "label", Datatype: "INT64", Shape: []int64{2}, IntData: []int64{1, -1}},
					{Name: "mask", Datatype: "BOOL", Shape: []int64{2}, BoolData: []bool{true, false}},
					{Name: "counts", Datatype: "UINT16", Shape: []int64{2}, UintData: []uint64{7, 65535}},
					{Name: "half", Datatype: "FP16", Shape: []int64{1}, Data: []float32{0.5}},
				},
			}},
			Tolerance:         0.0001,
			RelativeTolerance: 0.001,
			LabelOutput:       "label",
			ScoreOutput:       "probabilities",
			CreatedUnix:       1795608000,
			ExpiresUnix:       1827144000,
			Runtime:           "onnxruntime",
			Opset:             15,
		},
		hex: "08021205636875726e1a05322e302e302202abcd28b817308080043a02050642" +
			"1b0a06616d6f756e741204465036341a0bffffffffffffffffff0101421c0a07" +
			"636f756e747279120542595445531a0affffffffffffffffff014a1a0a056c61" +
			"62656c1205494e5436341a0affffffffffffffffff014a3d0a0d70726f626162" +
			"696c69746965731204465033321a0bffffffffffffffffff010220012a170a07" +
			"636c61737365731201022205494e5436342a02000252470a06616d6f756e7411" +
			"000000000000084019000000000000f03f290000000000002240320800000000" +
			"000008403a10000000000000e03f000000000000e03f4206616d6f756e745aa5" +
			"010a240a06616d6f756e74120202012204465036343a10000000000000f83f00" +
			"000000000000c00a1f0a07636f756e747279120102220542595445534a026465" +
			"4a06e697a5e69cac12150a056c6162656c1201022205494e5436342a02020112" +
			"130a046d61736b1201022204424f4f4c4202010012190a06636f756e74731201" +
			"02220655494e543136320407ffff0312150a0468616c661201011a040000003f" +
			"2204465031366517b7d13870c09b9bd80678c082a0e70682010b6f6e6e787275" +
			"6e74696d6588010fa5016f12833aaa01056c6162656cb2010d70726f62616269" +
			"6c6974696573",
	},
	{
		name: "DesiredState",
		msg: &efpb.DesiredState{
			ProtocolVersion: 1,
			DeviceId:        "dev-001",
			Generation:      12,
			Models:          []*efpb.ModelAssignment{{Name: "fraud", Version: "1.1.0", Sha256: []byte{0xab, 0xcd}}},
			IssuedUnix:      1795608000,
			ExpiresUnix:     1795694400,
			RolloutId:       "ro-7",
		},
		hex: "080112076465762d303031180c22120a0566726175641205312e312e301a02ab" +
			"cd28c09b9bd80630c0bea0d8063a04726f2d37",
	},
	{
		// Field data capture (issue 13): a desired state whose assignment
		// carries a capture policy.
		name: "DesiredState",
		msg: &efpb.DesiredState{ProtocolVersion: 1, DeviceId: "dev-001", Generation: 13,
			Models: []*efpb.ModelAssignment{{Name: "fraud", Version: "1.1.0", Sha256: []byte{0xab, 0xcd},
				Capture: &efpb.CapturePolicy{SampleRate: 0.25, MaxRowsPerHour: 600, MaxBytesPerHour: 1 << 20,
					DropInputs: []string{"card"}, HashInputs: []string{"merchant"}, HashSalt: []byte{0x5a, 0x17}, LabelledOnly: true}}}},
		hex: "080112076465762d303031180d223b0a0566726175641205312e312e301a02ab" +
			"cdc2022609000000000000d03f10d804188080402204636172642a086d657263" +
			"68616e7432025a173801",
	},
	{
		// The version's manifest carried in the assignment (added
		// 2026-12-07).
		name: "DesiredState",
		msg: &efpb.DesiredState{ProtocolVersion: 1, DeviceId: "dev-001", Generation: 14,
			Models: []*efpb.ModelAssignment{{Name: "fraud", Version: "1.2.0", Sha256: []byte{0xab, 0xcd}, Manifest: []byte{0x0a, 0x01, 0x02}}}},
		hex: "080112076465762d303031180e22170a0566726175641205312e322e301a02ab" +
			"cd22030a0102",
	},
	{
		name: "CaptureBatch",
		msg: &efpb.CaptureBatch{ProtocolVersion: 1, DeviceId: "dev-001", Stream: 0x1122334455667788, Batch: 42,
			Rows: []*efpb.CaptureRow{{ModelName: "fraud", ModelVersion: "1.1.0", InferenceId: "inf-9", Row: 2, TimeUnixMs: 1795608000123,
				Inputs:   []*efpb.Tensor{{Name: "x", Shape: []int64{1, 2}, Data: []float32{0.5, -1}}},
				Outputs:  []*efpb.Tensor{{Name: "p", Shape: []int64{1, 1}, Data: []float32{0.75}}},
				Labelled: true, Label: 1}},
			Labels:      []*efpb.CaptureLabel{{ModelName: "fraud", InferenceId: "inf-8", Row: 1, Label: -1, TimeUnixMs: 1795608000456}},
			RowsDropped: 3, TimeUnixMs: 1795608001000},
		hex: "080112076465762d303031198877665544332211202a2a440a05667261756412" +
			"05312e312e301a05696e662d39200228fbecce94a13432110a0178120201021a" +
			"080000003f000080bf3a0d0a0170120201011a040000403f4001480232190a05" +
			"66726175641205696e662d381801200128c8efce94a134380340e8f3ce94a134",
	},
	{
		name: "CaptureAck",
		msg:  &efpb.CaptureAck{ProtocolVersion: 1, DeviceId: "dev-001", Stream: 0x1122334455667788, Batches: []uint64{41, 42}},
		hex:  "080112076465762d3030311988776655443322112202292a",
	},
	{
		// A second DesiredState: a challenger in shadow (added 2026-12-06).
		name: "DesiredState",
		msg: &efpb.DesiredState{
			ProtocolVersion: 1,
			DeviceId:        "dev-001",
			Generation:      13,
			Models:          []*efpb.ModelAssignment{{Name: "fraud", Version: "1.1.0", Sha256: []byte{0xab, 0xcd}}},
			IssuedUnix:      1795608000,
			ExpiresUnix:     1795694400,
			RolloutId:       "ro-8",
			Shadows:         []*efpb.ShadowAssignment{{Name: "fraud", Version: "1.2.0", Sha256: []byte{0xef, 0x01}}},
		},
		hex: "080112076465762d303031180d22120a0566726175641205312e312e301a02ab" +
			"cd28c09b9bd80630c0bea0d8063a04726f2d389203120a056672617564120531" +
			"2e322e301a02ef01",
	},
	{
		name: "Chunk",
		msg:  &efpb.Chunk{Name: "fraud", Version: "1.2.0", Index: 300, Data: []byte{0x00, 0xff, 0x10}},
		hex:  "0a0566726175641205312e322e3018ac02220300ff10",
	},
	{
		name: "FetchRequest",
		msg:  &efpb.FetchRequest{DeviceId: "dev-001", Name: "fraud", Version: "1.2.0", Missing: []uint32{0, 1, 200}},
		hex:  "0a076465762d303031120566726175641a05312e322e3022040001c801",
	},
	{
		// A second FetchRequest: chunks on the device's own topic (added
		// 2026-12-06).
		name: "FetchRequest",
		msg:  &efpb.FetchRequest{DeviceId: "dev-004", Name: "fraud", Version: "1.2.0", Missing: []uint32{7}, Direct: true},
		hex:  "0a076465762d303034120566726175641a05312e322e302201072801",
	},
	{
		// A third: the first request since the device subscribed (added
		// 2026-12-07).
		name: "FetchRequest",
		msg:  &efpb.FetchRequest{DeviceId: "dev-005", Name: "fraud", Version: "1.2.0", Missing: []uint32{0, 1}, Fresh: true},
		hex:  "0a076465762d303035120566726175641a05312e322e30220200013001",
	},
	{
		// A fourth: the device receives on its own chunk topic too, where
		// a late asker is answered (added 2026-12-07).
		name: "FetchRequest",
		msg:  &efpb.FetchRequest{DeviceId: "dev-006", Name: "fraud", Version: "1.2.0", Missing: []uint32{3}, Fresh: true, OwnTopic: true},
		hex:  "0a076465762d303036120566726175641a05312e322e3022010330013801",
	},
	{
		// A fifth: the device says which chunk it received last, so the
		// control plane knows what is still on its way (added 2026-12-07).
		name: "FetchRequest",
		msg:  &efpb.FetchRequest{DeviceId: "dev-007", Name: "fraud", Version: "1.2.0", Missing: []uint32{5, 6}, OwnTopic: true, LastReceived: 5},
		hex:  "0a076465762d303037120566726175641a05312e322e302202050638014005",
	},
	{
		name: "StatusEvent",
		msg: &efpb.StatusEvent{
			ProtocolVersion: 1,
			DeviceId:        "dev-001",
			Seq:             5,
			TimeUnixMs:      1795608000123,
			Generation:      12,
			ModelName:       "fraud",
			ModelVersion:    "1.2.0",
			State:           efpb.ModelState_MODEL_STATE_FAILED,
			Reason:          "test vector 0: output differs by 0.5",
			ChunksHave:      2,
			ChunksTotal:     2,
			ActiveVersion:   "1.1.0",
		},
		hex: "080112076465762d303031180520fbecce94a134280c320566726175643a0531" +
			"2e322e3040064a247465737420766563746f7220303a206f7574707574206469" +
			"666665727320627920302e35500258026205312e312e30",
	},
	{
		// A second StatusEvent: a refusal as it happens (added 2026-12-06).
		name: "StatusEvent",
		msg: &efpb.StatusEvent{
			ProtocolVersion: 1,
			DeviceId:        "dev-001",
			Seq:             6,
			TimeUnixMs:      1795608000456,
			Generation:      12,
			State:           efpb.ModelState_MODEL_STATE_FAILED,
			Reason:          "trust bundle refused: version 3: link version 2 is missing",
			Refused:         efpb.Refusal_REFUSAL_TRUST_BUNDLE,
		},
		hex: "080112076465762d303031180620c8efce94a134280c40064a3a747275737420" +
			"62756e646c6520726566757365643a2076657273696f6e20333a206c696e6b20" +
			"76657273696f6e2032206973206d697373696e676801",
	},
	{
		name: "Telemetry",
		msg: &efpb.Telemetry{
			ProtocolVersion: 1,
			DeviceId:        "dev-001",
			Seq:             99,
			TimeUnixMs:      1795608000123,
			Generation:      12,
			Models: []*efpb.ActiveModel{{
				Name: "fraud", Version: "1.1.0", State: efpb.ModelState_MODEL_STATE_ACTIVE,
				Inferences: 1000, Errors: 2, Rejects: 3,
			}},
			AgentVersion:    "0.1.0",
			UptimeSeconds:   3600,
			RssBytes:        25 << 20,
			DroppedPayloads: 1,
		},
		hex: "080112076465762d303031186320fbecce94a134280c32170a05667261756412" +
			"05312e312e30180520e807280230033a05302e312e3040901c488080c00c5001",
	},
	{
		// A second Telemetry: the monitoring fields (added 2026-11-25).
		name: "Telemetry",
		msg: &efpb.Telemetry{
			ProtocolVersion: 1,
			DeviceId:        "dev-002",
			Seq:             100,
			TimeUnixMs:      1795608030123,
			Monitoring: []*efpb.MonitorReport{{
				ModelName: "fraud", ModelVersion: "1.0.0",
				WindowStartUnixMs: 1795608000123, WindowEndUnixMs: 1795608030123,
				Rows:             40,
				Features:         []*efpb.FeatureSketch{{Name: "amount", Counts: []uint64{10, 20, 10}, Nan: 1}},
				PredictionCounts: []uint64{30, 10},
				LatencyEdgesUs:   []float64{100, 1000},
				LatencyCounts:    []uint64{5, 30, 5},
				Labelled:         20, Correct: 18, Binary: true,
				Tp: 2, Fp: 1, Fn: 1, Tn: 16,
				CalibrationCounts: []uint64{17, 3}, CalibrationPositives: []uint64{1, 2},
				UnknownLabels: 4, DuplicateLabels: 5, Errors: 6,
			}},
			ReportsDropped: 7,
		},
		hex: "080112076465762d303032186420abd7d094a1345a6c0a056672617564120531" +
			"2e302e3018fbecce94a13420abd7d094a1342828320f0a06616d6f756e741203" +
			"0a140a18013a021e0a421000000000000059400000000000408f404a03051e05" +
			"5014581260016802700178018001108a010211039201020102980104a00105a8" +
			"01066007",
	},
	{
		// A third Telemetry: the trust bundle version (added 2026-12-06).
		name: "Telemetry",
		msg:  &efpb.Telemetry{ProtocolVersion: 1, DeviceId: "dev-003", Seq: 101, TimeUnixMs: 1795608060123, TrustVersion: 7},
		hex:  "080112076465762d303033186520dbc1d294a1346807",
	},
	{
		// A fourth Telemetry: a challenger scored in shadow (added 2026-12-06).
		name: "Telemetry",
		msg: &efpb.Telemetry{ProtocolVersion: 1, DeviceId: "dev-004", Seq: 102, TimeUnixMs: 1795608090123,
			Shadow: []*efpb.ShadowReport{{ModelName: "fraud", ChampionVersion: "1.1.0", ChallengerVersion: "1.2.0",
				WindowStartUnixMs: 1795608060123, WindowEndUnixMs: 1795608090123, Ready: true,
				Rows: 40, Agree: 36, ScoreAbsDiff: 2.5, Skipped: 3, Errors: 1, Labelled: 20, ChampionCorrect: 15, ChallengerCorrect: 18}}},
		hex: "080112076465762d3030341866208bacd494a13492033c0a0566726175641205" +
			"312e312e301a05312e322e3020dbc1d294a134288bacd494a134300140284824" +
			"510000000000000440580360016814700f7812",
	},
	{
		// A seventh Telemetry: the challenger's inference time (added
		// 2026-12-06).
		name: "Telemetry",
		msg: &efpb.Telemetry{ProtocolVersion: 1, DeviceId: "dev-006", Seq: 104, TimeUnixMs: 1795608120123,
			Shadow: []*efpb.ShadowReport{{ModelName: "fraud", ChampionVersion: "1.1.0", ChallengerVersion: "1.2.0", Ready: true, Rows: 8, Agree: 8,
				LatencyEdgesUs: []float64{100, 1000}, ChallengerLatencyCounts: []uint64{5, 2, 1}}}},
		hex: "080112076465762d303036186820bb96d694a1349203340a0566726175641205" +
			"312e312e301a05312e322e303001400848088201100000000000005940000000" +
			"0000408f408a0103050201",
	},
	{
		// A fifth Telemetry: a challenger that was refused.
		name: "Telemetry",
		msg: &efpb.Telemetry{ProtocolVersion: 1, DeviceId: "dev-005", Seq: 103, TimeUnixMs: 1795608090456,
			Shadow: []*efpb.ShadowReport{{ModelName: "fraud", ChampionVersion: "1.1.0", ChallengerVersion: "1.3.0",
				Failure: "test vectors: vector 0: output differs by 0.5"}}},
		hex: "080112076465762d303035186720d8aed494a1349203440a0566726175641205" +
			"312e312e301a05312e332e303a2d7465737420766563746f72733a2076656374" +
			"6f7220303a206f7574707574206469666665727320627920302e35",
	},
	{
		// A sixth Telemetry: site sharing (added 2026-12-06).
		name: "Telemetry",
		msg: &efpb.Telemetry{ProtocolVersion: 1, DeviceId: "dev-004", Seq: 102, TimeUnixMs: 1795608090123,
			Peers: &efpb.PeerStats{Addr: "10.0.0.4:7946", SiteVersion: 3, Members: 49, ServedChunks: 40, ServedBytes: 2621440,
				Foreign: 1, Unknown: 2, Replayed: 3, BadChunks: 4, Blocked: []string{"dev-009"}},
			Transfers: []*efpb.TransferStats{{ModelName: "fraud", ModelVersion: "1.2.0", BrokerBytes: 65536, PeerBytes: 10420224}}},
		hex: "080112076465762d3030341866208bacd494a134722b0a0d31302e302e302e34" +
			"3a37393436100318312828308080a00138014002480350045a076465762d3030" +
			"397a170a0566726175641205312e322e3018808004208080fc04",
	},
	{
		// The site document (added 2026-12-06).
		name: "SitePeers",
		msg: &efpb.SitePeers{ProtocolVersion: 1, DeviceId: "dev-004", Site: "store-12", Version: 5, IssuedUnix: 1795608000, ExpiresUnix: 1798200000,
			Peers: []string{"10.0.0.3:7946", "10.0.0.5:7946"}, GossipKeys: [][]byte{{0x01, 0x02}, {0x03}},
			Ticket: &efpb.Envelope{PayloadType: efpb.PayloadTypeMemberTicket, Payload: []byte{0x08, 0x01}, Signatures: []*efpb.Signature{{Keyid: "bb02", Sig: []byte{0x05}}}}},
		hex: "080112076465762d3030341a0873746f72652d3132200528c09b9bd80630c0b5" +
			"b9d9063a0d31302e302e302e333a373934363a0d31302e302e302e353a373934" +
			"36420201024201034a3a0a296170706c69636174696f6e2f766e642e65646765" +
			"666c6565742e6d656d6265722b70726f746f627566120208011a090a04626230" +
			"32120105",
	},
	{
		name: "MemberTicket",
		msg:  &efpb.MemberTicket{ProtocolVersion: 1, DeviceId: "dev-004", Site: "store-12", ExpiresUnix: 1798200000},
		hex:  "080112076465762d3030341a0873746f72652d313220c0b5b9d906",
	},
	{
		name: "Presence",
		msg:  &efpb.Presence{DeviceId: "dev-001", Online: true, TimeUnixMs: 1795608000123, AgentVersion: "0.1.0"},
		hex:  "0a076465762d303031100118fbecce94a1342205302e312e30",
	},
	{
		// The control plane's end-to-end acknowledgement (added
		// 2026-12-06): reports 1-40, 42 and 300-301 are persisted; 41 is
		// a gap the agent resends.
		name: "Ack",
		msg: &efpb.Ack{ProtocolVersion: 1, DeviceId: "dev-001", TimeUnixMs: 1795608000123,
			Ranges: []*efpb.SeqRange{{First: 1, Last: 40}, {First: 42, Last: 42}, {First: 300, Last: 301}}},
		hex: "080112076465762d3030311a04080110281a04082a102a1a0608ac0210ad0220fbecce94a134",
	},
	{
		// A retrained version's lineage (issue 13, added 2026-12-06):
		// TrainingInfo fields 40-46 and DatasetRef.
		name: "TrainingInfo",
		msg: &efpb.TrainingInfo{
			Algorithm:     "logistic-regression/newton-l2",
			DatasetSha256: "9f86d081",
			DatasetRows:   400,
			ParentVersion: "v1",
			Datasets:      []*efpb.DatasetRef{{Model: "fraud", Version: 3, Sha256: "9f86d081", Rows: 400}},
			Trainer:       "builtin:fraud",
			TrainerParams: []*efpb.KeyValue{{Key: "l2", Value: "1"}},
			Evaluation:    []*efpb.Metric{{Name: "candidate_accuracy", Value: 0.9}, {Name: "parent_accuracy", Value: 0.75}},
			Trigger:       "alert:low_accuracy site=b",
			RetrainJob:    "j-0a0b0c",
		},
		hex: "0a1d6c6f6769737469632d72656772657373696f6e2f6e6577746f6e2d6c3222" +
			"083966383664303831289003c202027631ca02160a05667261756410031a0839" +
			"66383664303831209003d2020d6275696c74696e3a6672617564da02070a026c" +
			"32120131e2021d0a1263616e6469646174655f616363757261637911cdcccccc" +
			"ccccec3fe2021a0a0f706172656e745f616363757261637911000000000000e8" +
			"3fea0219616c6572743a6c6f775f616363757261637920736974653d62f20208" +
			"6a2d306130623063",
	},
}

// fixtureBytes decodes a fixture's hex.
func fixtureBytes(tb testing.TB, name, h string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(h)
	require.NoError(tb, err, "fixture %s: bad hex", name)
	return b
}

// fixtureOf returns the bytes of the fixture for message type name.
func fixtureOf(tb testing.TB, name string) []byte {
	tb.Helper()
	for _, fx := range fixtures {
		if fx.name == name {
			return fixtureBytes(tb, fx.name, fx.hex)
		}
	}
	tb.Fatalf("no fixture named %s", name)
	return nil
}

func TestFixturesEncode(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(fx.msg)
			require.NoError(t, err)
			assert.Equal(t, fx.hex, hex.EncodeToString(got), "Marshal(%s) changed: the wire encoding is not what protocol version %d fixed", fx.name, efpb.ProtocolVersion)
		})
	}
}

func TestFixturesDecode(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			got := fx.msg.ProtoReflect().New().Interface()
			require.NoError(t, proto.Unmarshal(fixtureBytes(t, fx.name, fx.hex), got))
			assert.True(t, proto.Equal(fx.msg, got), "Unmarshal(%s) = %v, want %v", fx.name, got, fx.msg)
			assert.Empty(t, got.ProtoReflect().GetUnknown(), "every fixture byte must decode into a known field")
		})
	}
}

// TestFixturesNamedForTheirType keeps the table honest: one entry per wire
// message type, named for it.
func TestFixturesNamedForTheirType(t *testing.T) {
	want := []string{"Envelope", "TrustBundle", "TrustChain", "Manifest", "Manifest", "DesiredState", "DesiredState", "Chunk", "FetchRequest", "FetchRequest",
		"StatusEvent", "StatusEvent", "Telemetry", "Telemetry", "Telemetry", "Telemetry", "Telemetry", "Telemetry", "Presence", "Ack",
		// Site sharing (issue 12).
		"SitePeers", "MemberTicket",
		// Field data capture (issue 13).
		"DesiredState", "CaptureBatch", "CaptureAck",
		// Retraining lineage (issue 13), part of a Manifest.
		"TrainingInfo",
		// The challenger's inference time in a shadow report (issue 13).
		"Telemetry",
		// The first fetch request since the device subscribed, and a
		// manifest carried in the desired state.
		"FetchRequest", "DesiredState",
		// A fetch request from a device that receives on its own topic,
		// and one that says which chunk it received last.
		"FetchRequest", "FetchRequest"}
	var got []string
	for _, fx := range fixtures {
		assert.Equal(t, fx.name, string(fx.msg.ProtoReflect().Descriptor().Name()))
		got = append(got, fx.name)
	}
	assert.ElementsMatch(t, want, got)
}

// TestFixturesCoverEveryField fails when a field is added to the .proto but
// no fixture sets it: every field of every message in edgefleet.proto must
// be populated somewhere in the table, so its encoding is pinned.
func TestFixturesCoverEveryField(t *testing.T) {
	covered := make(map[protoreflect.FullName]bool)
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			covered[fd.FullName()] = true
			if fd.Kind() != protoreflect.MessageKind {
				return true
			}
			if fd.IsList() {
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
				return true
			}
			walk(v.Message())
			return true
		})
	}
	for _, fx := range fixtures {
		walk(fx.msg.ProtoReflect())
	}
	msgs := efpb.File_proto_edgefleet_proto.Messages()
	require.Positive(t, msgs.Len())
	for i := range msgs.Len() {
		fields := msgs.Get(i).Fields()
		for j := range fields.Len() {
			fd := fields.Get(j)
			assert.True(t, covered[fd.FullName()], "no fixture sets %s (field %d); add it to fixtures", fd.FullName(), fd.Number())
		}
	}
}

// TestTrustChainReadsAsEnvelope pins the compatibility of the trust topic
// (proto/HISTORY.md, 2026-12-06): a TrustChain decoded as an Envelope, as
// agents before it do, is its newest bundle; an Envelope, as control planes
// before it publish, decodes as a chain of that bundle alone.
func TestTrustChainReadsAsEnvelope(t *testing.T) {
	chain := fixtureOf(t, "TrustChain")
	env := &efpb.Envelope{}
	// previous is an unknown field to such a reader: kept, never read.
	require.NoError(t, proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(chain, env))
	want := &efpb.Envelope{PayloadType: efpb.PayloadTypeTrustBundle, Payload: []byte{0x10, 0x03},
		Signatures: []*efpb.Signature{{Keyid: "bb02", Sig: []byte{0x03}}}}
	assert.True(t, proto.Equal(want, env), "TrustChain read as an Envelope = %v, want %v", env, want)

	tc := &efpb.TrustChain{}
	require.NoError(t, proto.Unmarshal(fixtureOf(t, "Envelope"), tc))
	assert.Empty(t, tc.Previous)
	assert.Empty(t, tc.ProtoReflect().GetUnknown(), "an Envelope's fields are a TrustChain's")
	assert.Equal(t, efpb.PayloadTypeManifest, tc.PayloadType)
}

// TestFixturesIgnoreUnknownFields is the forward-compatibility rule: a
// reader of this version decodes a message from a newer writer that carries
// fields it does not know, and keeps them when it re-encodes (a relay must
// not strip them).
func TestFixturesIgnoreUnknownFields(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.name, func(t *testing.T) {
			b := fixtureBytes(t, fx.name, fx.hex)
			b = protowire.AppendTag(b, 1000, protowire.VarintType)
			b = protowire.AppendVarint(b, 7)
			b = protowire.AppendTag(b, 1001, protowire.BytesType)
			b = protowire.AppendBytes(b, []byte("from the future"))

			got := fx.msg.ProtoReflect().New().Interface()
			require.NoError(t, proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, got))
			assert.True(t, proto.Equal(fx.msg, got), "known fields must decode unchanged")

			kept := fx.msg.ProtoReflect().New().Interface()
			require.NoError(t, proto.Unmarshal(b, kept))
			again, err := proto.MarshalOptions{Deterministic: true}.Marshal(kept)
			require.NoError(t, err)
			assert.Equal(t, hex.EncodeToString(b), hex.EncodeToString(again), "unknown fields must survive a re-encode")
		})
	}
}

// TestHistoryDocumentsProtocolVersion: bumping efpb.ProtocolVersion needs a
// section in proto/HISTORY.md.
func TestHistoryDocumentsProtocolVersion(t *testing.T) {
	history, err := os.ReadFile("../HISTORY.md")
	require.NoError(t, err)
	heading := fmt.Sprintf("## Version %d ", efpb.ProtocolVersion)
	assert.True(t, strings.Contains(string(history), heading),
		"proto/HISTORY.md has no %q section for efpb.ProtocolVersion", heading)
}
