package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/bench/benchv1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// -streams: stream throughput, mqttrpc next to raw paho on the same broker,
// in alternating rounds. A server stream (Download: the server sends count
// messages of a size) is matched by raw paho publishing the same messages,
// QoS 1, to a subscriber on another connection, with as many publishes in
// flight as an mqttrpc stream has at most (64; each of rawStreamPublishers
// goroutines waits for its PUBACK before the next). mqttrpc's window (its
// credit) is larger, as it spans the whole way to the consuming Recv and
// back, where raw paho's in-flight publishes end at the broker. A client stream (Upload of 64 MiB
// in 64 KiB chunks) is matched by the same raw publishing of the chunks.
// The time runs from the first send to the last message received (for
// Upload, to the server's answer). Allocations are the whole process's
// (with testbroker, the broker's too) divided by the messages.

const rawStreamPublishers = 64 // rpc's maxInflightPublishes

// streamCell is one measurement: count messages of size bytes.
type streamCell struct {
	name        string
	size, count int
	upload      bool
}

var streamCells = []streamCell{
	{name: "server stream 64 B", size: 64, count: 20000},
	{name: "server stream 4 KiB", size: 4096, count: 10000},
	{name: "client stream 64 MiB in 64 KiB chunks", size: 64 << 10, count: 1024, upload: true},
}

// streamResult is one round of one cell.
type streamResult struct {
	elapsed time.Duration
	mallocs uint64
	err     error
}

func runStreams() error {
	stopProfile, err := startProfile()
	if err != nil {
		return err
	}
	defer stopProfile()
	if *memProfile != "" {
		defer writeAllocsProfile(*memProfile)
	}
	type broker struct {
		name string
		url  string
		stop func()
	}
	var brokers []func() (*broker, error)
	brokers = append(brokers, func() (*broker, error) {
		b, err := testbroker.New()
		if err != nil {
			return nil, err
		}
		return &broker{"testbroker", b.URL(), func() { _ = b.Close() }}, nil
	})
	if bin := findMosquitto(); bin != "" && !*noMosquitto {
		brokers = append(brokers, func() (*broker, error) {
			m, err := startMosquitto(bin, true)
			if err != nil {
				return nil, err
			}
			return &broker{"mosquitto", m.url(), m.stop}, nil
		})
	}
	fmt.Printf("\nstreams: %d alternating rounds per cell, QoS 1, window %d\n\n", *rounds, rpc.DefaultStreamWindow)
	fmt.Println("| broker | cell | raw paho, msgs/s | mqttrpc, msgs/s | × raw paho (sum of rounds) | MB/s raw → mqttrpc | allocs/msg raw → mqttrpc |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|")
	for _, start := range brokers {
		b, err := start()
		if err != nil {
			return err
		}
		err = streamBroker(b.name, b.url)
		b.stop()
		if err != nil {
			return err
		}
	}
	return nil
}

