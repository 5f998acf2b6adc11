package rpc

// Keeping a Fleet's view: the sync after each (re)connection, the
// presence messages taken in, the indexes by server ID, and the events for
// watchers (docs/protocol.md, "Stale wills", "Known complete").

import (
	"bytes"
	"context"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
)

// connectionUp and connectionDown run on autopaho's goroutine.
func (f *Fleet) connectionUp() { f.poke() }

func (f *Fleet) connectionDown() {
	f.mu.Lock()
	if f.complete {
		f.complete = false
		f.wakeLocked()
	}
	f.token = ""
	f.mu.Unlock()
}

func (f *Fleet) poke() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (f *Fleet) wakeLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// run synchronises after each (re)connection: once the subscriptions are
// restored (and so the retained records resent), it publishes a sync
// token and waits for it to come back (handle).
func (f *Fleet) run() {
	defer close(f.done)
	for {
		select {
		case <-f.kick:
		case <-f.ctx.Done():
			return
		}
		if err := f.conn.waitReady(f.ctx); err != nil {
			continue // poked again when the connection is up
		}
		token := uuid.NewString()
		gen := f.conn.generation()
		f.mu.Lock()
		f.token, f.tokenGen = token, gen
		f.mu.Unlock()
		ctx, cancel := context.WithTimeout(f.ctx, 10*time.Second)
		err := f.conn.publish(ctx, &paho.Publish{Topic: f.syncTopic, QoS: 1, Payload: []byte(token)})
		cancel()
		if err != nil && f.ctx.Err() == nil {
			f.conn.logger.Warn("mqttrpc: publishing the fleet's sync message failed; retrying", "topic", f.syncTopic, "error", err)
			timer := time.NewTimer(presenceRetry)
			select {
			case <-timer.C:
				f.poke()
			case <-f.ctx.Done():
				timer.Stop()
			}
		}
	}
}

// handle runs on paho's receive goroutine for every PUBLISH.
func (f *Fleet) handle(p *paho.Publish, ack func()) bool {
	if p.Topic == f.syncTopic {
		if !f.synced(p.Payload) {
			return false // not the awaited token: perhaps a schema check's (reflection.go)
		}
		ack()
		return true
	}
	if !strings.HasPrefix(p.Topic, PresencePrefix) || strings.Contains(p.Topic[len(PresencePrefix):], "/") {
		return false
	}
	ack()
	pp, ok, why := parsePresence(p)
	if !ok {
		f.malformed.Add(1)
		f.conn.logger.Warn("mqttrpc: ignored a malformed presence record", "topic", p.Topic, "reason", why)
		return true
	}
	f.apply(pp, f.conn.generation())
	return true
}

// synced completes presence when the awaited token comes back: records
// not resent since the sync began were removed while the reader was away.
// It reports whether the payload was the awaited token; others (an earlier
// token of the Fleet's, a schema check's) are left to whoever awaits them.
func (f *Fleet) synced(payload []byte) bool {
	f.mu.Lock()
	if f.closed || f.token == "" || !bytes.Equal(payload, []byte(f.token)) {
		f.mu.Unlock()
		return false
	}
	f.token = ""
	for clientID, r := range f.records {
		if r.gen < f.tokenGen {
			f.replaceLocked(clientID, r, nil)
		}
	}
	f.complete = true
	f.wakeLocked()
	f.mu.Unlock()
	return true
}

// apply takes one presence message into the view.
func (f *Fleet) apply(pp parsedPresence, gen uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	old := f.records[pp.clientID]
	if old != nil && pp.seq != 0 && pp.seq < old.seq {
		f.stale.Add(1) // a late Will of an older connection
		old.gen = gen  // the newer record is still the retained one, as far as we know
		return
	}
	next := &fleetRecord{seq: pp.seq, gen: gen, received: time.Now()}
	switch {
	case pp.removed:
		if old == nil {
			return // nothing to remove
		}
		if pp.seq == 0 {
			next.seq = old.seq
		}
		next.rec, next.since = old.rec, next.received
	default:
		next.rec = pp.record
		next.online = pp.record.State == stateOnline
		next.since = pp.record.Since
		if !next.online && old != nil && old.seq == pp.seq && old.rec != nil && len(pp.record.Servers) < len(old.rec.Servers) {
			// The Will lists the servers known at CONNECT; the online
			// record of the same connection knows better.
			next.rec = &presenceRecord{V: pp.record.V, ClientID: pp.clientID, Seq: pp.seq, State: stateOffline, Since: pp.record.Since, Servers: old.rec.Servers}
		}
		if !next.online {
			next.since = next.received // the Will carries the time it was set up
		}
	}
	f.replaceLocked(pp.clientID, old, next)
}

