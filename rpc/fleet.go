package rpc

// Discovery: a caller's live view of the presence records (docs/protocol.md,
// "Fleet"), kept complete across reconnects, listed and watched.

import (
	"context"
	"iter"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Fleet is a live view of the servers that announce themselves through
// presence: who is online, what they serve, their health and labels. Make
// one with WatchFleet. Clients on the same Conn use it to fail fast
// (WithFailFast) and to know whom a broadcast should hear from. A Fleet
// is safe for concurrent use.
type Fleet struct {
	conn      *Conn
	syncTopic string

	mu       sync.RWMutex
	records  map[string]*fleetRecord    // by client ID
	idConns  map[string]map[string]bool // server ID → client IDs whose record lists it
	gateways map[string]int             // service → online gateways serving it
	members  map[string]int             // service → online share-group members serving it
	complete bool                       // presence known complete on the current connection
	token    string                     // the sync token awaited
	tokenGen uint64                     // the connection generation it was sent on
	changed  chan struct{}              // closed and replaced when complete changes
	watchers map[*fleetWatcher]struct{} // Watch and broadcasts
	closed   bool

	malformed, stale atomic.Uint64

	kick        chan struct{}
	ctx         context.Context
	cancel      context.CancelFunc
	done        chan struct{} // closed when the sync goroutine has ended
	removeRoute func()
	removeHooks func()
}

// fleetRecord is the latest record of one connection.
type fleetRecord struct {
	rec      *presenceRecord // the last record; nil when only a removal was seen
	seq      uint64
	online   bool
	since    time.Time
	gen      uint64 // connection generation of the reader when received
	received time.Time
}

// fleetWatcher receives the events of one Watch or broadcast.
type fleetWatcher struct {
	ch       chan FleetEvent
	overflow bool // events were lost; ch is closed
}

const watchBuffer = 4096

// ServerInfo describes one server as its presence record shows it.
type ServerInfo struct {
	// ID is the server ID, "" for a share-group member or gateway
	// without one.
	ID string
	// ClientID is the MQTT client ID of the server's connection.
	ClientID string
	// ShareGroup is the server's share group, if any.
	ShareGroup string
	// Gateway reports a gateway: it serves targets it does not list.
	Gateway bool
	// Broadcast reports whether the server takes broadcasts.
	Broadcast bool
	// Online reports whether the server is online now.
	Online bool
	// Seq is the birth sequence of the connection's record.
	Seq uint64
	// Since is when the connection's state (online, offline) began.
	Since time.Time
	// Started is when the server started.
	Started time.Time
	// Labels are the application's labels (WithLabels).
	Labels map[string]string
	// Health is the server's overall health; NOT_SERVING when offline.
	Health HealthStatus
	// Services are the services the server serves.
	Services []ServiceInfo
}

// ServiceInfo is one service of a server.
type ServiceInfo struct {
	// Name is the full service name.
	Name string
	// Methods are the service's method names.
	Methods []string
	// Health is the service's health; NOT_SERVING when the server is.
	Health HealthStatus
	// Schema is the version of the service's schema (docs/protocol.md,
	// "Reflection"), for FetchSchema; "" when the server announces none.
	Schema string
}

// Duplicates returns the server IDs that more than one online connection
// lists, each with the client IDs of those connections, sorted. Every
// such connection subscribes to the ID's request topics, so each of them
// runs every call to the ID: two devices configured with one ID, most
// likely. (A device that reconnected with a new client ID is not one: its
// old connection's record is offline, or goes offline when the broker
// notices, 1.5 × keepalive at most.)
func (f *Fleet) Duplicates() map[string][]string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out map[string][]string
	for id, conns := range f.idConns {
		if len(conns) < 2 {
			continue
		}
		var online []string
		for clientID := range conns {
			if r := f.records[clientID]; r != nil && r.online {
				online = append(online, clientID)
			}
		}
		if len(online) > 1 {
			slices.Sort(online)
			if out == nil {
				out = map[string][]string{}
			}
			out[id] = online
		}
	}
	return out
}

// Serves reports whether the server serves service.
func (s *ServerInfo) Serves(service string) bool {
	return slices.ContainsFunc(s.Services, func(x ServiceInfo) bool { return x.Name == service })
}

// FleetEventKind says what happened to a server.
type FleetEventKind int

// The kinds of fleet events.
const (
	// ServerOnline: a server appeared or came back online.
	ServerOnline FleetEventKind = iota + 1
	// ServerOffline: a server went offline (its Will, its Shutdown, or its
	// record was removed).
	ServerOffline
	// ServerChanged: an online server's record changed (health, labels,
	// services).
	ServerChanged
)

// String returns "online", "offline" or "changed".
func (k FleetEventKind) String() string {
	switch k {
	case ServerOnline:
		return "online"
	case ServerOffline:
		return "offline"
	case ServerChanged:
		return "changed"
	}
	return "unknown"
}

// FleetEvent is a change of one server.
type FleetEvent struct {
	Kind   FleetEventKind
	Server ServerInfo
}