func streamBroker(name, url string) error {
	var filter *regexp.Regexp
	if *only != "" {
		var err error
		if filter, err = regexp.Compile(*only); err != nil {
			return fmt.Errorf("-only: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	raw, err := startRawStream(ctx, url)
	if err != nil {
		return err
	}
	defer raw.close()
	st, err := startStreamPair(ctx, url)
	if err != nil {
		return err
	}
	defer st.close()
	for _, cell := range streamCells {
		var rawSum, rpcSum time.Duration
		var rawAllocs, rpcAllocs uint64
		for round := range *rounds {
			for _, impl := range []string{"raw paho", "mqttrpc"} {
				if filter != nil && !filter.MatchString(name+"/"+impl+"/"+cell.name) {
					continue
				}
				var r streamResult
				if impl == "raw paho" {
					r = measureStream(func() error { return raw.run(cell) })
				} else {
					r = measureStream(func() error { return st.run(cell) })
				}
				if r.err != nil {
					return fmt.Errorf("%s %s %s round %d: %w", name, impl, cell.name, round+1, r.err)
				}
				fmt.Printf("%s/%s/%s round %d: %.0f msgs/s\n", name, impl, cell.name, round+1, float64(cell.count)/r.elapsed.Seconds())
				if impl == "raw paho" {
					rawSum += r.elapsed
					rawAllocs += r.mallocs
				} else {
					rpcSum += r.elapsed
					rpcAllocs += r.mallocs
				}
			}
		}
		if rawSum == 0 || rpcSum == 0 {
			continue // -only left one of them out
		}
		n := float64(cell.count * *rounds)
		rawRate, rpcRate := n/rawSum.Seconds(), n/rpcSum.Seconds()
		mb := float64(cell.size) / 1e6
		fmt.Printf("| %s | %s | %.0f | %.0f | %.2f | %.1f → %.1f | %.0f → %.0f |\n", name, cell.name, rawRate, rpcRate, rpcRate/rawRate,
			rawRate*mb, rpcRate*mb, float64(rawAllocs)/n, float64(rpcAllocs)/n)
	}
	return nil
}

// measureStream times run and counts the process's allocations meanwhile.
func measureStream(run func() error) streamResult {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	err := run()
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	return streamResult{elapsed: elapsed, mallocs: after.Mallocs - before.Mallocs, err: err}
}

// rawStream is raw paho's side: a publisher and a subscriber connection.
type rawStream struct {
	pub, sub *autopaho.ConnectionManager
	received atomic.Int64
	want     atomic.Int64
	done     chan struct{} // replaced per run; closed when want messages arrived
	mu       sync.Mutex
}

const rawStreamTopic = "bench/raw/stream"

func startRawStream(ctx context.Context, url string) (*rawStream, error) {
	r := &rawStream{}
	var err error
	r.sub, err = connect(ctx, url, "bench-raw-stream-sub", func(paho.PublishReceived) (bool, error) {
		if r.received.Add(1) == r.want.Load() {
			r.mu.Lock()
			close(r.done)
			r.mu.Unlock()
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	if err := subscribe(ctx, r.sub, rawStreamTopic); err != nil {
		r.close()
		return nil, err
	}
	r.pub, err = connect(ctx, url, "bench-raw-stream-pub", nil)
	if err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *rawStream) run(cell streamCell) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r.mu.Lock()
	r.done = make(chan struct{})
	done := r.done
	r.mu.Unlock()
	r.received.Store(0)
	r.want.Store(int64(cell.count))
	payload := make([]byte, cell.size)
	var next atomic.Int64
	errs := make(chan error, rawStreamPublishers)
	var wg sync.WaitGroup
	for range rawStreamPublishers {
		wg.Go(func() {
			for next.Add(1) <= int64(cell.count) {
				if _, err := r.pub.Publish(ctx, &paho.Publish{QoS: 1, Topic: rawStreamTopic, Payload: payload}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d of %d messages arrived", r.received.Load(), cell.count)
	}
}

func (r *rawStream) close() {
	for _, cm := range []*autopaho.ConnectionManager{r.pub, r.sub} {
		if cm != nil {
			_ = cm.Disconnect(context.Background())
		}
	}
}

// streamServer serves benchv1.Stream.
type streamServer struct {
	benchv1.UnimplementedStreamServer
}

func (streamServer) Download(_ context.Context, req *benchv1.DownloadRequest, stream rpc.ServerStreamingServer[benchv1.Chunk]) error {
	chunk := &benchv1.Chunk{Payload: make([]byte, req.GetSize())}
	for range req.GetCount() {
		if err := stream.Send(chunk); err != nil {
			return err
		}
	}
	return nil
}

func (streamServer) Upload(_ context.Context, stream rpc.ClientStreamingServer[benchv1.Chunk, benchv1.UploadSummary]) error {
	var sum benchv1.UploadSummary
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&sum)
		}
		if err != nil {
			return err
		}
		sum.Messages++
		sum.Bytes += int64(len(c.GetPayload()))
	}
}

// streamPair is mqttrpc's side: a server and a client on their own
// connections.
type streamPair struct {
	serverConn, clientConn *rpc.Conn
	server                 *rpc.Server
	client                 *rpc.Client
	stub                   benchv1.StreamClient
}

func startStreamPair(ctx context.Context, url string) (*streamPair, error) {
	p := &streamPair{}
	var err error
	if p.serverConn, err = rpc.Dial(ctx, url, rpc.WithClientID("bench-stream-server")); err != nil {
		return nil, err
	}
	p.server = rpc.NewServer(p.serverConn, rpc.WithServerID("bench-stream-server"))
	benchv1.RegisterStreamServer(p.server, streamServer{})
	if err := p.server.Start(ctx); err != nil {
		p.close()
		return nil, err
	}
	if p.clientConn, err = rpc.Dial(ctx, url, rpc.WithClientID("bench-stream-client")); err != nil {
		p.close()
		return nil, err
	}
	p.client = rpc.NewClient(p.clientConn)
	p.stub = benchv1.NewStreamClient(p.client, rpc.To("bench-stream-server"))
	return p, nil
}

func (p *streamPair) run(cell streamCell) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if cell.upload {
		stream, err := p.stub.Upload(ctx)
		if err != nil {
			return err
		}
		chunk := &benchv1.Chunk{Payload: make([]byte, cell.size)}
		for range cell.count {
			if err := stream.Send(chunk); err != nil {
				return err
			}
		}
		sum, err := stream.CloseAndRecv()
		if err != nil {
			return err
		}
		if sum.GetMessages() != int64(cell.count) || sum.GetBytes() != int64(cell.count*cell.size) {
			return fmt.Errorf("the server received %d chunks, %d bytes", sum.GetMessages(), sum.GetBytes())
		}
		return nil
	}
	stream, err := p.stub.Download(ctx, &benchv1.DownloadRequest{Count: int64(cell.count), Size: int64(cell.size)})
	if err != nil {
		return err
	}
	n := 0
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if len(c.GetPayload()) != cell.size {
			return fmt.Errorf("message %d: %d bytes", n, len(c.GetPayload()))
		}
		n++
	}
	if n != cell.count {
		return fmt.Errorf("%d of %d messages arrived", n, cell.count)
	}
	return nil
}

func (p *streamPair) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if p.client != nil {
		_ = p.client.Close(ctx)
	}
	if p.server != nil {
		_ = p.server.Shutdown(ctx)
	}
	for _, c := range []*rpc.Conn{p.clientConn, p.serverConn} {
		if c != nil {
			_ = c.Close(ctx)
		}
	}
}

// writeAllocsProfile writes the allocations since the start (-streams
// -memprofile): `go tool pprof -sample_index=alloc_objects` names where a
// stream message's allocations come from.
func writeAllocsProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "memprofile:", err)
		return
	}
	defer func() { _ = f.Close() }()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		fmt.Fprintln(os.Stderr, "memprofile:", err)
	}
}
