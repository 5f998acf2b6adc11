package rpc

// The wire format of presence (docs/protocol.md, "Fleet"): the topics, the
// JSON record, the Will, and the birth sequence that tells a stale Will
// from a newer record.

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/codec"
)

// PresencePrefix is the prefix of the presence topics: a connection's
// record is retained on PresencePrefix + its client ID.
const PresencePrefix = "mqttrpc/_presence/"

const (
	presenceFilter  = PresencePrefix + "+"
	syncSuffix      = "/sync"
	propBirthSeq    = "mqttrpc-birth-seq"
	recordVersion   = 1
	stateOnline     = "online"
	stateOffline    = "offline"
	offlineLifetime = 86400 // seconds an offline record stays retained
)

// presenceTopic is the topic of the record of the connection clientID.
func presenceTopic(clientID string) string { return PresencePrefix + clientID }

// presenceRecord is the retained JSON record of one connection.
type presenceRecord struct {
	V        int              `json:"v"`
	ClientID string           `json:"client_id"`
	Seq      uint64           `json:"seq"`
	State    string           `json:"state"`
	Since    time.Time        `json:"since"`
	Servers  []presenceServer `json:"servers"`
}

// presenceServer is one server in a record.
type presenceServer struct {
	ID         string            `json:"id,omitempty"`
	ShareGroup string            `json:"share_group,omitempty"`
	Gateway    bool              `json:"gateway,omitempty"`
	Broadcast  *bool             `json:"broadcast,omitempty"` // absent: true
	Started    time.Time         `json:"started"`
	Labels     map[string]string `json:"labels,omitempty"`
	Health     string            `json:"health"`
	Services   []presenceService `json:"services"`
}

// presenceService is one service of a server in a record.
type presenceService struct {
	Name    string   `json:"name"`
	Methods []string `json:"methods"`
	Health  string   `json:"health"`
	Schema  string   `json:"schema,omitempty"`
}

// takesBroadcasts reports whether the server subscribes to _all.
func (s *presenceServer) takesBroadcasts() bool { return s.Broadcast == nil || *s.Broadcast }

// parsedPresence is a message received on a presence topic: a record, or
// the removal of one (an empty payload, the Will of a first connection).
type parsedPresence struct {
	clientID string
	removed  bool
	seq      uint64 // of the record, or mqttrpc-seq of a removal (0: none)
	record   *presenceRecord
}

// parsePresence reads a message on a presence topic. It never panics; a
// message that is not a valid record returns ok false and the reason.
func parsePresence(p *paho.Publish) (pp parsedPresence, ok bool, why string) {
	clientID, found := strings.CutPrefix(p.Topic, PresencePrefix)
	if !found || clientID == "" || strings.Contains(clientID, "/") {
		return pp, false, "not a presence topic"
	}
	pp.clientID = clientID
	if len(p.Payload) == 0 {
		pp.removed = true
		if p.Properties != nil {
			if v := p.Properties.User.Get(propBirthSeq); v != "" {
				pp.seq, _ = strconv.ParseUint(v, 10, 64)
			}
		}
		return pp, true, ""
	}
	var r presenceRecord
	if err := json.Unmarshal(p.Payload, &r); err != nil {
		return pp, false, "not JSON: " + err.Error()
	}
	switch {
	case r.V != recordVersion:
		return pp, false, "unknown version " + strconv.Itoa(r.V)
	case r.ClientID != clientID:
		return pp, false, "client_id " + strconv.Quote(r.ClientID) + " differs from the topic"
	case r.Seq == 0:
		return pp, false, "no seq"
	case r.State != stateOnline && r.State != stateOffline:
		return pp, false, "state " + strconv.Quote(r.State)
	}
	for _, s := range r.Servers {
		if s.ID == "" && s.ShareGroup == "" && !s.Gateway {
			return pp, false, "a server with neither id, share_group nor gateway"
		}
	}
	pp.seq, pp.record = r.Seq, &r
	return pp, true, ""
}

// encodeRecord marshals a record; records are built from validated
// values, so marshalling cannot fail.
func encodeRecord(r *presenceRecord) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		panic("rpc: encoding a presence record: " + err.Error()) // unreachable: plain strings, maps and times
	}
	return b
}

// recordPublish is the retained PUBLISH of a record.
func recordPublish(r *presenceRecord) *paho.Publish {
	props := &paho.PublishProperties{ContentType: codec.ContentTypeJSON, PayloadFormat: &payloadFormatUTF8}
	if r.State == stateOffline {
		expiry := uint32(offlineLifetime)
		props.MessageExpiry = &expiry
	}
	return &paho.Publish{Topic: presenceTopic(r.ClientID), QoS: 1, Retain: true, Properties: props, Payload: encodeRecord(r)}
}

// setWill puts the Will of a connection into its CONNECT: its record
// marked offline (with the servers known as it connects, possibly none),
// and mqttrpc-seq. (An empty Will payload, which would remove the record,
// is refused by mochi-mqtt with CONNACK 0x82.)
func setWill(cp *paho.Connect, clientID string, seq uint64, offline *presenceRecord) {
	expiry := uint32(offlineLifetime)
	cp.WillMessage = &paho.WillMessage{Topic: presenceTopic(clientID), QoS: 1, Retain: true, Payload: encodeRecord(offline)}
	cp.WillProperties = &paho.WillProperties{
		MessageExpiry: &expiry,
		ContentType:   codec.ContentTypeJSON,
		PayloadFormat: &payloadFormatUTF8,
		User:          paho.UserProperties{{Key: propBirthSeq, Value: strconv.FormatUint(seq, 10)}},
	}
}

// birthSeq hands out birth sequences: microseconds since 1970, raised
// above the last one when the clock has not moved (or moved back).
type birthSeq struct {
	mu   sync.Mutex
	last uint64
}

func (b *birthSeq) next() uint64 {
	now := uint64(time.Now().UnixMicro())
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = max(now, b.last+1)
	return b.last
}
