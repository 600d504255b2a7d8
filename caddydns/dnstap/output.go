package dnstap

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	tap "github.com/dnstap/golang-dnstap"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/promreg"
)

// output is one dnstap destination and the goroutine that writes to it;
// a socket is dialled again, every retry interval, while it is down.
//
// Senders encode their messages themselves, as frame-stream data frames
// appended to one batch under a short lock; the goroutine takes the whole
// batch and writes it with one write, FlushDelay after its first message
// (or at once when it reaches flushBytes), so that a busy server writes a
// few hundred messages a write, not a few. A batch holds at most limit
// messages and MaxBatchBytes octets: past either they are dropped (and
// counted), never waited for, as when the output is slow or down.
type output struct {
	network, addr string
	limit         int
	stop          chan struct{}
	done          chan struct{}
	wake          chan struct{} // a batch began, or is large (capacity 1)
	logger        *zap.Logger
	dropped, sent atomic.Uint64

	mu      sync.Mutex
	batch   []byte // frames waiting, each its length and its message
	pending int    // messages in batch
	large   bool   // wake was signalled for a batch past flushBytes
}

var (
	outputs = caddy.NewUsagePool()
	live    sync.Map // *output -> struct{}
)

const (
	retryInterval = time.Second
	writeTimeout  = 5 * time.Second
	// keepBatch is the largest batch buffer kept for reuse: a burst that
	// made a larger one lets it go
	keepBatch = 4 << 20
	// MaxBatchBytes bounds the octets waiting for an output, whatever
	// the buffer's count: messages past it are dropped too
	MaxBatchBytes = 32 << 20
	// FlushDelay is how long a batch's first message waits for others
	// to join it before the batch is written. A write and the reader's
	// wake-up cost about as much as encoding ten messages: written a few
	// at a time, they were a third of what dnstap cost a query.
	FlushDelay = time.Millisecond
	// flushBytes: a batch this large is written at once
	flushBytes = 256 << 10
)

// stream is an open output: the frame-stream writer (its handshake done),
// and the connection or file under it, to which batches of data frames
// are written whole.
type stream struct {
	fs    tap.Writer
	raw   io.Writer
	close func()
}

