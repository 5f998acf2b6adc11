package rpc

// Per-method stats, after NATS micro's STATS: requests, errors, the last
// error, total and average processing time, calls in flight, and when the
// server started.

import (
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// StatsMethod is the method that every server answers on every service it
// serves, with the per-method stats of that service (docs/protocol.md,
// "Stats"): call it with To(id), or broadcast it, with any request
// payload; the answer is a google.protobuf.Struct (in JSON, an object).
//
//	stats := new(structpb.Struct)
//	err := client.Call(ctx, "example.thermostat.v1.Thermostat", rpc.StatsMethod, &emptypb.Empty{}, stats, rpc.To("dev-1"))
//
// Client.Call uses the default topic template: for a service with a
// template of its own, describe the method with it, e.g.
// client.Stub(&rpc.ServiceDesc{ServiceName: name, Methods:
// []rpc.MethodDesc{{MethodName: rpc.StatsMethod, TopicTemplate: tmpl,
// QoS: rpc.QoS1}}}, rpc.StatsMethod), with WithToken for its custom
// tokens (the mqttrpc command line does so).
const StatsMethod = "_stats"

// MethodStats counts the calls of one unary method that reached its
// handler (requests refused before, for overload or a bad payload, are in
// ServerStats.Dropped).
type MethodStats struct {
	// Requests counts handler runs that ended; InFlight those running.
	Requests uint64
	// Errors counts handler runs that returned an error (a panic too).
	Errors uint64
	// LastError is the message of the last error, "" if none.
	LastError string
	// ProcessingTime is the handlers' total running time.
	ProcessingTime time.Duration
	// AverageProcessingTime is ProcessingTime / Requests.
	AverageProcessingTime time.Duration
	// InFlight counts handlers running now.
	InFlight int64
	// Started is when the server started (Start).
	Started time.Time
}

// methodCounters are the atomics behind MethodStats: the handler path
// pays two clock reads and a few atomic adds.
type methodCounters struct {
	requests, errors atomic.Uint64
	inFlight         atomic.Int64
	nanos            atomic.Int64
	lastError        atomic.Pointer[string]
}

func (c *methodCounters) begin() time.Time {
	c.inFlight.Add(1)
	return time.Now()
}

func (c *methodCounters) end(start time.Time, err error) {
	c.nanos.Add(int64(time.Since(start)))
	c.inFlight.Add(-1)
	c.requests.Add(1)
	if err != nil {
		c.errors.Add(1)
		msg := err.Error()
		if e, ok := err.(*Error); ok {
			msg = e.Message()
		}
		c.lastError.Store(&msg)
	}
}

func (c *methodCounters) snapshot(started time.Time) MethodStats {
	st := MethodStats{
		Requests:       c.requests.Load(),
		Errors:         c.errors.Load(),
		ProcessingTime: time.Duration(c.nanos.Load()),
		InFlight:       c.inFlight.Load(),
		Started:        started,
	}
	if st.Requests > 0 {
		st.AverageProcessingTime = st.ProcessingTime / time.Duration(st.Requests)
	}
	if e := c.lastError.Load(); e != nil {
		st.LastError = *e
	}
	return st
}

// methodStats returns the stats of every unary method the server serves,
// keyed by procedure ("/service/method").
func (s *Server) methodStats() map[string]MethodStats {
	s.fleet.mu.Lock()
	started := s.fleet.started
	s.fleet.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]MethodStats{}
	for _, svc := range s.services {
		for name, m := range svc.methods {
			if m.desc == nil {
				continue // a streaming method
			}
			out["/"+svc.desc.ServiceName+"/"+name] = m.stats.snapshot(started)
		}
	}
	return out
}

// statsMessage is the answer to StatsMethod on one service, in NATS
// micro's STATS field names.
func (s *Server) statsMessage(svc *service) any {
	s.fleet.mu.Lock()
	started := s.fleet.started
	s.fleet.mu.Unlock()
	var endpoints []any
	s.mu.Lock()
	names := make([]string, 0, len(svc.methods))
	for name, m := range svc.methods {
		if m.desc != nil {
			names = append(names, name)
		}
	}
	s.mu.Unlock()
	slices.Sort(names)
	for _, name := range names {
		st := svc.methods[name].stats.snapshot(started)
		endpoints = append(endpoints, map[string]any{
			"name":                    name,
			"num_requests":            float64(st.Requests),
			"num_errors":              float64(st.Errors),
			"last_error":              st.LastError,
			"processing_time":         float64(st.ProcessingTime.Nanoseconds()),
			"average_processing_time": float64(st.AverageProcessingTime.Nanoseconds()),
			"in_flight":               float64(st.InFlight),
		})
	}
	msg, err := structpb.NewStruct(map[string]any{
		"type":      "io.mqttrpc.stats_response",
		"id":        s.cfg.serverID,
		"service":   svc.desc.ServiceName,
		"started":   started.UTC().Format(time.RFC3339Nano),
		"endpoints": endpoints,
	})
	if err != nil {
		return nil // unreachable: plain strings and numbers; runHandler-less answers treat nil as Internal
	}
	return msg
}
