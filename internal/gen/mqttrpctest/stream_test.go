package mqttrpctest_test

import (
	"context"
	"errors"
	"io"
	"testing"

	streamv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/stream/v1"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// transfer serves the streaming methods of the Transfer test service.
type transfer struct {
	streamv1.UnimplementedTransferServer
}

func (transfer) Watch(ctx context.Context, req *streamv1.WatchRequest, stream rpc.ServerStreamingServer[streamv1.Event]) error {
	for i := range int64(5) {
		if err := stream.Send(&streamv1.Event{Seq: i, Text: req.GetFilter()}); err != nil {
			return err
		}
	}
	return nil
}

func (transfer) Upload(ctx context.Context, stream rpc.ClientStreamingServer[streamv1.Chunk, streamv1.UploadResult]) error {
	var n int64
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&streamv1.UploadResult{Bytes: n})
		}
		if err != nil {
			return err
		}
		n += int64(len(c.GetData()))
	}
}

func (transfer) Sync(ctx context.Context, stream rpc.BidiStreamingServer[streamv1.Event, streamv1.Event]) error {
	for {
		e, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&streamv1.Event{Seq: e.GetSeq() + 1}); err != nil {
			return err
		}
	}
}

// The generated stream methods of every kind, over a real broker.
func TestTransferStreams(t *testing.T) {
	t.Parallel()
	b := testbroker.Start(t)
	serve(t, b.URL(), func(s *rpc.Server) { streamv1.RegisterTransferServer(s, transfer{}) })
	client := streamv1.NewTransferClient(newClient(t, b.URL()), rpc.To(deviceID))
	ctx := testCtx(t)

	watch, err := client.Watch(ctx, &streamv1.WatchRequest{Filter: "f"})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int64
	for e, err := range rpc.Messages(watch) {
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, e.GetSeq())
	}
	if len(seqs) != 5 || seqs[4] != 4 {
		t.Errorf("Watch sent %v, want 0…4", seqs)
	}

	upload, err := client.Upload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := upload.Send(&streamv1.Chunk{Data: make([]byte, 1000)}); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := upload.CloseAndRecv(); err != nil || res.GetBytes() != 10000 {
		t.Fatalf("Upload = %v, %v; want 10000 bytes", res, err)
	}

	sync, err := client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sync.Send(&streamv1.Event{Seq: 41}); err != nil {
		t.Fatal(err)
	}
	if e, err := sync.Recv(); err != nil || e.GetSeq() != 42 {
		t.Fatalf("Sync answered %v, %v; want 42", e, err)
	}
	if err := sync.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := sync.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("Sync after CloseSend: %v, want io.EOF", err)
	}

	// Ping is not implemented: unary methods beside streams still answer.
	_, err = client.Ping(ctx, &streamv1.PingRequest{})
	wantCode(t, err, rpc.Unimplemented)
}
