package rpc

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// guardedSession is paho's own in-memory session state behind a
// sessionGuard, connected to a buffer instead of a network connection.
type guardedSession struct {
	t *testing.T
	g *sessionGuard
}

func newGuardedSession(t *testing.T) *guardedSession {
	return &guardedSession{t: t, g: newSessionGuard(state.NewInMemory())}
}

// connect hands the state a CONNACK, as paho does after connecting.
func (s *guardedSession) connect(expiry uint32, sessionPresent bool) {
	s.t.Helper()
	cp := &packets.Connect{Properties: &packets.Properties{SessionExpiryInterval: &expiry}}
	if err := s.g.ConAckReceived(new(bytes.Buffer), cp, &packets.Connack{SessionPresent: sessionPresent}); err != nil {
		s.t.Fatal(err)
	}
}

// publish adds a QoS 1 publish to the session, as paho does before writing
// it, and returns its identifier and the channel its answer comes on.
func (s *guardedSession) publish() (uint16, chan packets.ControlPacket) {
	s.t.Helper()
	pb := &packets.Publish{QoS: 1, Topic: "t"}
	resp := make(chan packets.ControlPacket, 1)
	if err := s.g.AddToSession(context.Background(), pb, resp); err != nil {
		s.t.Fatal(err)
	}
	return pb.PacketID, resp
}

// lose hands the state a lost connection, as paho does.
func (s *guardedSession) lose(dp *packets.Disconnect) {
	s.t.Helper()
	if err := s.g.ConnectionLost(dp); err != nil {
		s.t.Fatal(err)
	}
}

func (s *guardedSession) puback(id uint16) {
	s.t.Helper()
	cp := packets.NewControlPacket(packets.PUBACK)
	cp.Content.(*packets.Puback).PacketID = id
	if err := s.g.PacketReceived(cp, nil); err != nil {
		s.t.Fatal(err)
	}
}

// answer returns what resp holds: a packet type, 0 for the empty packet
// that ends a publish, or -1 for nothing.
func answer(resp chan packets.ControlPacket) int {
	select {
	case cp := <-resp:
		return int(cp.Type)
	default:
		return -1
	}
}

func TestSessionGuard(t *testing.T) {
	t.Run("session ends with the connection", func(t *testing.T) {
		s := newGuardedSession(t)
		s.connect(0, false)
		acked, ackedResp := s.publish()
		_, waitingResp := s.publish()
		s.puback(acked)
		if got := answer(ackedResp); got != int(packets.PUBACK) {
			t.Fatalf("acknowledged publish got %d, want its PUBACK", got)
		}
		s.lose(nil)
		if got := answer(waitingResp); got != 0 {
			t.Fatalf("waiting publish got %d when paho dropped it, want the empty packet", got)
		}
		if got := answer(ackedResp); got != -1 {
			t.Fatalf("acknowledged publish got %d more, want nothing", got)
		}
	})

	t.Run("session lives on", func(t *testing.T) {
		s := newGuardedSession(t)
		s.connect(60, false)
		id, resp := s.publish()
		s.lose(nil)
		if got := answer(resp); got != -1 {
			t.Fatalf("publish got %d on a lost connection whose session lives on, want nothing yet", got)
		}
		s.connect(60, true) // the broker kept the session: paho resends
		if got := answer(resp); got != -1 {
			t.Fatalf("publish got %d after reconnecting to the same session, want nothing yet", got)
		}
		s.puback(id)
		if got := answer(resp); got != int(packets.PUBACK) {
			t.Fatalf("publish got %d, want its PUBACK from the new connection", got)
		}
	})

	t.Run("broker lost the session", func(t *testing.T) {
		s := newGuardedSession(t)
		s.connect(60, false)
		_, resp := s.publish()
		s.lose(nil)
		s.connect(60, false) // no Session Present: paho cleans
		if got := answer(resp); got != 0 {
			t.Fatalf("publish got %d when paho cleaned the session, want the empty packet", got)
		}
	})

	t.Run("DISCONNECT shortens the session", func(t *testing.T) {
		s := newGuardedSession(t)
		s.connect(60, false)
		_, resp := s.publish()
		zero := uint32(0)
		s.lose(&packets.Disconnect{Properties: &packets.Properties{SessionExpiryInterval: &zero}})
		if got := answer(resp); got != 0 {
			t.Fatalf("publish got %d, want the empty packet", got)
		}
	})

	t.Run("close", func(t *testing.T) {
		s := newGuardedSession(t)
		s.connect(60, false)
		_, resp := s.publish()
		s.lose(nil)
		s.g.close()
		if got := answer(resp); got != 0 {
			t.Fatalf("publish got %d after close, want the empty packet", got)
		}
	})
}

// hookedState runs a hook right after paho's state has handled a CONNACK,
// before the guard's own bookkeeping.
type hookedState struct {
	*state.State
	after func()
}

func (h *hookedState) ConAckReceived(w io.Writer, cp *packets.Connect, ca *packets.Connack) error {
	err := h.State.ConAckReceived(w, cp, ca)
	if f := h.after; f != nil {
		h.after = nil
		f()
	}
	return err
}

// A publish that paho takes into a freshly cleaned session, racing the
// CONNACK that cleaned it, is not ended by the guard: paho still tracks it
// and would block sending its acknowledgement into a full channel.
//
// The publish starts after paho's clean and before the guard's own
// bookkeeping of the CONNACK, and the CONNACK goes on only once the publish
// has reached the guard and found it busy (or, were the guard not to hold
// its lock across paho's clean, once the publish got through).
func TestSessionGuardPublishRacingAClean(t *testing.T) {
	inner := &hookedState{State: state.NewInMemory()}
	s := &guardedSession{t: t, g: newSessionGuard(inner)}
	s.connect(60, false)
	s.lose(nil)
	var id uint16
	resp := make(chan packets.ControlPacket, 1)
	added := make(chan error, 1)
	contended := make(chan struct{})
	s.g.contended = func() { close(contended) }
	inner.after = func() { // paho has cleaned; a publish comes in now
		go func() {
			pb := &packets.Publish{QoS: 1, Topic: "t"}
			err := s.g.AddToSession(context.Background(), pb, resp)
			id = pb.PacketID
			added <- err
		}()
		select {
		case <-contended: // the publish waits for the CONNACK's bookkeeping
		case err := <-added:
			added <- err // it got through: the check below tells
		}
	}
	s.connect(60, false) // no Session Present: paho cleans
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	if got := answer(resp); got != -1 {
		t.Fatalf("the publish taken into the new session got %d, want nothing", got)
	}
	// paho resends it on the next connection to the same session, and its
	// PUBACK goes through.
	s.lose(nil)
	s.connect(60, true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.puback(id)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("paho blocked handing over the PUBACK")
	}
	if got := answer(resp); got != int(packets.PUBACK) {
		t.Fatalf("publish got %d, want its PUBACK", got)
	}
}