// WatchFleet subscribes to the presence records (mqttrpc/_presence/+) and
// returns once presence is known complete (docs/protocol.md, "Known
// complete"), or fails when ctx ends first. The Fleet follows every
// change until Close, and resynchronises after each reconnect. The first
// Fleet on a Conn is the one its Clients use to fail fast and to know whom
// to expect in a broadcast.
func WatchFleet(ctx context.Context, conn *Conn) (*Fleet, error) {
	f := &Fleet{
		conn:      conn,
		syncTopic: presenceTopic(conn.clientID) + syncSuffix,
		records:   map[string]*fleetRecord{},
		idConns:   map[string]map[string]bool{},
		gateways:  map[string]int{},
		members:   map[string]int{},
		changed:   make(chan struct{}),
		watchers:  map[*fleetWatcher]struct{}{},
		kick:      make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	f.ctx, f.cancel = context.WithCancel(conn.ctx)
	f.removeHooks = conn.hooks.addFleet(f)
	f.removeRoute = conn.addListener(f.handle)
	subs := []paho.SubscribeOptions{{Topic: presenceFilter, QoS: 1}, {Topic: f.syncTopic, QoS: 1}}
	if err := conn.subscribe(ctx, subs); err != nil && CodeOf(err) != Unavailable {
		f.removeRoute()
		f.removeHooks()
		f.cancel()
		return nil, err
	}
	go f.run() // owned by the Fleet: Close ends and waits for it
	f.poke()
	if err := f.AwaitComplete(ctx); err != nil {
		_ = f.Close(context.Background())
		return nil, err
	}
	conn.fleet.CompareAndSwap(nil, f)
	return f, nil
}

// Close stops following presence and unsubscribes. Watch iterators end.
func (f *Fleet) Close(ctx context.Context) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.complete = false
	for w := range f.watchers {
		close(w.ch)
	}
	f.watchers = nil
	f.wakeLocked()
	f.mu.Unlock()
	f.conn.fleet.CompareAndSwap(f, nil)
	f.removeHooks()
	f.removeRoute()
	f.cancel()
	<-f.done
	// The sync topic stays subscribed: a schema check of the Conn's may be
	// using it (reflection.go), and nothing but tokens arrives there.
	return f.conn.unsubscribe(ctx, []string{presenceFilter})
}

// Complete reports whether presence is known complete now: the Fleet has
// every retained record as of its last synchronisation and its connection
// has been up since.
func (f *Fleet) Complete() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.complete
}

// AwaitComplete waits until presence is known complete, or fails with
// Unavailable when ctx ends first.
func (f *Fleet) AwaitComplete(ctx context.Context) error {
	for {
		f.mu.RLock()
		complete, closed, changed := f.complete, f.closed, f.changed
		f.mu.RUnlock()
		switch {
		case complete:
			return nil
		case closed:
			return Errorf(Canceled, "fleet closed")
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return wrapCause(Unavailable, ctx.Err(), "presence not known complete (not connected, or the broker did not echo the sync message)")
		}
	}
}

// Stats counts the presence messages the Fleet ignored: malformed ones
// (not a valid record) and stale ones (an older birth sequence than the
// record it has, such as a late Will).
func (f *Fleet) Stats() (malformed, stale uint64) {
	return f.malformed.Load(), f.stale.Load()
}

// Servers returns the online servers that serve service, or every online
// server when service is "", ordered by ID and client ID.
func (f *Fleet) Servers(service string) []ServerInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.serversLocked(service, false)
}

// serversLocked lists the servers of service ("": all), the offline ones
// too if offline. f.mu is held.
func (f *Fleet) serversLocked(service string, offline bool) []ServerInfo {
	var out []ServerInfo
	for clientID, r := range f.records {
		if r.rec == nil || (!r.online && !offline) {
			continue
		}
		for i := range r.rec.Servers {
			si := serverInfo(clientID, r, &r.rec.Servers[i])
			if si.ID != "" && !f.decidesLocked(si.ID, clientID) {
				continue // a newer connection speaks for this ID
			}
			if service == "" || si.Serves(service) {
				out = append(out, si)
			}
		}
	}
	slices.SortFunc(out, func(a, b ServerInfo) int {
		if c := strings.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return strings.Compare(a.ClientID, b.ClientID)
	})
	return out
}

// Server returns the server with this ID as the newest record that lists
// it shows it, online or offline; false when no record lists it.
func (f *Fleet) Server(id string) (ServerInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	clientID, r := f.decidingLocked(id)
	if r == nil {
		return ServerInfo{}, false
	}
	for i := range r.rec.Servers {
		if r.rec.Servers[i].ID == id {
			return serverInfo(clientID, r, &r.rec.Servers[i]), true
		}
	}
	return ServerInfo{}, false
}

