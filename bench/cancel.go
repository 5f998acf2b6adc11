package main

// -cancel: how long a caller's cancellation takes to end the handler's
// context, for unary calls and server streams (issue 15: within 100 ms on
// loopback). Caller and server run in this process, so both ends of the
// interval are read from one clock: from the caller's cancel to the
// moment the blocked handler sees its context end.

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

const cancelRuns = 50

type cancelServer interface {
	Wait(context.Context, *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
	WaitStream(context.Context, *wrapperspb.StringValue, rpc.ServerStreamingServer[wrapperspb.StringValue]) error
}

// blocker's handlers block until their context ends and report when.
type blocker struct {
	started chan struct{}
	ended   chan time.Time
}

func (b *blocker) Wait(ctx context.Context, _ *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	b.started <- struct{}{}
	<-ctx.Done()
	b.ended <- time.Now()
	return nil, ctx.Err()
}

func (b *blocker) WaitStream(ctx context.Context, _ *wrapperspb.StringValue, stream rpc.ServerStreamingServer[wrapperspb.StringValue]) error {
	if err := stream.Send(wrapperspb.String("started")); err != nil {
		return err
	}
	b.started <- struct{}{}
	<-ctx.Done()
	b.ended <- time.Now()
	return ctx.Err()
}

var cancelDesc = rpc.ServiceDesc{
	ServiceName: "bench.v1.Cancel",
	HandlerType: (*cancelServer)(nil),
	Methods: []rpc.MethodDesc{{
		MethodName: "Wait",
		QoS:        rpc.QoS1,
		NewRequest: func() any { return new(wrapperspb.StringValue) },
		Handler: func(srv any, ctx context.Context, req any) (any, error) {
			return srv.(cancelServer).Wait(ctx, req.(*wrapperspb.StringValue))
		},
	}},
	Streams: []rpc.StreamDesc{{
		StreamName:    "WaitStream",
		QoS:           rpc.QoS1,
		ServerStreams: true,
		Handler: func(srv any, stream rpc.ServerStream) error {
			req := new(wrapperspb.StringValue)
			if err := stream.RecvMsg(req); err != nil {
				return err
			}
			return srv.(cancelServer).WaitStream(stream.Context(), req, &rpc.GenericServerStream[wrapperspb.StringValue, wrapperspb.StringValue]{ServerStream: stream})
		},
	}},
}

func runCancel() error {
	type broker struct {
		name string
		url  string
		stop func()
	}
	var starts []func() (*broker, error)
	starts = append(starts, func() (*broker, error) {
		b, err := testbroker.New()
		if err != nil {
			return nil, err
		}
		return &broker{"testbroker", b.URL(), func() { _ = b.Close() }}, nil
	})
	if bin := findMosquitto(); bin != "" && !*noMosquitto {
		for _, nodelay := range []bool{true, false} {
			starts = append(starts, func() (*broker, error) {
				m, err := startMosquitto(bin, nodelay)
				if err != nil {
					return nil, err
				}
				name := "mosquitto"
				if !nodelay {
					name = "mosquitto (stock, Nagle on)"
				}
				return &broker{name, m.url(), m.stop}, nil
			})
		}
	}
	fmt.Printf("\ncancel: from the caller's cancel to the handler's context ending, %d runs each\n\n", cancelRuns)
	fmt.Println("| broker | call | p50 | p90 | max |")
	fmt.Println("|---|---|---:|---:|---:|")
	for _, start := range starts {
		b, err := start()
		if err != nil {
			return err
		}
		err = cancelBroker(b.name, b.url)
		b.stop()
		if err != nil {
			return err
		}
	}
	return nil
}

func cancelBroker(name, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	srvConn, err := rpc.Dial(ctx, url, rpc.WithClientID("cancel-server"))
	if err != nil {
		return err
	}
	defer srvConn.Close(context.Background())
	b := &blocker{started: make(chan struct{}, 1), ended: make(chan time.Time, 1)}
	srv := rpc.NewServer(srvConn, rpc.WithServerID("dev-1"))
	srv.RegisterService(&cancelDesc, b)
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Shutdown(context.Background())
	conn, err := rpc.Dial(ctx, url, rpc.WithClientID("cancel-caller"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())

	for _, kind := range []string{"unary", "server stream"} {
		var lat []time.Duration
		for range cancelRuns {
			callCtx, callCancel := context.WithTimeout(context.Background(), 30*time.Second)
			errc := make(chan error, 1)
			if kind == "unary" {
				go func() {
					errc <- client.Call(callCtx, "bench.v1.Cancel", "Wait", wrapperspb.String("x"), new(wrapperspb.StringValue), rpc.To("dev-1"))
				}()
			} else {
				cs, err := client.Stub(&cancelDesc, "WaitStream").NewStream(callCtx, rpc.To("dev-1"))
				if err != nil {
					callCancel()
					return err
				}
				if err := cs.SendMsg(wrapperspb.String("x")); err != nil {
					callCancel()
					return err
				}
				if err := cs.RecvMsg(new(wrapperspb.StringValue)); err != nil {
					callCancel()
					return err
				}
				go func() { errc <- cs.RecvMsg(new(wrapperspb.StringValue)) }()
			}
			select {
			case <-b.started:
			case <-time.After(10 * time.Second):
				callCancel()
				return fmt.Errorf("%s %s: the handler did not start", name, kind)
			}
			at := time.Now()
			callCancel()
			select {
			case ended := <-b.ended:
				lat = append(lat, ended.Sub(at))
			case <-time.After(10 * time.Second):
				return fmt.Errorf("%s %s: the handler's context did not end within 10 s of the cancel", name, kind)
			}
			<-errc
		}
		slices.Sort(lat)
		fmt.Printf("| %s | %s | %v | %v | %v |\n", name, kind, lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*9/10].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	}
	return nil
}
