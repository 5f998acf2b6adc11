package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// stats runs the stats command: the per-method stats that servers answer
// on _stats (docs/protocol.md, "Stats"), of one server with -t, else of
// every online server (a broadcast per service), as a table; -o json
// prints each server's answer as a JSON line instead.
func (a *app) stats(ctx context.Context, args []string) error {
	f, service, err := a.parseFleetCommand("stats", args, true)
	if err != nil {
		return err
	}
	conn, fleet, err := a.watchFleet(ctx, f.timeout)
	if err != nil {
		return err
	}
	defer closeFleet(conn, fleet)
	client := rpc.NewClient(conn)
	defer func() { _ = client.Close(context.Background()) }()

	// The services to ask: the target's, or every online server's.
	var services []string
	if f.target != "" {
		s, ok := fleet.Server(f.target)
		if !ok || !s.Online {
			return asFailure(rpc.Errorf(rpc.NotFound, "no online server %q in the presence records (mqttrpc list shows them)", f.target))
		}
		for _, svc := range s.Services {
			services = append(services, svc.Name)
		}
	} else {
		seen := map[string]bool{}
		for _, s := range fleet.Servers("") {
			for _, svc := range s.Services {
				if !seen[svc.Name] {
					seen[svc.Name] = true
					services = append(services, svc.Name)
				}
			}
		}
		sort.Strings(services)
	}
	if service != "" {
		if !contains(services, service) {
			return asFailure(rpc.Errorf(rpc.NotFound, "no online server serves %s", service))
		}
		services = []string{service}
	}

	// _stats answers at the service's request topics: a service with a
	// topic template of its own is asked there (the template comes with
	// the schema, by reflection or --proto; without one, the default).
	s, _ := a.loadSchema(ctx, schemaWanted{target: f.target})
	var answers []*structpb.Struct
	var firstErr error
	for _, svc := range services {
		cctx, cancel := context.WithTimeout(ctx, f.timeout)
		stub := client.Stub(statsDesc(s, svc), rpc.StatsMethod)
		if f.target != "" {
			st := new(structpb.Struct)
			err := stub.Invoke(cctx, &emptypb.Empty{}, st, append(f.opts, rpc.To(f.target))...)
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if err == nil {
				answers = append(answers, st)
			}
		} else {
			for r := range stub.Broadcast(cctx, &emptypb.Empty{}, func() any { return new(structpb.Struct) }, f.opts...) {
				if r.Err != nil {
					if firstErr == nil {
						who := r.Target
						if who == "" {
							who = svc // the broadcast was not published
						}
						firstErr = fmt.Errorf("%s: %w", who, r.Err)
					}
					continue
				}
				answers = append(answers, r.Response.(*structpb.Struct))
			}
		}
		cancel()
	}
	if a.outputSet && a.globals.output == "json" {
		for _, st := range answers {
			out, err := protojson.Marshal(st)
			if err != nil {
				return err
			}
			var buf strings.Builder
			if err := compactJSON(&buf, out); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, buf.String())
		}
	} else {
		a.statsTable(answers)
	}
	if firstErr != nil {
		fmt.Fprintf(a.stderr, "not every server answered: %v\n", cliAdvice(firstErr.Error()))
		return &rpcFailure{err: asError(firstErr), quiet: true}
	}
	return nil
}

// statsTable prints one row per server and method.
func (a *app) statsTable(answers []*structpb.Struct) {
	type row struct {
		server, service, method string
		requests, errors        int64
		avg                     time.Duration
		inFlight                int64
		lastError               string
	}
	var rows []row
	for _, st := range answers {
		m := st.AsMap()
		server, _ := m["id"].(string)
		service, _ := m["service"].(string)
		endpoints, _ := m["endpoints"].([]any)
		for _, e := range endpoints {
			ep, _ := e.(map[string]any)
			num := func(k string) int64 { v, _ := ep[k].(float64); return int64(v) }
			name, _ := ep["name"].(string)
			last, _ := ep["last_error"].(string)
			rows = append(rows, row{server, service, name, num("num_requests"), num("num_errors"),
				time.Duration(num("average_processing_time")), num("in_flight"), last})
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.server != b.server {
			return a.server < b.server
		}
		if a.service != b.service {
			return a.service < b.service
		}
		return a.method < b.method
	})
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVER\tSERVICE\tMETHOD\tREQUESTS\tERRORS\tAVERAGE\tIN FLIGHT\tLAST ERROR")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%v\t%d\t%s\n", r.server, r.service, r.method, r.requests, r.errors, r.avg.Round(time.Microsecond), r.inFlight, r.lastError)
	}
	_ = w.Flush()
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func compactJSON(w *strings.Builder, data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	out, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Write(out)
	return nil
}

// statsDesc describes the _stats method of service svc at the topic
// template of the service's first method in the schema s (nil, or a
// schema without the service: the default template).
func statsDesc(s *schema, svc string) *rpc.ServiceDesc {
	template := ""
	if s != nil {
		if sd, err := s.service(svc); err == nil {
			if desc, err := serviceDesc(sd); err == nil {
				switch {
				case len(desc.Methods) > 0:
					template = desc.Methods[0].TopicTemplate
				case len(desc.Streams) > 0:
					template = desc.Streams[0].TopicTemplate
				}
			}
		}
	}
	return &rpc.ServiceDesc{ServiceName: svc, Methods: []rpc.MethodDesc{{MethodName: rpc.StatsMethod, TopicTemplate: template, QoS: rpc.QoS1}}}
}