// Health checks a server's health as grpc.health.v1's Check does, from its
// presence record: the service's status, or with service "" the server's
// overall status. An offline server is NOT_SERVING. It fails with
// NotFound for a server no record lists or a service it does not serve,
// and with Unavailable while presence is not known complete.
func (f *Fleet) Health(serverID, service string) (HealthStatus, error) {
	if !f.Complete() {
		return HealthUnknown, Errorf(Unavailable, "presence not known complete")
	}
	si, ok := f.Server(serverID)
	if !ok {
		return HealthUnknown, Errorf(NotFound, "no presence record lists server %q", serverID)
	}
	if service == "" {
		return si.Health, nil
	}
	for _, svc := range si.Services {
		if svc.Name == service {
			return svc.Health, nil
		}
	}
	return HealthUnknown, Errorf(NotFound, "server %q does not serve %s", serverID, service)
}

// Watch yields the servers it knows, as ServerOnline events for the online
// ones and ServerOffline events for those whose record says offline, then
// every change as it happens, until ctx ends, the loop stops or the Fleet is
// closed. A reader that falls more than 4,096 events behind gets a
// ResourceExhausted error and the iterator ends: list again with Servers
// and watch anew. Health changes arrive as ServerChanged events.
//
//	for ev, err := range fleet.Watch(ctx) {
//		if err != nil { ... }
//		fmt.Println(ev.Kind, ev.Server.ID)
//	}
func (f *Fleet) Watch(ctx context.Context) iter.Seq2[FleetEvent, error] {
	return func(yield func(FleetEvent, error) bool) {
		w, initial := f.addWatcher(true)
		if w == nil {
			return
		}
		defer f.removeWatcher(w)
		for _, ev := range initial {
			if !yield(ev, nil) {
				return
			}
		}
		for {
			select {
			case ev, ok := <-w.ch:
				if !ok {
					f.mu.RLock()
					overflow := w.overflow
					f.mu.RUnlock()
					if overflow {
						yield(FleetEvent{}, Errorf(ResourceExhausted, "fleet watcher fell more than %d events behind; events were lost", watchBuffer))
					}
					return
				}
				if !yield(ev, nil) {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}
}

// addWatcher registers a watcher and, if initial, returns the online
// servers as events, atomically with the registration. It returns nil
// when the Fleet is closed.
func (f *Fleet) addWatcher(initial bool) (*fleetWatcher, []FleetEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, nil
	}
	var events []FleetEvent
	if initial {
		for _, si := range f.serversLocked("", true) {
			kind := ServerOnline
			if !si.Online {
				kind = ServerOffline
			}
			events = append(events, FleetEvent{Kind: kind, Server: si})
		}
	}
	w := &fleetWatcher{ch: make(chan FleetEvent, watchBuffer)}
	f.watchers[w] = struct{}{}
	return w, events
}

func (f *Fleet) removeWatcher(w *fleetWatcher) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.watchers[w]; ok {
		delete(f.watchers, w)
		close(w.ch)
	}
}

// --- what Clients ask ---

// unavailable returns the fail-fast error for a unicast call to target, or
// nil when the call should be published: presence is not known complete,
// the target is online, or an online gateway may serve it.
func (f *Fleet) unavailable(service, target string) *Error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.complete {
		return nil
	}
	clientID, r := f.decidingLocked(target)
	switch {
	case r != nil && r.online:
		return nil
	case f.gateways[service] > 0:
		return nil
	case r != nil:
		return Errorf(Unavailable, "server %q is offline since %s (presence record of connection %s)", target, r.since.Format(time.RFC3339), clientID)
	}
	return Errorf(Unavailable, "no server %q is online: no presence record lists it", target)
}

// unavailableAny returns the fail-fast error for a call to _any, or nil
// when the call should be published: presence is not known complete, or
// an online share-group member or gateway serves the service (any online
// record counts: a share group's copy follows subscriptions, which belong
// to connections, not to server IDs).
func (f *Fleet) unavailableAny(service string) *Error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.complete || f.members[service] > 0 || f.gateways[service] > 0 {
		return nil
	}
	return Errorf(Unavailable, "no server takes _any calls to %s per presence (no online share-group member or gateway serves it); "+
		"servers without presence are not seen: to publish anyway, create the Client with rpc.WithFailFast(false)", service)
}

// expected returns the IDs of the online servers that serve service and
// take broadcasts; false when presence is not known complete.
func (f *Fleet) expected(service string) (map[string]bool, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if !f.complete {
		return nil, false
	}
	ids := map[string]bool{}
	for id := range f.idConns {
		_, r := f.decidingLocked(id)
		if r == nil || !r.online {
			continue
		}
		for _, s := range r.rec.Servers {
			if s.ID == id && s.takesBroadcasts() && slices.ContainsFunc(s.Services, func(x presenceService) bool { return x.Name == service }) {
				ids[id] = true
			}
		}
	}
	return ids, true
}

// failFast is the Fleet's check of a unary call before it is published.
func (f *Fleet) failFast(cc *clientCall) error {
	switch cc.target {
	case "", TargetAll:
		return nil
	case TargetAny:
		if err := f.unavailableAny(cc.service); err != nil {
			return err
		}
		return nil
	}
	if checkTokenValue("target", cc.target) != nil {
		return nil // not a target at all: the call fails with InvalidArgument
	}
	if err := f.unavailable(cc.service, cc.target); err != nil {
		return err
	}
	return nil
}
