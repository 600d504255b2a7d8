package forward

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// call is one query waiting for its answer. Calls are pooled with their
// channel and timer, so waiting allocates nothing.
type call struct {
	question []byte              // as packed in the query; read under the pending map's lock
	exact    bool                // the answer must echo the question's letter case (0x20)
	resp     chan *caddydns.Wire // buffered 1; nil is sent when the connection dies
	err      error               // why, when the connection says (set before nil is sent)
	timer    *time.Timer         // stopped while the call is pooled
}

var callPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &call{resp: make(chan *caddydns.Wire, 1), timer: t}
}}

func newCall(question []byte) *call {
	cl := callPool.Get().(*call)
	cl.question = question
	return cl
}

// release returns cl to the pool. The caller has taken it out of its
// pending map, under the map's lock, so nothing sends on it any more; an
// answer that came as the wait ended is dropped.
func (cl *call) release() {
	select {
	case a := <-cl.resp:
		if a != nil {
			a.Release()
		}
	default:
	}
	cl.question, cl.err, cl.exact = nil, nil, false
	callPool.Put(cl)
}

// wait blocks until the answer comes (nil: the connection closed first),
// deadline passes, or ctx ends. The timer is a pooled one, not a context
// of its own: a context per try cost a tenth of a forwarded DoH request's
// CPU (its timer, its Done channel and the parent's, and its registration
// as the request context's child).
func (cl *call) wait(ctx context.Context, deadline time.Time) (*caddydns.Wire, error) {
	cl.timer.Reset(time.Until(deadline))
	select {
	case a := <-cl.resp:
		cl.timer.Stop()
		return a, nil
	case <-cl.timer.C:
		return nil, context.DeadlineExceeded
	case <-ctx.Done():
		cl.timer.Stop()
		return nil, ctx.Err()
	}
}

// Why an answer read from an upstream was not handed to a query: not an
// answer to any query waiting there, or (forged, or from an upstream
// that does not keep case) not to its question.
const (
	forgedID       = iota // no query waits under its ID (also an answer that came after its query gave up)
	forgedQuestion        // the ID's query asked another question
	forgedCase            // the question differs only in the letter case 0x20 chose
	forgedReasons
)

var forgedReasonNames = [forgedReasons]string{"id", "question", "case"}

// forgedCounters count the answers of one upstream that were not handed
// over, by reason.
type forgedCounters [forgedReasons]prometheus.Counter

func (f *forgedCounters) count(reason int) {
	if f != nil {
		f[reason].Inc()
	}
}

// deliver hands msg, an answer read by a connection's reader, to the
// query in pending (guarded by mu) that it answers, as a copy: the
// reader's buffer is reused. An answer that is not well formed, or to no
// pending query, or not to that query's question, is dropped (and
// counted in forged) and the query goes on waiting for the real one
// (anti-spoofing).
func deliver(mu *sync.Mutex, pending pendingCalls, msg []byte, forged *forgedCounters) {
	l, ok := answerLayout(msg)
	if !ok {
		return
	}
	mu.Lock()
	reason := handOver(pending, msg, &l)
	mu.Unlock()
	if reason >= 0 {
		forged.count(reason)
	}
}

// deliverAll delivers msgs, read together, under one hold of the lock.
func deliverAll(mu *sync.Mutex, pending pendingCalls, msgs [][]byte, forged *forgedCounters) {
	var ls [readBatch]dnswire.Layout
	var oks [readBatch]bool
	var reasons [readBatch]int
	n := min(len(msgs), readBatch)
	for i, msg := range msgs[:n] {
		ls[i], oks[i] = answerLayout(msg)
	}
	mu.Lock()
	for i, msg := range msgs[:n] {
		reasons[i] = -1
		if oks[i] {
			reasons[i] = handOver(pending, msg, &ls[i])
		}
	}
	mu.Unlock()
	for _, r := range reasons[:n] {
		if r >= 0 {
			forged.count(r)
		}
	}
	for _, msg := range msgs[n:] {
		deliver(mu, pending, msg, forged)
	}
}

// answerLayout lays out msg if it is a well-formed response.
func answerLayout(msg []byte) (dnswire.Layout, bool) {
	if len(msg) < dnswire.HeaderLen || msg[2]&dnswire.FlagQR == 0 {
		return dnswire.Layout{}, false
	}
	return dnswire.Walk(msg)
}

// handOver gives msg to the pending query it answers and returns -1, or
// says why it does not answer one; the caller holds pending's lock. An
// answer that differs from its query's 0x20 question only in case ends
// that query with errCaseMismatch (it goes again over TCP): a forged
// answer, or an upstream that does not keep case.
func handOver(pending pendingCalls, msg []byte, l *dnswire.Layout) int {
	id := uint16(msg[0])<<8 | uint16(msg[1])
	cl := pending[id]
	if cl == nil {
		return forgedID
	}
	switch dnswire.Answers(msg, l, cl.question) {
	case dnswire.SameQuestion:
	case dnswire.SameButCase:
		if cl.exact {
			pending.fail(id, cl, errCaseMismatch)
			return forgedCase
		}
	default:
		return forgedQuestion
	}
	delete(pending, id)
	cl.resp <- caddydns.NewWire(msg, l)
	return -1
}

// queryID returns a random message ID (ChaCha8, unpredictable to an
// off-path attacker).
func queryID() uint16 { return uint16(rand.Uint32()) }

// pendingCalls are the queries waiting on one socket or connection, by
// the ID each went out under; the owner's lock guards it.
type pendingCalls map[uint16]*call

// reserve registers cl under a random ID that no query in p uses, and
// returns it. (Queries in flight are bounded by max_concurrent, far
// below 65536.)
func (p pendingCalls) reserve(cl *call) uint16 {
	for {
		id := queryID()
		if _, busy := p[id]; !busy {
			p[id] = cl
			return id
		}
	}
}

// forget takes cl, registered under id, out of p, unless it is gone.
func (p pendingCalls) forget(id uint16, cl *call) {
	if p[id] == cl {
		delete(p, id)
	}
}

// fail ends the wait of cl, registered under id, with err (nil: the
// connection closed), unless it is gone.
func (p pendingCalls) fail(id uint16, cl *call, err error) {
	if p[id] == cl {
		delete(p, id)
		cl.err = err
		cl.resp <- nil
	}
}

// failAll ends every wait in p with err (nil: the connection closed).
func (p pendingCalls) failAll(err error) {
	for id, cl := range p {
		p.fail(id, cl, err)
	}
}