func newOutput(network, addr string, buffer int, logger *zap.Logger) (*output, error) {
	o := &output{network: network, addr: addr, limit: buffer, stop: make(chan struct{}), done: make(chan struct{}), wake: make(chan struct{}, 1), logger: logger}
	if network == "file" {
		f, err := os.OpenFile(addr, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
		if err != nil {
			return nil, err
		}
		w, err := tap.NewWriter(f, nil)
		if err != nil {
			f.Close()
			return nil, err
		}
		s := &stream{fs: w, raw: f, close: func() { f.Close() }}
		go o.run(func() (*stream, error) { return s, nil })
	} else {
		go o.run(o.dial)
	}
	live.Store(o, struct{}{})
	return o, nil
}

// dial connects to the socket and opens a bidirectional frame stream.
func (o *output) dial() (*stream, error) {
	c, err := net.DialTimeout(o.network, o.addr, writeTimeout)
	if err != nil {
		return nil, err
	}
	w, err := tap.NewWriter(c, &tap.WriterOptions{Bidirectional: true, Timeout: writeTimeout})
	if err != nil {
		c.Close()
		return nil, err
	}
	return &stream{fs: w, raw: deadlineWriter{c}, close: func() { c.Close() }}, nil
}

// deadlineWriter bounds each write to a socket by writeTimeout.
type deadlineWriter struct{ c net.Conn }

func (d deadlineWriter) Write(b []byte) (int, error) {
	_ = d.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return d.c.Write(b)
}

// add encodes one message into the batch, or drops it when the batch is
// full.
func (o *output) add(head []byte, kind int, at time.Time, client netip.AddrPort, transport string, up caddydns.Hop, msg []byte) {
	o.mu.Lock()
	if o.pending >= o.limit || len(o.batch) >= MaxBatchBytes {
		o.mu.Unlock()
		o.dropped.Add(1)
		return
	}
	o.batch = appendFrame(o.batch, head, kind, at, client, transport, up, msg)
	o.pending++
	// the first message starts the batch's FlushDelay; a large batch
	// (or one half the buffer's count) ends it
	wake := o.pending == 1
	if !o.large && (len(o.batch) >= flushBytes || o.pending >= (o.limit+1)/2) {
		o.large, wake = true, true
	}
	o.mu.Unlock()
	if wake {
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}
}

// take returns the batch and how many messages it holds, and leaves an
// empty one (spare's buffer) in its place.
func (o *output) take(spare []byte) ([]byte, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	b, n := o.batch, o.pending
	o.batch, o.pending, o.large = spare[:0], 0, false
	return b, n
}

// run writes the batches; while the output is down, messages wait in the
// batch, and what does not fit is dropped.
func (o *output) run(open func() (*stream, error)) {
	defer close(o.done)
	var s *stream
	var spare []byte
	fill := time.NewTimer(FlushDelay)
	fill.Stop()
	for {
		if s == nil {
			var err error
			if s, err = open(); err != nil {
				o.logger.Debug("dnstap output down", zap.String("output", o.network+":"+o.addr), zap.Error(err))
				select {
				case <-o.stop:
					return
				case <-time.After(retryInterval):
				}
				continue
			}
			o.logger.Info("dnstap output connected", zap.String("output", o.network+":"+o.addr))
		}
		// a batch begins (or one waited while the output was down) ...
		select {
		case <-o.wake:
		case <-o.stop:
			o.finish(s)
			return
		}
		// ... and others join it, until FlushDelay or it is large
		fill.Reset(FlushDelay)
		select {
		case <-fill.C:
		case <-o.wake:
			fill.Stop()
		case <-o.stop:
			o.finish(s)
			return
		}
		b, n := o.take(spare)
		if n == 0 {
			spare = b
			continue
		}
		if _, err := s.raw.Write(b); err != nil {
			o.dropped.Add(uint64(n))
			o.logger.Warn("dnstap output lost", zap.String("output", o.network+":"+o.addr), zap.Error(err))
			s.close()
			s = nil
		} else {
			o.sent.Add(uint64(n))
		}
		if cap(b) <= keepBatch {
			spare = b
		} else {
			spare = nil
		}
	}
}

// finish writes what is waiting when the output stops, and closes the
// stream.
func (o *output) finish(s *stream) {
	if b, n := o.take(nil); n > 0 {
		if _, err := s.raw.Write(b); err != nil {
			o.dropped.Add(uint64(n))
		} else {
			o.sent.Add(uint64(n))
		}
	}
	_ = s.fs.Close()
	s.close()
}

// Destruct implements caddy.Destructor: the last config using the output
// is gone; what is waiting is written, the stream closed.
func (o *output) Destruct() error {
	live.Delete(o)
	close(o.stop)
	select {
	case <-o.done:
	case <-time.After(writeTimeout):
	}
	return nil
}

// collector reports every live output.
type collector struct{}

var (
	descSent    = prometheus.NewDesc("dnsfront_dnstap_sent_total", "dnstap messages written to an output.", []string{"output"}, nil)
	descDropped = prometheus.NewDesc("dnsfront_dnstap_dropped_total", "dnstap messages dropped: the output's batch was full (the output slow or down), or a write failed.", []string{"output"}, nil)
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descSent
	ch <- descDropped
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	live.Range(func(k, _ any) bool {
		o := k.(*output)
		name := o.network + ":" + o.addr
		ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(o.sent.Load()), name)
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(o.dropped.Load()), name)
		return true
	})
}

func registerMetrics(ctx caddy.Context) error {
	return promreg.Register(ctx.GetMetricsRegistry(), collector{})
}
