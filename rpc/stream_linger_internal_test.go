package rpc

import "testing"

// The lingering streams of a server are bounded in number and bytes; the
// oldest go first, the newest stays.
func TestLingerSetBounds(t *testing.T) {
	var l lingerSet
	var all []*serverStream
	for i := range lingerLimit + 10 {
		st := &serverStream{}
		all = append(all, st)
		if evicted := l.add(st, lingerOverhead); i < lingerLimit && len(evicted) > 0 {
			t.Fatalf("stream %d evicted %d under the limit", i, len(evicted))
		} else if i >= lingerLimit && (len(evicted) != 1 || evicted[0] != all[i-lingerLimit]) {
			t.Fatalf("stream %d evicted %v, want the oldest", i, evicted)
		}
	}
	if l.n != lingerLimit {
		t.Fatalf("%d lingering, want %d", l.n, lingerLimit)
	}
	l.remove(all[lingerLimit+5])
	l.remove(all[lingerLimit+5]) // twice: no effect
	huge := &serverStream{}
	evicted := l.add(huge, lingerBytes+1)
	if l.n != 1 || l.first != huge || len(evicted) != lingerLimit-1 {
		t.Fatalf("a stream over the byte limit alone: %d lingering, %d evicted", l.n, len(evicted))
	}
	if got := l.takeAll(); len(got) != 1 || l.n != 0 || l.bytes != 0 || l.first != nil || l.last != nil {
		t.Fatalf("takeAll: %d, set left with %d streams, %d bytes", len(got), l.n, l.bytes)
	}
}
