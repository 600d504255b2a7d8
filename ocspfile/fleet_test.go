package ocspfile

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// TestLeaseExclusion: holders of one lease never overlap.
func TestLeaseExclusion(t *testing.T) {
	stor := &certmagic.FileStorage{Path: t.TempDir()}
	ctx := context.Background()
	var holding, most atomic.Int32
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 5 {
				unlock, err := lockStorage(ctx, stor, "x")
				if err != nil {
					t.Error(err)
					return
				}
				n := holding.Add(1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(time.Millisecond) // hold it across the others' tries
				holding.Add(-1)
				unlock()
			}
		})
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Fatalf("%d holders of one lease at once", most.Load())
	}
	if _, err := stor.Load(ctx, leaseKey("x")); err == nil {
		t.Fatal("the lease was not deleted when released")
	}
}

// TestLeaseOfTheDead: a lease whose holder stopped renewing it is taken
// over once it expires; a live one is not.
func TestLeaseOfTheDead(t *testing.T) {
	stor := &certmagic.FileStorage{Path: t.TempDir()}
	ctx := context.Background()
	put := func(expires time.Time) {
		b, _ := json.Marshal(lease{Owner: "another/instance", Expires: expires})
		if err := stor.Store(ctx, leaseKey("x"), b); err != nil {
			t.Fatal(err)
		}
	}
	put(time.Now().Add(time.Hour))
	short, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
	defer cancel()
	if _, err := lockStorage(short, stor, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a live holder's lease was taken: %v", err)
	}

	put(time.Now().Add(300 * time.Millisecond))
	unlock, err := lockStorage(ctx, stor, "x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := stor.Load(ctx, leaseKey("x"))
	var l lease
	if err := json.Unmarshal(b, &l); err != nil || l.Owner == "another/instance" {
		t.Fatalf("lease after the takeover: %s %v", b, err)
	}
	unlock()
}
