package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"github.com/edgefleet/edgefleet/controlplane/broker"
	"github.com/edgefleet/edgefleet/internal/topics"
	"github.com/edgefleet/edgefleet/internal/transfer"
	"github.com/edgefleet/edgefleet/proto/efpb"
)

// RawBroker runs the cost benchmark's baseline broker in this process
// (`fleet-sim bench rawbroker`, started by Cost as a child): a broker of the
// control plane's package and default settings on a loopback port that lets
// every client in, driven by one command per line on in, one answer per
// line on out:
//
//	ready URL                              (once, when it listens)
//	chunks FILE CHUNKSIZE NAME VERSION  →  ok COUNT   (load the model's chunks as efpb.Chunk payloads)
//	publish                             →  ok         (publish them on the version's chunk topic through the inline client at QoS 1, as the control plane publishes a version's shared chunks)
//	count                               →  ok         (an inline subscription on every device's telemetry that only counts)
//	stats                               →  ok RECEIVED DROPPED
//	unacked                             →  ok N       (QoS 1 messages held for subscribers until their PUBACK)
//	profile FILE                        →  ok         (start a CPU profile of this process into FILE)
//	profile-stop                        →  ok         (write it)
//
// It returns at EOF on in or when ctx ends.
func RawBroker(ctx context.Context, in io.Reader, out io.Writer) error {
	scheme := topics.Scheme{Prefix: topics.DefaultPrefix}
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Scheme: scheme, Auth: allowAll{}})
	if err != nil {
		return err
	}
	if err := b.Start(); err != nil {
		return err
	}
	defer b.Close()
	fmt.Fprintf(out, "ready %s\n", b.URL())

	lines := make(chan string)
	go func() { // ends at EOF; the process exits after RawBroker returns
		defer close(lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var (
		payloads [][]byte
		topic    string
		received atomic.Uint64
		unsub    func()
		stopProf func() error
	)
	defer func() {
		if unsub != nil {
			unsub()
		}
		if stopProf != nil {
			_ = stopProf()
		}
	}()
	for {
		var line string
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case line, ok = <-lines:
			if !ok {
				return nil
			}
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "chunks":
			if len(f) != 5 {
				fmt.Fprintln(out, "error: chunks FILE CHUNKSIZE NAME VERSION")
				continue
			}
			model, err := os.ReadFile(f[1])
			if err != nil {
				fmt.Fprintf(out, "error: %v\n", err)
				continue
			}
			cs, err := strconv.ParseUint(f[2], 10, 32)
			if err != nil || cs == 0 {
				fmt.Fprintf(out, "error: chunk size %q\n", f[2])
				continue
			}
			payloads = payloads[:0]
			topic = scheme.Chunks(f[3], f[4])
			n := transfer.ChunkCount(uint64(len(model)), uint32(cs))
			for i := range uint32(n) {
				data, err := transfer.ChunkData(model, uint32(cs), i)
				if err != nil {
					return err
				}
				p, err := proto.Marshal(&efpb.Chunk{Name: f[3], Version: f[4], Index: i, Data: data})
				if err != nil {
					return err
				}
				payloads = append(payloads, p)
			}
			fmt.Fprintf(out, "ok %d\n", len(payloads))
		case "publish":
			var perr error
			for _, p := range payloads {
				if perr = b.Publish(topic, p, false, 1); perr != nil {
					break
				}
			}
			if perr != nil {
				fmt.Fprintf(out, "error: %v\n", perr)
				continue
			}
			fmt.Fprintln(out, "ok")
		case "count":
			if unsub == nil {
				if unsub, err = b.Subscribe(scheme.AllTelemetry(), func(string, []byte, string) { received.Add(1) }); err != nil {
					fmt.Fprintf(out, "error: %v\n", err)
					continue
				}
			}
			fmt.Fprintln(out, "ok")
		case "stats":
			fmt.Fprintf(out, "ok %d %d\n", received.Load(), b.Dropped())
		case "unacked":
			fmt.Fprintf(out, "ok %d\n", b.Unacknowledged())
		case "profile":
			if len(f) != 2 || stopProf != nil {
				fmt.Fprintln(out, "error: profile FILE, once until profile-stop")
				continue
			}
			if stopProf, err = StartCPUProfile(f[1]); err != nil {
				fmt.Fprintf(out, "error: %v\n", err)
				continue
			}
			fmt.Fprintln(out, "ok")
		case "profile-stop":
			if stopProf == nil {
				fmt.Fprintln(out, "error: no profile running")
				continue
			}
			err, stopProf = stopProf(), nil
			if err != nil {
				fmt.Fprintf(out, "error: %v\n", err)
				continue
			}
			fmt.Fprintln(out, "ok")
		default:
			fmt.Fprintf(out, "error: unknown command %q\n", f[0])
		}
	}
}
