package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// The fleet's commands (list, watch, health) read the servers' presence
// records (docs/protocol.md, "Fleet"); they need no schema.

// fleetFlags are the flags of list, watch and health.
type fleetFlags struct {
	target  string
	timeout time.Duration
	tokens  listFlag         // stats: custom tokens of the services' topic templates
	opts    []rpc.CallOption // from tokens
}

// parseFleetCommand parses a fleet command's flags and its optional
// SERVICE argument.
func (a *app) parseFleetCommand(name string, args []string, withTarget bool) (fleetFlags, string, error) {
	var f fleetFlags
	fs := flag.NewFlagSet("mqttrpc "+name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	if withTarget {
		fs.StringVar(&f.target, "t", "", "the `ID` of one server")
	}
	if name == "stats" {
		fs.Var(&f.tokens, "token", "a value for a custom token of a service's topic template, `name=value` (repeatable)")
	}
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for the broker's presence records")
	if err := fs.Parse(args); err != nil {
		globalFlagHint(a.stderr, err)
		return f, "", flagError{help: errors.Is(err, flag.ErrHelp)}
	}
	if fs.NArg() > 1 {
		return f, "", usagef("%s takes at most one SERVICE after its flags (got %d arguments)", name, fs.NArg())
	}
	if f.timeout <= 0 {
		return f, "", usagef("--timeout %v: want a positive duration", f.timeout)
	}
	for _, tok := range f.tokens {
		k, v, ok := strings.Cut(tok, "=")
		if !ok || k == "" {
			return f, "", usagef("--token %q: want name=value", tok)
		}
		f.opts = append(f.opts, rpc.WithToken(k, v))
	}
	if err := a.checkOutput(); err != nil {
		return f, "", err
	}
	return f, fs.Arg(0), nil
}

// watchFleet connects and waits until presence is known complete, once
// per run (see connect).
func (a *app) watchFleet(ctx context.Context, timeout time.Duration) (*rpc.Conn, *rpc.Fleet, error) {
	conn, err := a.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	if a.fleet != nil {
		return conn, a.fleet, nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fleet, err := rpc.WatchFleet(wctx, conn)
	if err != nil {
		closeConn(conn)
		a.conn = nil
		if ctx.Err() == nil && wctx.Err() != nil {
			return nil, nil, fmt.Errorf("the broker's presence records did not arrive within %v (--timeout)", timeout)
		}
		return nil, nil, asFailure(err)
	}
	a.fleet = fleet
	return conn, fleet, nil
}

// sharedFleet is watchFleet for the schema by reflection, within
// --connect-timeout.
func (a *app) sharedFleet(ctx context.Context) (*rpc.Conn, *rpc.Fleet, error) {
	conn, fleet, err := a.watchFleet(ctx, a.globals.connectTimeout)
	if err != nil && strings.Contains(err.Error(), "(--timeout)") {
		err = fmt.Errorf("the broker's presence records did not arrive within %v (--connect-timeout)", a.globals.connectTimeout)
	}
	return conn, fleet, err
}

func closeFleet(conn *rpc.Conn, fleet *rpc.Fleet) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = fleet.Close(ctx)
	closeConn(conn)
}

// list runs the list command: the online servers (of SERVICE) and what
// they serve, one JSON object per line, or a table with -o text.
func (a *app) list(ctx context.Context, args []string) error {
	f, service, err := a.parseFleetCommand("list", args, false)
	if err != nil {
		return err
	}
	conn, fleet, err := a.watchFleet(ctx, f.timeout)
	if err != nil {
		return err
	}
	defer closeFleet(conn, fleet)
	servers := fleet.Servers(service)
	for _, s := range servers {
		if err := a.printServer("", s); err != nil {
			return err
		}
	}
	if len(servers) == 0 {
		if service != "" {
			fmt.Fprintf(a.stderr, "no online server serves %s\n", service)
		} else {
			fmt.Fprintln(a.stderr, "no online servers")
		}
	}
	a.warnDuplicates(fleet)
	return nil
}

// warnDuplicates says on stderr which server IDs more than one online
// connection serves: each of them runs every call to the ID.
func (a *app) warnDuplicates(fleet *rpc.Fleet) {
	dups := fleet.Duplicates()
	ids := make([]string, 0, len(dups))
	for id := range dups {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(a.stderr, "mqttrpc: warning: server ID %s is online on %d connections (client IDs %s): each of them runs every call to %s\n", id, len(dups[id]), strings.Join(dups[id], ", "), id)
	}
}

// watch runs the watch command: the servers known now, then every change
// (online, offline, health and other changes), one line each, until
// Ctrl-C.
func (a *app) watch(ctx context.Context, args []string) error {
	f, service, err := a.parseFleetCommand("watch", args, false)
	if err != nil {
		return err
	}
	conn, fleet, err := a.watchFleet(ctx, f.timeout)
	if err != nil {
		return err
	}
	defer closeFleet(conn, fleet)
	for ev, err := range fleet.Watch(ctx) {
		if err != nil {
			if ctx.Err() != nil {
				return nil // Ctrl-C
			}
			return asFailure(err)
		}
		if service != "" && !ev.Server.Serves(service) {
			continue
		}
		if err := a.printServer(ev.Kind.String(), ev.Server); err != nil {
			return err
		}
	}
	return nil
}

// health runs the health command: with -t one server's health (overall,
// or SERVICE's), as grpc.health.v1's Check answers; without, every online
// server's. It exits 0 when every status shown is SERVING, else 64 + 14
// (Unavailable), so that scripts can test it.
func (a *app) health(ctx context.Context, args []string) error {
	f, service, err := a.parseFleetCommand("health", args, true)
	if err != nil {
		return err
	}
	conn, fleet, err := a.watchFleet(ctx, f.timeout)
	if err != nil {
		return err
	}
	defer closeFleet(conn, fleet)
	type check struct {
		server string
		status rpc.HealthStatus
	}
	var checks []check
	if f.target != "" {
		status, err := fleet.Health(f.target, service)
		if err != nil {
			return asFailure(err)
		}
		checks = append(checks, check{f.target, status})
	} else {
		for _, s := range fleet.Servers(service) {
			status, err := fleet.Health(s.ID, service)
			if s.ID == "" || err != nil {
				continue // a share-group member has no ID to ask by
			}
			checks = append(checks, check{s.ID, status})
		}
		if len(checks) == 0 {
			return asFailure(rpc.Errorf(rpc.NotFound, "no online server with an ID serves %s", orAll(service)))
		}
	}
	serving := true
	for _, c := range checks {
		serving = serving && c.status == rpc.HealthServing
		if a.globals.output == "text" {
			fmt.Fprintf(a.stdout, "%s %s\n", c.server, c.status)
			continue
		}
		line, _ := json.Marshal(struct {
			Server  string `json:"server"`
			Service string `json:"service,omitempty"`
			Status  string `json:"status"`
		}{c.server, service, c.status.String()})
		fmt.Fprintf(a.stdout, "%s\n", line)
	}
	if !serving {
		return asFailure(rpc.Errorf(rpc.Unavailable, "not every server shown is SERVING"))
	}
	return nil
}

func orAll(service string) string {
	if service == "" {
		return "any service"
	}
	return service
}

// serverJSON is a server as list and watch print it.
type serverJSON struct {
	Event      string            `json:"event,omitempty"`
	ID         string            `json:"id,omitempty"`
	ClientID   string            `json:"clientId"`
	Online     bool              `json:"online"`
	Health     string            `json:"health"`
	ShareGroup string            `json:"shareGroup,omitempty"`
	Gateway    bool              `json:"gateway,omitempty"`
	Since      time.Time         `json:"since,omitzero"`
	Started    time.Time         `json:"started,omitzero"`
	Labels     map[string]string `json:"labels,omitempty"`
	Services   []serviceJSON     `json:"services"`
}

type serviceJSON struct {
	Name    string   `json:"name"`
	Methods []string `json:"methods"`
	Health  string   `json:"health"`
	Schema  string   `json:"schema,omitempty"` // its version, for reflection
}

// printServer prints one server: a JSON line, or with -o text a line for
// people. event is "" for list.
func (a *app) printServer(event string, s rpc.ServerInfo) error {
	if a.globals.output == "text" {
		var b strings.Builder
		if event != "" {
			fmt.Fprintf(&b, "%-8s ", event)
		}
		name := s.ID
		if name == "" {
			name = "(" + s.ClientID + ")"
		}
		state := "offline"
		if s.Online {
			state = "online"
		}
		fmt.Fprintf(&b, "%s %s %s", name, state, s.Health)
		if !s.Since.IsZero() {
			fmt.Fprintf(&b, " since %s", s.Since.Local().Format(time.DateTime))
		}
		if s.ShareGroup != "" {
			fmt.Fprintf(&b, " group %s", s.ShareGroup)
		}
		keys := make([]string, 0, len(s.Labels))
		for k := range s.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, " %s=%s", k, s.Labels[k])
		}
		for _, svc := range s.Services {
			fmt.Fprintf(&b, "\n  %s (%s) %s", svc.Name, strings.Join(svc.Methods, ", "), svc.Health)
		}
		_, err := fmt.Fprintln(a.stdout, b.String())
		return err
	}
	out := serverJSON{Event: event, ID: s.ID, ClientID: s.ClientID, Online: s.Online, Health: s.Health.String(),
		ShareGroup: s.ShareGroup, Gateway: s.Gateway, Since: s.Since, Started: s.Started, Labels: s.Labels, Services: []serviceJSON{}}
	for _, svc := range s.Services {
		out.Services = append(out.Services, serviceJSON{Name: svc.Name, Methods: svc.Methods, Health: svc.Health.String(), Schema: svc.Schema})
	}
	line, err := json.Marshal(out)
	if err != nil {
		return errors.New("encoding a server: " + err.Error())
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", line)
	return err
}
