package forward

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/caddydns/dnswire"
)

// call is one query waiting for its answer. Calls are pooled with their
// channel and timer, so waiting allocates nothing.
type call struct {
	question []byte              // as packed in the query; read under the pending map's lock
	exact    bool                // the answer must echo the question's letter case (0x20)
	resp     chan *caddydns.Wire // buffered 1; nil is sent when the connection dies, timedOut by the timer
	err      error               // why, when the connection says (set before nil is sent)
	timer    *time.Timer         // runs expire; stopped while the call is pooled
	armed    atomic.Bool         // the timer is set for this wait and has not claimed it
	stale    bool                // the timer fired as the wait ended: its expire may still run
}

// timedOut is what the timer sends when a wait's deadline passes. It is
// never an answer: nothing releases or reads it.
var timedOut = new(caddydns.Wire)

var callPool = sync.Pool{New: func() any {
	cl := &call{resp: make(chan *caddydns.Wire, 1)}
	cl.timer = time.AfterFunc(time.Hour, cl.expire)
	cl.timer.Stop()
	return cl
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
		if a != nil && a != timedOut {
			a.Release()
		}
	default:
	}
	if cl.stale {
		return // its timer's expire may yet look at it: not for another wait
	}
	cl.question, cl.err, cl.exact = nil, nil, false
	callPool.Put(cl)
}

// wait blocks until the answer comes (nil: the connection closed first),
// deadline passes, or ctx ends. The deadline is the call's pooled timer,
// which sends timedOut on resp, so that the wait is a plain receive: a
// context per try cost a tenth of a forwarded DoH request's CPU (its
// timer, its Done channel and the parent's, its registration as the
// request context's child), and a timer's channel in a select the
// runtime's timer bookkeeping at every wait and wake (~4% of a
// forwarded GET's CPU).
func (cl *call) wait(ctx context.Context, deadline time.Time) (*caddydns.Wire, error) {
	cl.armed.Store(true)
	cl.timer.Reset(time.Until(deadline))
	var a *caddydns.Wire
	if done := ctx.Done(); done == nil {
		a = <-cl.resp
	} else {
		select {
		case a = <-cl.resp:
		case <-done:
			cl.disarm()
			return nil, ctx.Err()
		}
	}
	if a == timedOut {
		return nil, context.DeadlineExceeded
	}
	cl.disarm()
	return a, nil
}

// expire is the timer's: it claims the wait and ends it.
func (cl *call) expire() {
	if cl.armed.CompareAndSwap(true, false) {
		cl.resp <- timedOut // the waiter takes it, or disarm does
	}
}

// disarm stops the timer of a wait that ended otherwise. When the timer
// claimed the wait meanwhile, it waits for its timedOut, so that it does
// not reach the call's next wait, and drops an answer that came first.
// When the timer fired but has not claimed it yet, the call is not
// pooled again (its expire, when it runs, finds it disarmed).
func (cl *call) disarm() {
	if cl.armed.CompareAndSwap(true, false) {
		if !cl.timer.Stop() {
			cl.stale = true
		}
		return
	}
	for {
		a := <-cl.resp
		if a == timedOut {
			return
		}
		if a != nil {
			a.Release()
		}
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

// answerLayout lays out msg if it is a well-formed response (with its
// question, or an error without one: see questionlessError).
func answerLayout(msg []byte) (dnswire.Layout, bool) {
	if len(msg) < dnswire.HeaderLen || msg[2]&dnswire.FlagQR == 0 {
		return dnswire.Layout{}, false
	}
	if binary.BigEndian.Uint16(msg[4:]) == 0 {
		return dnswire.WalkQuestionless(msg)
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
	case dnswire.OtherQuestion:
		if !questionlessError(msg, l) {
			return forgedQuestion
		}
		if cl.exact {
			// over UDP with 0x20: confirmed over TCP (errQuestionless)
			pending.fail(id, cl, errQuestionless)
			return -1
		}
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

// questionlessError reports whether msg is an error answer without a
// question: QDCOUNT 0, no answer or authority records, and an rcode
// other than NOERROR and NXDOMAIN (REFUSED from unbound's access
// control, FORMERR, NOTIMP), or TC. Servers send these (RFC 1035 leaves
// the question out of an error's echo to them), and dnsdist takes them
// on the same terms. Such an answer carries nothing to keep: the cache
// keeps only answers to the query's question, and the client gets it
// with its own question. Over UDP with 0x20 on, where it escapes the
// case check, the query is asked again over TCP rather than the answer
// taken (a forger of an error would need only the port and the ID).
func questionlessError(msg []byte, l *dnswire.Layout) bool {
	if l.QEnd != dnswire.HeaderLen || binary.BigEndian.Uint16(msg[4:]) != 0 || binary.BigEndian.Uint16(msg[6:]) != 0 || binary.BigEndian.Uint16(msg[8:]) != 0 {
		return false
	}
	return (l.Rcode != dns.RcodeSuccess && l.Rcode != dns.RcodeNameError) || msg[2]&dnswire.FlagTC != 0
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
