package rpc

// Reflection (docs/protocol.md, "Reflection"): each service's schema, a
// FileDescriptorSet named by the SHA-256 of its bytes, retained once per
// version on mqttrpc/_reflection/{service}/{version}; servers announce the
// version in their presence record and publish the schema only when the
// broker does not have it; readers fetch it and check it against its name.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/mqttrpc/mqttrpc/codec"
)

// ReflectionPrefix is the prefix of the schema topics: version V of
// service S is retained on ReflectionPrefix + S + "/" + V.
const ReflectionPrefix = "mqttrpc/_reflection/"

// schemaVersionLen is the length of a version: hexadecimal digits of the
// SHA-256 of the schema's bytes.
const schemaVersionLen = 16

// schemaCheckTimeout bounds a server's check of its schemas on a
// connection (a few round trips on a healthy one).
const schemaCheckTimeout = 10 * time.Second

// schema is a service's FileDescriptorSet, encoded, and its version.
type schema struct {
	version string
	topic   string
	payload []byte
}

// schemas caches the schema of each service name, built once from the
// process's protobuf registry (descriptors there never change); a nil
// entry means the service has none.
var schemas sync.Map // service name → *schema

// serviceSchema returns the schema of a service as the protobuf registry
// of the process knows it, or nil when the registry has no such service
// (a hand-written ServiceDesc).
func serviceSchema(service string) *schema {
	if v, ok := schemas.Load(service); ok {
		return v.(*schema)
	}
	var sc *schema
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service)); err == nil {
		if sd, ok := d.(protoreflect.ServiceDescriptor); ok {
			sc = newSchema(service, fileSet(sd.ParentFile()))
		}
	}
	v, _ := schemas.LoadOrStore(service, sc)
	return v.(*schema)
}

// newSchema encodes set deterministically and names it.
func newSchema(service string, set *descriptorpb.FileDescriptorSet) *schema {
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(set)
	if err != nil {
		return nil // not reachable with descriptors from the registry
	}
	version := SchemaVersion(payload)
	return &schema{version: version, topic: schemaTopic(service, version), payload: payload}
}

// fileSet is fd with everything it imports, transitively, each file before
// those that import it (as protoc --include_imports writes it).
func fileSet(fd protoreflect.FileDescriptor) *descriptorpb.FileDescriptorSet {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	add(fd)
	return set
}

// SchemaVersion returns the version that names a schema: the first 16
// hexadecimal digits of the SHA-256 of its encoded FileDescriptorSet.
func SchemaVersion(encoded []byte) string {
	sum := sha256.Sum256(encoded)
	return hex.EncodeToString(sum[:])[:schemaVersionLen]
}

// schemaTopic is the topic of version of service's schema.
func schemaTopic(service, version string) string {
	return ReflectionPrefix + service + "/" + version
}

// schemaPublish is the retained PUBLISH of a schema.
func schemaPublish(sc *schema) *paho.Publish {
	return &paho.Publish{Topic: sc.topic, QoS: 1, Retain: true, Properties: &paho.PublishProperties{ContentType: codec.ContentTypeProto}, Payload: sc.payload}
}

// WithReflection turns the announcement of the server's schemas on or off
// (docs/protocol.md, "Reflection"). On, the default, each service whose
// descriptor is in the process's protobuf registry (every service of
// generated code) names its schema's version in the presence record, and
// the connection makes sure the broker retains the schema, so that tools
// such as the mqttrpc command line can call the service without .proto
// files. Off, the record names no schema and nothing is published.
func WithReflection(on bool) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.noReflection = !on })
}

// retainedSnapshot returns the retained messages on topics (names, not
// filters) as the broker has them now: it subscribes to them, publishes a
// token on the connection's sync topic and, when the token comes back,
// every retained message of the subscriptions has arrived (docs/protocol.md,
// "Known complete"); then it unsubscribes. A topic without a retained
// message (or with an empty one) is absent from the map. Snapshots of one
// Conn run one at a time.
func (c *Conn) retainedSnapshot(ctx context.Context, topics []string) (map[string]*paho.Publish, error) {
	c.snapshotMu.Lock()
	defer c.snapshotMu.Unlock()
	token := uuid.NewString()
	syncTopic := presenceTopic(c.clientID) + syncSuffix
	want := make(map[string]bool, len(topics))
	for _, t := range topics {
		want[t] = true
	}
	var mu sync.Mutex
	got := map[string]*paho.Publish{}
	synced := make(chan struct{})
	var once sync.Once
	remove := c.addListener(func(p *paho.Publish, ack func()) bool {
		switch {
		case p.Topic == syncTopic:
			if string(p.Payload) != token {
				return false // another's token
			}
			ack()
			once.Do(func() { close(synced) })
			return true
		case want[p.Topic]:
			ack()
			mu.Lock()
			if len(p.Payload) > 0 {
				got[p.Topic] = p
			} else {
				delete(got, p.Topic)
			}
			mu.Unlock()
			return true
		}
		return false
	})
	defer remove()

	subs := make([]paho.SubscribeOptions, 0, len(topics)+1)
	for _, t := range topics {
		subs = append(subs, paho.SubscribeOptions{Topic: t, QoS: 1})
	}
	c.mu.Lock()
	_, haveSync := c.subs[syncTopic]
	c.mu.Unlock()
	if !haveSync {
		// Kept after the snapshot: a Fleet on the Conn shares it, and
		// nothing but tokens arrives there.
		subs = append(subs, paho.SubscribeOptions{Topic: syncTopic, QoS: 1})
	}
	err := c.subscribe(ctx, subs)
	defer func() {
		unsubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = c.unsubscribe(unsubCtx, topics)
	}()
	if err != nil {
		return nil, err
	}
	if err := c.publish(ctx, &paho.Publish{Topic: syncTopic, QoS: 1, Payload: []byte(token)}); err != nil {
		return nil, err
	}
	select {
	case <-synced:
	case <-ctx.Done():
		return nil, wrapCause(DeadlineExceeded, ctx.Err(), "the broker did not echo the sync message on "+syncTopic)
	}
	mu.Lock()
	defer mu.Unlock()
	return got, nil
}

