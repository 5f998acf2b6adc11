package rpc

// A server's health (grpc.health.v1's semantics), its labels, and its part
// of its connection's presence record.

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// HealthStatus is the health of a server or one of its services, with
// grpc.health.v1's meaning.
type HealthStatus int

// The health statuses.
const (
	// HealthUnknown: nobody knows (a reader without a record for the
	// server, or a service the record does not name).
	HealthUnknown HealthStatus = iota
	// HealthServing: the server or service takes calls.
	HealthServing
	// HealthNotServing: the server or service is up but does not take
	// calls (draining, a dependency is down, the server is offline).
	HealthNotServing
)

var healthNames = [...]string{"UNKNOWN", "SERVING", "NOT_SERVING"}

// String returns grpc.health.v1's name: "SERVING", "NOT_SERVING" or
// "UNKNOWN".
func (h HealthStatus) String() string {
	if h >= 0 && int(h) < len(healthNames) {
		return healthNames[h]
	}
	return "UNKNOWN"
}

func parseHealth(s string) HealthStatus {
	for i, n := range healthNames {
		if n == s {
			return HealthStatus(i)
		}
	}
	return HealthUnknown
}

// serverFleet is a Server's presence state.
type serverFleet struct {
	on bool

	mu      sync.Mutex
	overall HealthStatus
	health  map[string]HealthStatus // per service; absent: SERVING
	labels  map[string]string
	started time.Time
	listed  bool // in the connection's record
}

func (f *serverFleet) init(cfg *serverConfig) {
	f.on = cfg.presence == nil || *cfg.presence
	f.overall = HealthServing
	f.health = map[string]HealthStatus{}
	f.labels = cfg.labels
}

// SetHealth sets the health of one service of the server, or with service
// "" the server's overall health, as grpc.health.v1's servers do. Servers
// start SERVING. The presence record is republished at once, so callers
// that watch the fleet see the change (Fleet.Health, Fleet.Watch). Only
// SERVING and NOT_SERVING may be set; a service the server does not
// serve is NotFound.
func (s *Server) SetHealth(service string, status HealthStatus) error {
	if status != HealthServing && status != HealthNotServing {
		return Errorf(InvalidArgument, "SetHealth(%q, %v): set SERVING or NOT_SERVING", service, status)
	}
	if service != "" && s.findService(service) == nil {
		return Errorf(NotFound, "SetHealth: the server has no service %q", service)
	}
	f := &s.fleet
	f.mu.Lock()
	if service == "" {
		f.overall = status
	} else {
		f.health[service] = status
	}
	listed := f.listed
	f.mu.Unlock()
	if listed {
		s.conn.presence.update()
	}
	return nil
}

// Health returns the health of one service, or with service "" the
// server's overall health: what the server reports in its presence record.
// A service is NOT_SERVING when the server overall is. A service the
// server does not serve is UNKNOWN.
func (s *Server) Health(service string) HealthStatus {
	if service != "" && s.findService(service) == nil {
		return HealthUnknown
	}
	f := &s.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.overall != HealthServing || service == "" {
		return f.overall
	}
	if h, ok := f.health[service]; ok {
		return h
	}
	return HealthServing
}

// SetLabels replaces the server's labels (WithLabels) and republishes its
// presence record.
func (s *Server) SetLabels(labels map[string]string) {
	f := &s.fleet
	f.mu.Lock()
	f.labels = maps.Clone(labels)
	listed := f.listed
	f.mu.Unlock()
	if listed {
		s.conn.presence.update()
	}
}

func (s *Server) findService(name string) *service {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, svc := range s.services {
		if svc.desc.ServiceName == name {
			return svc
		}
	}
	return nil
}

// announce puts a started server into its connection's presence record
// and waits (bounded by ctx) until the record is published.
func (s *Server) announce(ctx context.Context) {
	f := &s.fleet
	f.mu.Lock()
	f.started = time.Now()
	listed := f.on && s.conn.presence != nil
	f.listed = listed
	f.mu.Unlock()
	if !listed {
		return
	}
	s.conn.presence.register(ctx, s)
}

// withdraw takes the server out of the record and waits (bounded by ctx)
// until the record without it is published.
func (s *Server) withdraw(ctx context.Context) {
	f := &s.fleet
	f.mu.Lock()
	listed := f.listed
	f.listed = false
	f.mu.Unlock()
	if listed {
		s.conn.presence.unregister(ctx, s)
	}
}

// presenceEntry is the server's part of the record.
func (s *Server) presenceEntry() presenceServer {
	e := presenceServer{ID: s.cfg.serverID, ShareGroup: s.cfg.shareGroup, Gateway: s.cfg.gateway}
	if s.cfg.noBroadcast && s.cfg.serverID != "" {
		no := false
		e.Broadcast = &no
	}
	s.mu.Lock()
	services := make([]presenceService, 0, len(s.services))
	for _, svc := range s.services {
		methods := make([]string, 0, len(svc.methods))
		for name := range svc.methods {
			methods = append(methods, name)
		}
		slices.Sort(methods)
		ps := presenceService{Name: svc.desc.ServiceName, Methods: methods}
		if !s.cfg.noReflection {
			if sc := serviceSchema(ps.Name); sc != nil {
				ps.Schema = sc.version
			}
		}
		services = append(services, ps)
	}
	s.mu.Unlock()
	f := &s.fleet
	f.mu.Lock()
	e.Started = f.started.UTC()
	e.Labels = maps.Clone(f.labels)
	e.Health = f.overall.String()
	for i := range services {
		h := HealthServing
		if v, ok := f.health[services[i].Name]; ok {
			h = v
		}
		if f.overall != HealthServing {
			h = f.overall
		}
		services[i].Health = h.String()
	}
	f.mu.Unlock()
	e.Services = services
	return e
}
