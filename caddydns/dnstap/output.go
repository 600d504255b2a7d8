package dnstap

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	tap "github.com/dnstap/golang-dnstap"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

// event is one message to encode.
type event struct {
	kind      tap.Message_Type
	at        time.Time
	client    netip.AddrPort
	transport string
	upstream  string
	id        []byte
	msg       []byte
}

// output is one dnstap destination and the goroutine that writes to it;
// a socket is dialled again, every retry interval, while it is down.
type output struct {
	network, addr string
	queue         chan event
	stop          chan struct{}
	done          chan struct{}
	logger        *zap.Logger
	dropped, sent atomic.Uint64
}

var (
	outputs = caddy.NewUsagePool()
	live    sync.Map // *output -> struct{}
)

const (
	retryInterval = time.Second
	writeTimeout  = 5 * time.Second
)

func newOutput(network, addr string, buffer int, logger *zap.Logger) (*output, error) {
	o := &output{network: network, addr: addr, queue: make(chan event, buffer), stop: make(chan struct{}), done: make(chan struct{}), logger: logger}
	var w tap.Writer
	if network == "file" {
		f, err := os.OpenFile(addr, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
		if err != nil {
			return nil, err
		}
		if w, err = tap.NewWriter(f, nil); err != nil {
			f.Close()
			return nil, err
		}
		go o.run(func() (tap.Writer, func(), error) { return w, func() { f.Close() }, nil })
	} else {
		go o.run(o.dial)
	}
	live.Store(o, struct{}{})
	return o, nil
}

// dial connects to the socket and opens a bidirectional frame stream.
func (o *output) dial() (tap.Writer, func(), error) {
	c, err := net.DialTimeout(o.network, o.addr, writeTimeout)
	if err != nil {
		return nil, nil, err
	}
	w, err := tap.NewWriter(c, &tap.WriterOptions{Bidirectional: true, Timeout: writeTimeout})
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return w, func() { c.Close() }, nil
}

// run writes the queued messages; while the output is down, they pile up
// in the queue, and what does not fit is dropped.
func (o *output) run(open func() (tap.Writer, func(), error)) {
	defer close(o.done)
	var w tap.Writer
	closeConn := func() {}
	for {
		if w == nil {
			var err error
			if w, closeConn, err = open(); err != nil {
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
		var ev event
		select {
		case ev = <-o.queue:
		case <-o.stop:
			o.drain(w)
			_ = w.Close()
			closeConn()
			return
		}
		b, err := proto.Marshal(frame(&ev))
		if err != nil {
			continue
		}
		_, err = w.WriteFrame(b)
		if f, ok := w.(interface{ Flush() error }); ok && err == nil && len(o.queue) == 0 {
			err = f.Flush() // frames are buffered: out with them while the queue is quiet
		}
		if err != nil {
			o.dropped.Add(1)
			o.logger.Warn("dnstap output lost", zap.String("output", o.network+":"+o.addr), zap.Error(err))
			closeConn()
			w = nil
			continue
		}
		o.sent.Add(1)
	}
}

// drain writes what is queued when the output stops.
func (o *output) drain(w tap.Writer) {
	for {
		select {
		case ev := <-o.queue:
			if b, err := proto.Marshal(frame(&ev)); err == nil {
				if _, err := w.WriteFrame(b); err != nil {
					return
				}
				o.sent.Add(1)
			}
		default:
			return
		}
	}
}

// Destruct implements caddy.Destructor: the last config using the output
// is gone; what is queued is written, the stream closed.
func (o *output) Destruct() error {
	live.Delete(o)
	close(o.stop)
	select {
	case <-o.done:
	case <-time.After(writeTimeout):
	}
	return nil
}

var (
	dnsfront   = []byte("dnsfront")
	socketINET = tap.SocketFamily_INET
	socketIN6  = tap.SocketFamily_INET6
)

// frame is the dnstap message of ev.
func frame(ev *event) *tap.Dnstap {
	typ := tap.Dnstap_MESSAGE
	m := &tap.Message{Type: &ev.kind}
	protocol := tap.SocketProtocol_DOT
	if ev.transport == "doh" {
		protocol = tap.SocketProtocol_DOH
	}
	m.SocketProtocol = &protocol
	fam := socketINET
	if ev.client.Addr().Is6() {
		fam = socketIN6
	}
	m.SocketFamily = &fam
	if ev.client.IsValid() {
		port := uint32(ev.client.Port())
		m.QueryAddress, m.QueryPort = ev.client.Addr().AsSlice(), &port
	}
	sec, nsec := uint64(ev.at.Unix()), uint32(ev.at.Nanosecond())
	switch ev.kind {
	case tap.Message_CLIENT_QUERY:
		m.QueryMessage, m.QueryTimeSec, m.QueryTimeNsec = ev.msg, &sec, &nsec
	case tap.Message_CLIENT_RESPONSE:
		m.ResponseMessage, m.ResponseTimeSec, m.ResponseTimeNsec = ev.msg, &sec, &nsec
	case tap.Message_FORWARDER_QUERY, tap.Message_FORWARDER_RESPONSE:
		// the upstream's side: the response address is the upstream's
		up := ev.upstream
		if _, addr, ok := strings.Cut(up, "://"); ok {
			up = addr
		}
		if ap, err := netip.ParseAddrPort(up); err == nil {
			port := uint32(ap.Port())
			m.ResponseAddress, m.ResponsePort = ap.Addr().AsSlice(), &port
		}
		udp := tap.SocketProtocol_UDP
		m.SocketProtocol = &udp
		if ev.kind == tap.Message_FORWARDER_QUERY {
			m.QueryMessage, m.QueryTimeSec, m.QueryTimeNsec = ev.msg, &sec, &nsec
		} else {
			m.ResponseMessage, m.ResponseTimeSec, m.ResponseTimeNsec = ev.msg, &sec, &nsec
		}
	}
	return &tap.Dnstap{Type: &typ, Identity: ev.id, Version: dnsfront, Message: m}
}

// collector reports every live output.
type collector struct{}

var (
	descSent    = prometheus.NewDesc("dnsfront_dnstap_sent_total", "dnstap messages written to an output.", []string{"output"}, nil)
	descDropped = prometheus.NewDesc("dnsfront_dnstap_dropped_total", "dnstap messages dropped: the output's queue was full (the output slow or down), or a write failed.", []string{"output"}, nil)
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
