package main

import (
	"context"
	"fmt"
	"time"

	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

const setupTimeout = 20 * time.Second

func testbrokerTarget(impls []string) (*target, error) {
	b, err := testbroker.New()
	if err != nil {
		return nil, err
	}
	t, err := mqttTarget("testbroker", b.URL(), impls)
	if err != nil {
		_ = b.Close()
		return nil, err
	}
	inner := t.stop
	t.stop = func() {
		inner()
		_ = b.Close()
	}
	return t, nil
}

func mosquittoTarget(bin string, noDelay bool, impls []string) (*target, error) {
	m, err := startMosquitto(bin, noDelay)
	if err != nil {
		return nil, err
	}
	name := "mosquitto"
	if !noDelay {
		name = "mosquitto stock"
	}
	t, err := mqttTarget(name, m.url(), impls)
	if err != nil {
		m.stop()
		return nil, err
	}
	inner := t.stop
	t.stop = func() {
		inner()
		m.stop()
	}
	return t, nil
}

// mqttTarget connects the named impls to the broker at url.
func mqttTarget(name, url string, impls []string) (*target, error) {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	t := &target{name: name, ratioRef: name}
	var responder, propsResponder *rawResponder
	for _, in := range impls {
		var im impl
		switch in {
		case implRawProps:
			if propsResponder == nil {
				r, err := startRawResponder(ctx, url, "bench-raw-props-responder", rawPropsRequestTopic, true)
				if err != nil {
					t.close()
					return nil, err
				}
				propsResponder = r
				t.impls = append(t.impls, impl{name: "responder", close: r.close}) // closed last
			}
			r, err := startRawRequester(ctx, url, "bench-raw-props-requester", rawPropsRequestTopic, true)
			if err != nil {
				t.close()
				return nil, err
			}
			im = impl{name: in, call: r.call, close: r.close}
		case implRaw, implPahoRPC:
			if responder == nil {
				r, err := startRawResponder(ctx, url, "bench-raw-responder", rawRequestTopic, false)
				if err != nil {
					t.close()
					return nil, err
				}
				responder = r
				t.impls = append(t.impls, impl{name: "responder", close: r.close}) // closed last
			}
			if in == implRaw {
				r, err := startRawRequester(ctx, url, "bench-raw-requester", rawRequestTopic, false)
				if err != nil {
					t.close()
					return nil, err
				}
				im = impl{name: in, call: r.call, close: r.close}
			} else {
				r, err := startPahoRPC(ctx, url, "bench-pahorpc")
				if err != nil {
					t.close()
					return nil, err
				}
				im = impl{name: in, call: r.call, close: r.close}
			}
		case implMQTTRPC, implNoCoalesce, implNoQuickAck, implNoTransport:
			var opts []rpc.ConnOption
			switch in {
			case implNoCoalesce:
				opts = append(opts, rpc.WithWriteCoalescing(false))
			case implNoQuickAck:
				opts = append(opts, rpc.WithTCPQuickAck(false))
			case implNoTransport:
				opts = append(opts, rpc.WithWriteCoalescing(false), rpc.WithTCPQuickAck(false))
			}
			p, err := startMQTTRPC(ctx, url, fmt.Sprintf("bench-%d", len(t.impls)), opts...)
			if err != nil {
				t.close()
				return nil, err
			}
			im = impl{name: in, call: p.call, close: p.close}
		default:
			return nil, fmt.Errorf("unknown implementation %q", in)
		}
		t.impls = append(t.impls, im)
	}
	// The responder is not measured; move it last so that it closes after
	// its requesters.
	var measured []impl
	var others []impl
	for _, im := range t.impls {
		if im.call == nil {
			others = append(others, im)
		} else {
			measured = append(measured, im)
		}
	}
	t.impls = measured
	t.stop = func() {
		for _, o := range others {
			o.close()
		}
	}
	return t, nil
}

// peersTarget runs NATS and gRPC; their ratios are to raw paho on the
// embedded broker.
func peersTarget() (*target, error) {
	t := &target{name: "loopback", ratioRef: "testbroker"}
	n, err := startNATS()
	if err != nil {
		return nil, err
	}
	t.impls = append(t.impls, impl{name: implNATS, call: n.call, close: n.close})
	g, err := startGRPC()
	if err != nil {
		t.close()
		return nil, err
	}
	t.impls = append(t.impls, impl{name: implGRPC, call: g.call, close: g.close})
	return t, nil
}
