package rpc

import (
	"fmt"
	"testing"
	"time"
)

func TestDedupCacheBounds(t *testing.T) {
	now := time.Now()
	c := newDedupCache(3, 1<<20)
	for i := range 5 {
		if st, _ := c.begin(fmt.Sprint(i), now.Add(time.Minute), now); st != dedupNew {
			t.Fatalf("entry %d: state %v", i, st)
		}
	}
	if c.len() != 3 {
		t.Fatalf("%d entries, want the bound 3", c.len())
	}
	if st, _ := c.begin("0", now.Add(time.Minute), now); st != dedupNew {
		t.Errorf("evicted oldest entry still known")
	}
	if st, _ := c.begin("4", now.Add(time.Minute), now); st != dedupRunning {
		t.Errorf("newest entry: state %v, want running", st)
	}
}

func TestDedupCacheBytesAndExpiry(t *testing.T) {
	now := time.Now()
	c := newDedupCache(1000, 4096)
	c.begin("a", now.Add(time.Second), now)
	c.finish("a", &cachedResponse{payload: make([]byte, 3000)})
	if st, resp := c.begin("a", now.Add(time.Second), now); st != dedupDone || len(resp.payload) != 3000 {
		t.Fatalf("state %v", st)
	}
	c.begin("b", now.Add(time.Second), now)
	c.finish("b", &cachedResponse{payload: make([]byte, 3000)})
	if st, _ := c.begin("a", now.Add(time.Second), now); st != dedupNew {
		t.Errorf("over the byte bound, the oldest answer should have gone")
	}
	later := now.Add(2 * time.Second)
	if st, _ := c.begin("b", later.Add(time.Second), later); st != dedupNew {
		t.Errorf("expired entry still answered")
	}
	if c.bytes < 0 || c.bytes > 4096 {
		t.Errorf("bytes = %d", c.bytes)
	}
}