// replaceLocked puts next (nil: remove) in place of old for a connection,
// keeps the indexes and tells the watchers. f.mu is held.
func (f *Fleet) replaceLocked(clientID string, old, next *fleetRecord) {
	before := f.onlineServersLocked(clientID, old)
	if old != nil && old.rec != nil {
		for _, s := range old.rec.Servers {
			if s.ID != "" {
				delete(f.idConns[s.ID], clientID)
				if len(f.idConns[s.ID]) == 0 {
					delete(f.idConns, s.ID)
				}
			}
			if old.online {
				uncountServices(f.gateways, s.Gateway, s.Services)
				uncountServices(f.members, s.ShareGroup != "", s.Services)
			}
		}
	}
	if next == nil {
		delete(f.records, clientID)
	} else {
		f.records[clientID] = next
		if next.rec != nil {
			for _, s := range next.rec.Servers {
				if s.ID != "" {
					if f.idConns[s.ID] == nil {
						f.idConns[s.ID] = map[string]bool{}
					}
					f.idConns[s.ID][clientID] = true
				}
				if next.online {
					countServices(f.gateways, s.Gateway, s.Services)
					countServices(f.members, s.ShareGroup != "", s.Services)
				}
			}
		}
	}
	after := f.onlineServersLocked(clientID, next)
	if len(f.watchers) == 0 {
		return
	}
	for key, si := range before {
		if _, still := after[key]; still {
			continue
		}
		if si.ID != "" {
			if c, r := f.decidingLocked(si.ID); r != nil && r.online && c != clientID {
				continue // the ID lives on, on a newer connection
			}
		}
		si.Online, si.Health = false, HealthNotServing
		si.Since = time.Now() // the record went away: when the reader learned it
		if next != nil && !next.online {
			si.Since = next.since // the offline record's (a Will's: when it arrived)
		}
		// Its services too, as serverInfo says of an offline record (the
		// slice is the view's: copied, not written).
		si.Services = slices.Clone(si.Services)
		for i := range si.Services {
			si.Services[i].Health = HealthNotServing
		}
		f.emitLocked(FleetEvent{Kind: ServerOffline, Server: si})
	}
	for key, si := range after {
		prev, was := before[key]
		switch {
		case !was:
			f.emitLocked(FleetEvent{Kind: ServerOnline, Server: si})
		case !sameServer(prev, si):
			f.emitLocked(FleetEvent{Kind: ServerChanged, Server: si})
		}
	}
}

// countServices adds one, if it applies, to the count of each service in
// counts (online gateways, share-group members); uncountServices takes it
// back.
func countServices(counts map[string]int, applies bool, services []presenceService) {
	if applies {
		for _, svc := range services {
			counts[svc.Name]++
		}
	}
}

func uncountServices(counts map[string]int, applies bool, services []presenceService) {
	if applies {
		for _, svc := range services {
			if counts[svc.Name]--; counts[svc.Name] <= 0 {
				delete(counts, svc.Name)
			}
		}
	}
}

// onlineServersLocked returns the online servers of a connection's record
// by a key unique within the record.
func (f *Fleet) onlineServersLocked(clientID string, r *fleetRecord) map[string]ServerInfo {
	if r == nil || !r.online || r.rec == nil {
		return nil
	}
	out := make(map[string]ServerInfo, len(r.rec.Servers))
	for i := range r.rec.Servers {
		s := &r.rec.Servers[i]
		key := "id:" + s.ID
		if s.ID == "" {
			key = "anon:" + strconv.Itoa(i) + ":" + s.ShareGroup
		}
		out[key] = serverInfo(clientID, r, s)
	}
	return out
}

// emitLocked hands an event to every watcher without blocking; a watcher
// whose buffer is full loses its channel (closed) and learns it lost
// events. f.mu is held.
func (f *Fleet) emitLocked(ev FleetEvent) {
	for w := range f.watchers {
		select {
		case w.ch <- ev:
		default:
			w.overflow = true
			close(w.ch)
			delete(f.watchers, w)
		}
	}
}

// decidingLocked returns the record that decides whether server ID is
// online: the one with the highest birth sequence among those listing it.
func (f *Fleet) decidingLocked(id string) (string, *fleetRecord) {
	var bestID string
	var best *fleetRecord
	for clientID := range f.idConns[id] {
		r := f.records[clientID]
		if r == nil || r.rec == nil {
			continue
		}
		if best == nil || r.seq > best.seq || (r.seq == best.seq && clientID < bestID) {
			bestID, best = clientID, r
		}
	}
	return bestID, best
}

func (f *Fleet) decidesLocked(id, clientID string) bool {
	c, _ := f.decidingLocked(id)
	return c == clientID
}

// serverInfo converts a record's entry.
func serverInfo(clientID string, r *fleetRecord, s *presenceServer) ServerInfo {
	si := ServerInfo{
		ID: s.ID, ClientID: clientID, ShareGroup: s.ShareGroup, Gateway: s.Gateway, Broadcast: s.takesBroadcasts(),
		Online: r.online, Seq: r.seq, Since: r.since, Started: s.Started, Labels: s.Labels,
		Health: parseHealth(s.Health),
	}
	if !r.online {
		si.Health = HealthNotServing
	}
	for _, svc := range s.Services {
		h := parseHealth(svc.Health)
		if !r.online {
			h = HealthNotServing
		}
		si.Services = append(si.Services, ServiceInfo{Name: svc.Name, Methods: svc.Methods, Health: h, Schema: svc.Schema})
	}
	return si
}

// sameServer reports whether a and b describe the server alike, but for
// when their connection's state began (a reconnection is no change of the
// server).
func sameServer(a, b ServerInfo) bool {
	a.Since, b.Since = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}
