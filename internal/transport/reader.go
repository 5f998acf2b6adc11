package transport

// The read side: the reader under the read buffer counts the PUBLISH
// packets that arrive (for the write mode's count of calls in flight) and
// re-arms TCP_QUICKACK behind the broker's acknowledgements.

import "time"

// MQTT control packet types.
const (
	packetTypeConnack  = 2
	packetTypePublish  = 3
	packetTypePuback   = 4
	packetTypePubrec   = 5
	packetTypePubcomp  = 7
	packetTypeSuback   = 9
	packetTypeUnsuback = 11
	packetTypePingresp = 13
)

// reader reads from the TCP connection under the read buffer,
// counts the PUBLISH packets that arrive and re-arms TCP_QUICKACK.
type reader struct {
	c *conn
	// Packet boundaries in the byte stream: the bytes left of the packet
	// being read, or the header being parsed.
	skip       int // payload bytes left before the next packet header
	inHeader   bool
	headerType byte
	lenShift   uint
	length     int

	// Stall detection (see stallMin): armed once the broker was seen to
	// hold packets back; ackAt is when the last read that held an
	// acknowledgement returned, zero otherwise.
	armed  bool
	ackAt  time.Time
	stalls int
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.c.tcp.Read(p)
	if n > 0 && r.c.direct != nil && !r.c.cfg.QuickAck {
		r.scan(p[:n]) // counts the calls in flight for the write mode
	}
	if n > 0 && r.c.cfg.QuickAck {
		// Only an acknowledgement from the broker needs an ACK at once:
		// the broker may have more to send behind it, and Nagle's
		// algorithm holds that back until the ACK. A PUBLISH we receive
		// is answered by our PUBACK or response soon, which carries the
		// ACK anyway.
		sawAck := r.scan(p[:n])
		if !r.armed {
			r.detectStall(sawAck, time.Now())
		}
		if r.armed && sawAck {
			if d := r.c.published.Load() - r.c.received.Load(); d <= quickAckMaxInFlight && d >= -quickAckMaxInFlight {
				r.c.rearmQuickAck()
			}
		}
	}
	return n, err
}

// detectStall arms the re-arming of TCP_QUICKACK once reads show the broker
// holding packets back behind our delayed ACK (see stallMin). now is when
// the read returned; sawAck whether it held an acknowledgement.
func (r *reader) detectStall(sawAck bool, now time.Time) {
	if !r.ackAt.IsZero() {
		if gap := now.Sub(r.ackAt); gap >= stallMin && gap <= stallMax {
			r.stalls++
			r.armed = r.stalls >= stallsToArm
		}
	}
	r.ackAt = time.Time{}
	if sawAck {
		r.ackAt = now
	}
}

// scan walks packet headers in b to count PUBLISH packets, skipping
// packet bodies without looking at them. It reports whether b holds the
// start of an acknowledgement (CONNACK, PUBACK, PUBREC, PUBCOMP, SUBACK,
// UNSUBACK, PINGRESP): a packet the broker sends in answer to ours, after
// which it may have more to send. (paho pings right after CONNACK: a
// SUBSCRIBE sent before the PINGRESP arrived does not acknowledge it, and
// the broker's Nagle held the SUBACK 40 ms behind our delayed ACK.)
func (r *reader) scan(b []byte) (sawAck bool) {
	for len(b) > 0 {
		if r.skip > 0 {
			k := min(r.skip, len(b))
			r.skip -= k
			b = b[k:]
			continue
		}
		if !r.inHeader {
			r.headerType = b[0] >> 4
			r.inHeader, r.lenShift, r.length = true, 0, 0
			switch r.headerType {
			case packetTypeConnack, packetTypePuback, packetTypePubrec, packetTypePubcomp, packetTypeSuback, packetTypeUnsuback, packetTypePingresp:
				sawAck = true
			}
			b = b[1:]
			continue
		}
		// Remaining length: a variable byte integer.
		x := b[0]
		b = b[1:]
		r.length |= int(x&0x7f) << r.lenShift
		r.lenShift += 7
		if x&0x80 != 0 && r.lenShift < 28 {
			continue
		}
		r.inHeader = false
		r.skip = r.length
		if r.headerType == packetTypePublish {
			r.c.received.Add(1)
		}
	}
	return sawAck
}

// rearmQuickAck turns TCP_QUICKACK on again: Linux turns it off by itself
// whenever it sees data go out right after data came in.
func (c *conn) rearmQuickAck() {
	c.rearms.Add(1)
	_ = c.raw.Control(setQuickAck)
}
