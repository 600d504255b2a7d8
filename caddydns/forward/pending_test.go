package forward

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// answerWire is an answer for the calls below (only its identity counts).
func answerWire(*testing.T) *caddydns.Wire {
	return caddydns.NewWire(make([]byte, 12), &dnswire.Layout{})
}

// TestCallWaitRace: a wait ends no sooner than its deadline, and a
// call taken from the pool again carries nothing from its last wait,
// even when that wait's timer fired just as its answer was taken: the
// timer's word never reaches the next wait, which would end at once.
func TestCallWaitRace(t *testing.T) {
	cl := newCall(nil)
	start := time.Now()
	if a, err := cl.wait(context.Background(), start.Add(20*time.Millisecond)); a != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no answer: %v, %v; want DeadlineExceeded", a, err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("the wait ended after %v, before its deadline", d)
	}
	cl.release()

	// the race: the answer is there and the deadline is now; either may
	// win, but the next wait, with a minute to go and its answer there,
	// gets that answer
	for i := range 20000 {
		cl := newCall(nil)
		deadline := time.Now()
		sent := make(chan struct{})
		if i%2 == 0 {
			cl.resp <- answerWire(t)
			close(sent)
		} else {
			// the answer comes from elsewhere as the deadline passes
			deadline = deadline.Add(50 * time.Microsecond)
			go func(resp chan *caddydns.Wire, w *caddydns.Wire) {
				for time.Now().Before(deadline) {
				}
				resp <- w
				close(sent)
			}(cl.resp, answerWire(t))
		}
		a, err := cl.wait(context.Background(), deadline)
		if (a == nil) == (err == nil) || (err != nil && !errors.Is(err, context.DeadlineExceeded)) {
			t.Fatalf("round %d, racing: %v, %v", i, a, err)
		}
		if a != nil {
			a.Release()
		}
		<-sent // as the pending map's lock: nothing sends once the call is out of it
		cl.release()
		// the next wait blocks until its answer comes, a moment later:
		// time for a timer of the last wait that fired to run
		cl = newCall(nil)
		want, sent := answerWire(t), make(chan struct{})
		go func(resp chan *caddydns.Wire) {
			runtime.Gosched()
			resp <- want
			close(sent)
		}(cl.resp)
		if a, err := cl.wait(context.Background(), time.Now().Add(time.Minute)); a != want || err != nil {
			t.Fatalf("round %d, the wait after the race: %v, %v; want its answer", i, a, err)
		}
		<-sent
		want.Release()
		cl.release()
	}
}