// ensureSchemas makes sure the broker retains the schemas announced on the
// connection seq: those not yet checked on it are looked up and published
// if missing. A failure is logged; the next connection checks again.
func (p *connPresence) ensureSchemas(ctx context.Context, seq uint64) {
	p.mu.Lock()
	if p.schemaSeq != seq {
		p.schemaSeq, p.schemaDone = seq, p.schemaDone[:0]
	}
	var pending []*schema
	for _, s := range p.servers {
		for _, sc := range s.schemas() {
			if !containsSchema(p.schemaDone, sc) && !containsSchema(pending, sc) {
				pending = append(pending, sc)
			}
		}
	}
	p.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, schemaCheckTimeout)
	defer cancel()
	topics := make([]string, len(pending))
	for i, sc := range pending {
		topics[i] = sc.topic
	}
	have, err := p.c.retainedSnapshot(ctx, topics)
	if err != nil {
		if ctx.Err() == nil && p.c.ctx.Err() == nil {
			p.c.logger.Warn("mqttrpc: could not check the retained schemas; publishing them", "error", err)
		}
		have = nil
	}
	for _, sc := range pending {
		if m := have[sc.topic]; m != nil && SchemaVersion(m.Payload) == sc.version {
			continue
		}
		if err := p.c.publish(ctx, schemaPublish(sc)); err != nil {
			if p.c.ctx.Err() == nil {
				p.c.logger.Warn("mqttrpc: publishing a schema failed; tools cannot read it by reflection", "topic", sc.topic, "error", err)
			}
			if CodeOf(err) == Unavailable {
				return // checked again on the next connection
			}
		}
	}
	p.mu.Lock()
	if p.schemaSeq == seq {
		p.schemaDone = append(p.schemaDone, pending...)
	}
	p.mu.Unlock()
}

func containsSchema(list []*schema, sc *schema) bool {
	for _, x := range list {
		if x.topic == sc.topic {
			return true
		}
	}
	return false
}

// schemas returns the schemas the server announces.
func (s *Server) schemas() []*schema {
	if s.cfg.noReflection {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*schema, 0, len(s.services))
	for _, svc := range s.services {
		if sc := serviceSchema(svc.desc.ServiceName); sc != nil {
			out = append(out, sc)
		}
	}
	return out
}

// FetchSchema reads version of service's schema from the broker
// (docs/protocol.md, "Reflection"): a FileDescriptorSet of the file that
// defines the service and everything it imports, imports first, ready for
// protodesc.NewFiles. The versions come from presence (ServiceInfo.Schema,
// or Fleet.Schema which picks one). It fails with NotFound when the broker
// retains no such version, and DataLoss when what it retains does not
// match the version.
func FetchSchema(ctx context.Context, conn *Conn, service, version string) (*descriptorpb.FileDescriptorSet, error) {
	if service == "" || strings.ContainsAny(service, "/+#") || len(version) != schemaVersionLen || strings.ContainsAny(version, "/+#") {
		return nil, Errorf(InvalidArgument, "no schema topic for service %q version %q", service, version)
	}
	topic := schemaTopic(service, version)
	got, err := conn.retainedSnapshot(ctx, []string{topic})
	if err != nil {
		return nil, err
	}
	m := got[topic]
	if m == nil {
		return nil, Errorf(NotFound, "the broker retains no schema %s of %s (on %s): the servers that announce it publish it when they connect", version, service, topic)
	}
	if v := SchemaVersion(m.Payload); v != version {
		return nil, Errorf(DataLoss, "the schema retained on %s has the SHA-256 %s…, not its version: ignored", topic, v)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(m.Payload, &set); err != nil {
		return nil, Errorf(DataLoss, "the schema retained on %s is not a FileDescriptorSet: %v", topic, err)
	}
	return &set, nil
}

// Schema reads the schema of service that the fleet's online servers
// announce: the version most of them announce (the newest server's, when
// as many announce another), fetched with FetchSchema. It fails with
// NotFound when no online server announces a schema for the service
// (none serves it, or they run with WithReflection(false) or an mqttrpc
// older than reflection).
func (f *Fleet) Schema(ctx context.Context, service string) (*descriptorpb.FileDescriptorSet, error) {
	version := f.schemaVersion(service)
	if version == "" {
		if len(f.Servers(service)) == 0 {
			return nil, Errorf(NotFound, "no online server serves %s", service)
		}
		return nil, Errorf(NotFound, "no online server of %s announces its schema (reflection off, or servers older than reflection)", service)
	}
	return FetchSchema(ctx, f.conn, service, version)
}

// schemaVersion picks the version of service's schema that most online
// servers announce; at a tie, the one of the most recently started server.
func (f *Fleet) schemaVersion(service string) string {
	count := map[string]int{}
	newest := map[string]time.Time{}
	for _, si := range f.Servers(service) {
		for _, svc := range si.Services {
			if svc.Name == service && svc.Schema != "" {
				count[svc.Schema]++
				if si.Started.After(newest[svc.Schema]) {
					newest[svc.Schema] = si.Started
				}
			}
		}
	}
	best := ""
	for v, n := range count {
		if best == "" || n > count[best] || (n == count[best] && newest[v].After(newest[best])) || (n == count[best] && newest[v].Equal(newest[best]) && v < best) {
			best = v
		}
	}
	return best
}
