package dotapp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/dohhandler"
)

// HTTP/2 settings and limits of the dedicated DoH server.
const (
	h2MaxFrame = 16384 // SETTINGS_MAX_FRAME_SIZE read (the protocol's default)
	// h2HeaderListSize is SETTINGS_MAX_HEADER_LIST_SIZE: room for a GET
	// of any DNS message (65535 octets are 87,380 in base64url); a longer
	// list gets 431.
	h2HeaderListSize = 96 << 10
	h2HeaderTable    = 4096    // SETTINGS_HEADER_TABLE_SIZE (the default)
	h2StreamWindow   = 65535   // a stream's receive window (the default): one DNS message
	h2ConnWindow     = 1 << 20 // the connection's receive window
	// h2MaxQueued bounds the octets of frames queued for a client that
	// does not read them (floods of PING or SETTINGS wanting answers):
	// past it the connection is closed (ENHANCE_YOUR_CALM).
	h2MaxQueued = 1 << 20
	// h2MaxEmpty is how many frames that carry nothing (DATA without
	// data or END_STREAM) a connection may send in its life.
	h2MaxEmpty = 100
	// h2Recent is how many closed streams are remembered, to tell a
	// frame for a closed stream from one for a stream never opened.
	h2Recent    = 32
	h2MaxWindow = 1<<31 - 1
	// http2FrameHeaderLen is a frame header's length (RFC 9113 4.1).
	http2FrameHeaderLen = 9
	// h2Drain is how much more of its body a request answered before its
	// end (413, 431) may send, read and dropped, so that a client that
	// reads its answer only once it has sent its request (curl) sees it;
	// past it the stream is reset with NO_ERROR (RFC 9113 8.1).
	h2Drain = 256 << 10
)

// h2conn is one HTTP/2 connection of a DoH server, shaped like a DoT
// connection: one reader decodes frames and requests; each complete
// request is answered on a worker (workers.go; a slot among
// max_in_flight, which is also SETTINGS_MAX_CONCURRENT_STREAMS: a reset
// stream keeps its slot until its answer is made, so resets cannot make
// more work than that, CVE-2023-44487); answers and control frames are
// framed under one lock into a buffer that a writer goroutine sends, as
// much as is ready in one write.
type h2conn struct {
	*h2live // while the connection runs: from livePool, given back when it parks

	c    *conn
	rw   io.ReadWriter  // the TLS connection (tests: any)
	hdec *hpack.Decoder // from the first request: its dynamic table is the connection's
	henc *hpack.Encoder // from the first answer, writing into the live hbuf

	// the reader's own
	maxStream   uint32 // highest stream ID the client used
	empty       int32
	consumed    int32 // DATA octets received and not yet given back (connection window)
	connRecv    int32
	maxStreams  int32
	gotSettings bool

	mu           sync.Mutex
	goaway       bool                    // GOAWAY sent: no new streams
	closed       bool                    // the connection is done: answers are dropped
	peerMaxFrame int32                   // the client's SETTINGS_MAX_FRAME_SIZE
	recentN      int32                   // streams remembered in recent
	recent       *[h2Recent]recentStream // from the first closed stream
	connSend     int64                   // the connection's send window
	initialSend  int64                   // the client's SETTINGS_INITIAL_WINDOW_SIZE

	last monoTime // when the last frame came

	sem      chan struct{} // from the first request
	answers  sync.WaitGroup
	inFlight atomic.Int32
}

// h2live is what a connection holds only while it runs (a parked one
// holds none of it): the Framer and its buffers, the stream table, the
// header block being decoded, the writer's state. It comes from
// livePool, so that a connection that resumes reuses another's rather
// than making its own.
type h2live struct {
	in  *bufio.Reader // rw's octets, for fr; empty when the connection parks
	fr  *http2.Framer // reads: the reader only; writes: under mu, into out
	blk *hblock       // the header block being decoded, from the first

	// under mu
	out          h2buf // frames to send
	hbuf         bytes.Buffer
	streams      map[uint32]*h2stream
	blocked      []*h2stream // answers waiting for window
	blockedSince time.Time
	writing      int        // octets the writer is sending
	written      *sync.Cond // the writer sent a batch (or gave up); made by the first wait

	// the writer's, from startWriter to stopWriter
	kick  chan struct{}
	stop  chan struct{}
	wdone chan struct{}
}

var livePool = sync.Pool{New: func() any { return new(h2live) }}

// putReader gives a connection's read buffer back, once its reader has
// stopped.
func putReader(in *bufio.Reader) {
	if in != nil {
		in.Reset(nil)
		readerPool.Put(in)
	}
}

// takeLive gives the connection its live state, with a new Framer.
func (h *h2conn) takeLive() {
	l := livePool.Get().(*h2live)
	l.in = readerPool.Get().(*bufio.Reader) // DoT's: a batch of requests; a larger frame is read past it
	l.in.Reset(h.rw)
	h.h2live = l
	h.newFramer()
}

// dropLive gives the live state of a quiet connection back to livePool:
// its buffers are kept there unless they grew large, its Framer goes.
// No other goroutine uses it: the writer has stopped and no answer is in
// flight.
func (h *h2conn) dropLive() {
	h.mu.Lock()
	l := h.h2live
	h.h2live = nil
	h.mu.Unlock()
	putReader(l.in)
	l.in, l.fr = nil, nil
	if l.blk != nil {
		*l.blk = hblock{}
	}
	if cap(l.out.b) > 64<<10 {
		l.out.b = nil
	}
	l.out.b = l.out.b[:0]
	if l.hbuf.Cap() > 4<<10 {
		l.hbuf = bytes.Buffer{}
	}
	l.hbuf.Reset()
	clear(l.streams) // empty already
	if cap(l.blocked) > 256 {
		l.blocked = nil
	}
	l.blocked = l.blocked[:0]
	l.blockedSince, l.writing, l.written = time.Time{}, 0, nil
	l.kick, l.stop, l.wdone = nil, nil, nil
	livePool.Put(l)
}

type recentStream struct {
	id   uint32
	byUs bool // closed by our RST_STREAM: the client's frames in flight are ignored
}

// h2stream is a request and its answer.
type h2stream struct {
	h             *h2conn
	id            uint32
	req           dohhandler.Request
	path          string
	contentLength int64 // -1: none
	bp            *[]byte
	recvWindow    int32
	sendWindow    int64
	remoteDone    bool // END_STREAM received
	refused       bool // answered before its body came (413, 431): the rest is dropped
	drained       int  // octets of body dropped since
	reset         bool
	blocked       bool
	answering     bool // a goroutine is making its answer (h2conn.mu)
	closed        bool // out of the stream table (h2conn.mu)
	head          bool
	out           []byte // answer octets still to send
}

// frameBuffered reports whether in holds a whole frame: its header and
// its payload.
func frameBuffered(in *bufio.Reader) bool {
	n := in.Buffered()
	if n < http2FrameHeaderLen {
		return false
	}
	b, _ := in.Peek(http2FrameHeaderLen)
	return n >= http2FrameHeaderLen+(int(b[0])<<16|int(b[1])<<8|int(b[2]))
}

// h2buf is where the Framer writes, under h2conn.mu.
type h2buf struct{ b []byte }

func (b *h2buf) Write(p []byte) (int, error) {
	b.b = append(b.b, p...)
	return len(p), nil
}

func newH2(c *conn, rw io.ReadWriter, maxStreams int) *h2conn {
	h := &h2conn{
		c: c, rw: rw,
		connSend:     65535,
		initialSend:  65535,
		peerMaxFrame: 16384,
		connRecv:     h2ConnWindow,
		maxStreams:   int32(maxStreams),
	}
	h.takeLive()
	return h
}

// serveH2 serves an HTTP/2 connection: runH2 (a build for the benchmark
// may make it Go's own server, see doh_nethttp.go).
var serveH2 func(*conn)

func init() {
	if serveH2 == nil {
		serveH2 = runH2
	}
}

// newFramer gives the connection a Framer: at the start, and when it
// resumes from parking (a parked connection keeps none: its read buffer
// is as large as the largest frame it read; nor does livePool). A Framer holds no state
// between frames that are not in a header block; HPACK's is the
// connection's own (hdec, henc).
func (h *h2conn) newFramer() {
	h.fr = http2.NewFramer(&h.out, h.in)
	h.fr.SetMaxReadFrameSize(h2MaxFrame)
	h.fr.SetReuseFrames()
}

// runH2 serves an HTTP/2 connection until it ends or parks.
func runH2(c *conn) {
	srv := c.srv.Load()
	h := newH2(c, c.tc, srv.set.maxInFlight)
	c.h2 = h
	h.startWriter()
	h.serve(h.start)
}

// serve runs read (the preface, or the frame loop) and ends the
// connection after it, unless it parked.
func (h *h2conn) serve(read func() h2end) {
	c := h.c
	end := h2Failed
	func() {
		defer func() {
			if r := recover(); r != nil {
				c.srv.Load().logger.Error("doh connection panicked", zap.Any("panic", r))
				end = h2Failed
				c.abort()
			}
		}()
		end = read()
	}()
	if end == h2Parked {
		return
	}
	h.finish(end == h2Graceful)
	c.closeOut()
}

// How a reader stops.
type h2end int

const (
	h2Graceful h2end = iota // the streams in flight are answered, then the connection closes
	h2Failed                // a connection error: closed once the GOAWAY is out
	h2Parked                // quiet: no goroutine until the client sends again
)

// start reads the client's preface, sends the server's, and reads frames.
func (h *h2conn) start() h2end {
	h.setDeadline(time.Now().Add(h.c.srv.Load().set.read))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(h.in, preface[:]); err != nil {
		return h2Graceful
	}
	if string(preface[:]) != http2.ClientPreface {
		h.connError(http2.ErrCodeProtocol)
		return h2Failed
	}
	h.mu.Lock()
	_ = h.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(h.maxStreams)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: h2HeaderListSize},
	)
	_ = h.fr.WriteWindowUpdate(0, h2ConnWindow-65535)
	h.mu.Unlock()
	h.wake()
	h.last = monoNow()
	return h.read()
}

// resume goes on with a parked connection whose socket turned readable.
func (h *h2conn) resume() {
	h.takeLive()
	h.startWriter()
	h.serve(h.read)
}

// read reads frames until the connection ends or parks.
func (h *h2conn) read() h2end {
	c := h.c
	var set monoTime // the read deadline, as set here (lazyReadDeadline)
	for {
		if c.aborted.Load() {
			return h2Failed // a write failed, or the grace period ended
		}
		srv := c.srv.Load()
		deadline := c.idleDeadline(srv, h.last.Time())
		wait := deadline
		canPark := c.rc != nil && idlePoller.ok()
		now := time.Now()
		if canPark {
			wait = minTime(deadline, now.Add(srv.set.parkAfter))
		}
		c.reading.Store(true)
		if c.raw != nil && h.in.Buffered() == 0 {
			// a wait that ends early parks the connection a little sooner,
			// or goes round this loop again (below)
			set = lazyReadDeadline(c.raw, set, now, wait, srv.set.parkAfter/8)
		}
		_, err := h.in.Peek(1)
		c.reading.Store(false)
		begun := err == nil // a frame has begun: nothing is lost if not
		if begun && c.raw != nil && !frameBuffered(h.in) {
			// the rest of the frame must come within read_timeout (a slow
			// sender), not within the wait for a frame, which only parks
			// the connection: the Framer cannot take up a frame again
			// once a read of it has failed
			_ = c.raw.SetReadDeadline(time.Now().Add(srv.set.read))
			set = 0
		}
		if begun {
			var f http2.Frame
			if f, err = h.fr.ReadFrame(); err == nil {
				h.last = monoNow()
				err = h.process(f)
			}
		}
		if err != nil {
			switch e := err.(type) {
			case http2.StreamError:
				h.resetStream(e.StreamID, e.Code)
				continue
			case http2.ConnectionError:
				h.connError(http2.ErrCode(e))
				return h2Failed
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				h.connError(http2.ErrCodeFrameSize)
				return h2Failed
			}
			// quiet, with nothing of a frame read and nothing in flight:
			// park (a read returns what TLS holds before it waits, so
			// TLS holds nothing either)
			if canPark && isTimeout(err) && !begun && time.Now().Before(deadline) && h.park() {
				return h2Parked
			}
			if isTimeout(err) && !begun && time.Now().Before(deadline) {
				continue // streams in flight: wait on
			}
			// idle (or draining), or the client went: stop reading, and
			// answer the streams in flight
			if ce := srv.logger.Check(zapcore.DebugLevel, "http/2 connection ends"); ce != nil {
				ce.Write(zap.Stringer("client", c.client), zap.Error(err))
			}
			h.goAway(http2.ErrCodeNo)
			return h2Graceful
		}
		if h.stalled(h.last.Time()) || c.expired(srv) {
			h.goAway(http2.ErrCodeNo)
			return h2Graceful
		}
		if h.flooded() {
			// frames for a client that does not read them keep piling
			// up (requests wait in endRequest; this is the rest)
			h.connError(http2.ErrCodeEnhanceYourCalm)
			return h2Failed
		}
	}
}

// park lets a quiet connection go of its goroutines and write buffers:
// with no stream open, no answer being made and nothing to send, the
// writer stops and the idle poller resumes the connection when its
// client sends again. It reports false when the connection is not quiet
// or cannot be parked.
func (h *h2conn) park() bool {
	h.mu.Lock()
	quiet := len(h.streams) == 0 && (h.blk == nil || !h.blk.active) && len(h.out.b) == 0 && h.writing == 0 && h.inFlight.Load() == 0
	h.mu.Unlock()
	if !quiet {
		return false
	}
	h.stopWriter()
	h.dropLive()
	c := h.c
	c.park.mu.Lock()
	defer c.park.mu.Unlock()
	c.park.since = h.last
	if c.parkUntil(monoOf(c.idleDeadline(c.srv.Load(), h.last.Time())), false) {
		return true
	}
	h.takeLive()
	h.startWriter()
	return false
}

// endParked ends a parked connection (its idle timeout, or an abort):
// a GOAWAY, written here (no writer runs), then close.
func (h *h2conn) endParked() {
	c := h.c
	if !c.aborted.Load() {
		h.takeLive()
		h.mu.Lock()
		h.goaway = true
		_ = h.fr.WriteGoAway(h.maxStream, http2.ErrCodeNo, nil)
		h.closed = true
		h.mu.Unlock()
		_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = h.rw.Write(h.out.b)
		h.dropLive()
	}
	c.closeOut()
}

// setDeadline bounds the reader's next wait.
func (h *h2conn) setDeadline(t time.Time) {
	if h.c.raw != nil {
		_ = h.c.raw.SetReadDeadline(t)
	}
}

// stalled reports whether answers have waited for flow-control window
// longer than the write timeout (a client that keeps its window shut).
func (h *h2conn) stalled(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.blockedSince.IsZero() && now.Sub(h.blockedSince) > h.c.srv.Load().set.write
}

var errNotSettings = http2.ConnectionError(http2.ErrCodeProtocol)

// process handles a frame; an error is the StreamError or
// ConnectionError it causes.
func (h *h2conn) process(f http2.Frame) error {
	if !h.gotSettings {
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return errNotSettings // RFC 9113 3.4: the preface ends with SETTINGS
		}
		h.gotSettings = true
	}
	switch f := f.(type) {
	case *http2.HeadersFrame:
		return h.onHeadersFrame(f)
	case *http2.ContinuationFrame:
		return h.onContinuation(f)
	case *http2.DataFrame:
		return h.onData(f)
	case *http2.SettingsFrame:
		return h.onSettings(f)
	case *http2.WindowUpdateFrame:
		return h.onWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		h.mu.Lock()
		_ = h.fr.WritePing(true, f.Data)
		err := h.queuedLocked()
		h.mu.Unlock()
		h.wake()
		return err
	case *http2.RSTStreamFrame:
		if f.StreamID > h.maxStream {
			return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 6.4: an idle stream
		}
		h.mu.Lock()
		if st := h.streams[f.StreamID]; st != nil {
			st.reset = true
			h.closeStreamLocked(st, false)
		}
		h.mu.Unlock()
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
	case *http2.GoAwayFrame:
		// the client will open no more streams: answer those open, and end
		h.goAway(http2.ErrCodeNo)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // a client never pushes
	}
	return nil
}

// onRequest takes a decoded header block: a new request, or the
// trailers that end one.
func (h *h2conn) onRequest(b *hblock) error {
	id := b.id
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol) // client streams are odd
	}
	h.mu.Lock()
	st := h.streams[id]
	done := st != nil && st.remoteDone // (see onData)
	h.mu.Unlock()
	if st != nil {
		if done {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		}
		// trailers: they end the stream, and carry no pseudo-header
		if !b.endStream || b.pseudo != 0 {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		return h.endRequest(st)
	}
	if id <= h.maxStream {
		if r, ok := h.recentStream(id); ok {
			if r.byUs {
				return nil // sent before our reset arrived
			}
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 5.1.1: IDs only grow
	}
	h.maxStream = id
	if b.hasPrio && b.prioDep == id {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	h.mu.Lock()
	goaway, open := h.goaway, len(h.streams)
	h.mu.Unlock()
	if goaway {
		return nil // past our GOAWAY's last stream: ignored, the client retries elsewhere
	}
	if open >= int(h.maxStreams) {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}
	}
	if !b.truncated && b.pseudo&(pseudoMethod|pseudoScheme|pseudoPath) != pseudoMethod|pseudoScheme|pseudoPath || b.path == "" && !b.truncated {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol} // RFC 9113 8.3.1
	}
	st = streamPool.Get().(*h2stream)
	*st = h2stream{h: h, id: id, contentLength: b.contentLength, recvWindow: h2StreamWindow, head: b.method == http.MethodHead}
	st.req.Method, st.req.ContentType, st.req.Accept, st.req.Client, st.req.Local = b.method, b.contentType, b.accept, h.c.client, h.c.local
	st.req.ServerName = h.c.sni
	st.path, st.req.RawQuery, _ = strings.Cut(b.path, "?")
	st.bp = packPool.Get().(*[]byte)
	h.mu.Lock()
	st.sendWindow = h.initialSend
	if h.streams == nil {
		h.streams = make(map[uint32]*h2stream)
	}
	h.streams[id] = st
	h.mu.Unlock()
	if b.truncated {
		st.remoteDone = b.endStream
		h.refuse(st, http.StatusRequestHeaderFieldsTooLarge, "Request Header Fields Too Large: the header list is over "+strconv.Itoa(h2HeaderListSize)+" octets")
		return nil
	}
	if st.contentLength > caddydns.MaxMessage {
		st.remoteDone = b.endStream
		h.refuse(st, http.StatusRequestEntityTooLarge, dohhandler.BodyTooLarge)
		return nil // st may be released
	}
	if len(b.forwarded) > 0 {
		if msg := h.c.srv.Load().doh.forwardedFor(&st.req.Client, string(b.forwarded)); msg != "" {
			st.remoteDone = b.endStream
			h.refuse(st, http.StatusBadRequest, msg)
			return nil
		}
	}
	if b.endStream {
		return h.endRequest(st)
	}
	return nil
}

// onData takes a request's body.
func (h *h2conn) onData(f *http2.DataFrame) error {
	id, n := f.StreamID, int32(f.Length)
	// the connection's window first: it counts every DATA frame
	if h.connRecv -= n; h.connRecv < 0 {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	if h.consumed += n; h.consumed >= h2ConnWindow/2 {
		h.mu.Lock()
		_ = h.fr.WriteWindowUpdate(0, uint32(h.consumed))
		h.mu.Unlock()
		h.connRecv += h.consumed
		h.consumed = 0
		h.wake()
	}
	// a stream whose request has ended belongs to its answer (which may
	// release it): only the lookup, under the lock, may look at it
	h.mu.Lock()
	st := h.streams[id]
	done := st != nil && st.remoteDone
	h.mu.Unlock()
	if st == nil {
		if id > h.maxStream {
			return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		}
		if r, ok := h.recentStream(id); ok && r.byUs {
			return nil
		}
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	}
	if done {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	}
	if st.recvWindow -= n; st.recvWindow < 0 {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
	}
	data := f.Data()
	if len(data) == 0 && !f.StreamEnded() {
		if h.empty++; h.empty > h2MaxEmpty {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	}
	if st.refused {
		// answered: the rest of the body is dropped, up to h2Drain
		if st.drained += len(data); st.drained > h2Drain && !f.StreamEnded() {
			h.mu.Lock()
			if !st.reset {
				h.rstLocked(st, http2.ErrCodeNo)
			}
			h.mu.Unlock()
			return nil
		}
	} else {
		body := len(st.req.Body) + len(data)
		if st.contentLength >= 0 && int64(body) > st.contentLength {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol} // RFC 9113 8.1.1
		}
		if body > caddydns.MaxMessage {
			st.remoteDone = f.StreamEnded()
			h.refuse(st, http.StatusRequestEntityTooLarge, dohhandler.BodyTooLarge)
			if st.remoteDone {
				return nil // st may be released
			}
		} else {
			st.req.Body = append((*st.bp)[:len(st.req.Body)], data...)
			*st.bp = st.req.Body[:0]
		}
	}
	if f.StreamEnded() {
		return h.endRequest(st)
	}
	if st.recvWindow < h2StreamWindow/2 {
		h.mu.Lock()
		_ = h.fr.WriteWindowUpdate(id, uint32(h2StreamWindow-st.recvWindow))
		h.mu.Unlock()
		st.recvWindow = h2StreamWindow
		h.wake()
	}
	return nil
}

// endRequest takes the request's end (END_STREAM) and has it answered.
// With max_in_flight answers being made, it waits for one to finish.
func (h *h2conn) endRequest(st *h2stream) error {
	st.remoteDone = true
	if st.refused {
		h.mu.Lock()
		if len(st.out) == 0 && !st.reset {
			h.closeStreamLocked(st, false)
		}
		h.mu.Unlock()
		return nil
	}
	if st.contentLength >= 0 && int64(len(st.req.Body)) != st.contentLength {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}
	}
	// a client that does not read its answers is not given more
	if err := h.waitQueue(); err != nil {
		return err
	}
	if h.sem == nil {
		h.sem = make(chan struct{}, h.maxStreams) // from the first request: an idle connection holds less
	}
	h.sem <- struct{}{}
	h.answers.Add(1)
	h.inFlight.Add(1)
	h.mu.Lock()
	st.answering = true
	h.mu.Unlock()
	dispatch(st)
	return nil
}

// wakeWaiters wakes the reader waiting in waitQueue, if any; h.mu is
// held.
func (h *h2conn) wakeWaiters() {
	if h.written != nil {
		h.written.Broadcast()
	}
}

// waitQueue waits while more than h2MaxQueued octets wait to be sent to
// the client (it does not read them): a reader that takes no new request
// meanwhile keeps the connection's memory bounded; the write timeout
// ends it if the client never reads.
func (h *h2conn) waitQueue() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.out.b)+h.writing > h2MaxQueued {
		if h.closed || h.c.aborted.Load() {
			return http2.ConnectionError(http2.ErrCodeNo)
		}
		if h.written == nil {
			h.written = sync.NewCond(&h.mu)
		}
		h.written.Wait()
	}
	return nil
}

// answer makes a stream's answer through the Endpoint of the server that
// owns the connection now, and queues it.
func (h *h2conn) answer(st *h2stream) {
	defer h.answers.Done()
	defer func() { <-h.sem }()
	defer h.inFlight.Add(-1)
	srv := h.c.enter()
	var rep dohhandler.Reply
	if !srv.doh.isDoH(st.path) {
		rep = srv.doh.other(st.path)
	} else {
		st.req.Path = st.path
		rep = srv.doh.endpoint.Serve(context.Background(), &st.req, st.bp)
	}
	srv.doh.finish(&rep)
	srv.active.Add(-1)
	h.mu.Lock()
	h.respondLocked(st, &rep)
	st.answering = false
	if st.closed {
		releaseStream(st) // closed while it was being answered, or just now
	}
	h.mu.Unlock()
	h.wake()
}

// refuse answers a stream with an HTTP error before its request is
// complete; what else it sends is dropped.
func (h *h2conn) refuse(st *h2stream, status int, msg string) {
	st.refused = true
	srv := h.c.srv.Load()
	rep := srv.doh.endpoint.Refuse(status, msg)
	srv.doh.finish(&rep)
	h.mu.Lock()
	h.respondLocked(st, &rep)
	h.mu.Unlock()
	h.wake()
}

// respondLocked frames a reply: HEADERS, then DATA as far as the windows
// let it go.
func (h *h2conn) respondLocked(st *h2stream, rep *dohhandler.Reply) {
	if st.reset || h.closed {
		return
	}
	if rep.Drop {
		h.rstLocked(st, http2.ErrCodeInternal) // as net/http resets a request Caddy's handler drops
		return
	}
	body := rep.Body
	if st.head {
		body = nil
	}
	h.hbuf.Reset()
	enc := h.encoder()
	_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(rep.Status)})
	if rep.ContentType != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: rep.ContentType})
	}
	_ = enc.WriteField(hpack.HeaderField{Name: "content-length", Value: lengthText(len(rep.Body))})
	if rep.CacheControl != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: "cache-control", Value: rep.CacheControl})
	}
	if rep.Allow != "" {
		_ = enc.WriteField(hpack.HeaderField{Name: "allow", Value: rep.Allow})
	}
	if rep.Nosniff() {
		_ = enc.WriteField(hpack.HeaderField{Name: "x-content-type-options", Value: "nosniff"})
	}
	for _, f := range rep.Header {
		_ = enc.WriteField(hpack.HeaderField{Name: f.Name, Value: f.Value})
	}
	_ = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: h.hbuf.Bytes(),
		EndStream: len(body) == 0, EndHeaders: true})
	st.out = body
	h.sendLocked(st)
	if len(st.out) == 0 {
		h.sentLocked(st)
	}
}

// encoder is the connection's HPACK encoder, made at its first use.
// h.mu is held.
func (h *h2conn) encoder() *hpack.Encoder {
	if h.henc == nil {
		h.henc = hpack.NewEncoder((*h2hpackOut)(h))
	}
	return h.henc
}

// h2hpackOut is where the connection's HPACK encoder writes: the hbuf of
// its live state at the time.
type h2hpackOut h2conn

func (o *h2hpackOut) Write(p []byte) (int, error) { return o.hbuf.Write(p) }

// sendLocked frames as much of a stream's answer as the windows allow;
// the rest waits for WINDOW_UPDATE.
func (h *h2conn) sendLocked(st *h2stream) {
	for len(st.out) > 0 {
		n := int64(min(len(st.out), int(h.peerMaxFrame)))
		n = min(n, st.sendWindow, h.connSend)
		if n <= 0 {
			if !st.blocked {
				st.blocked = true
				h.blocked = append(h.blocked, st)
				if h.blockedSince.IsZero() {
					h.blockedSince = time.Now()
				}
			}
			return
		}
		_ = h.fr.WriteData(st.id, int(n) == len(st.out), st.out[:n])
		st.out = st.out[n:]
		st.sendWindow -= n
		h.connSend -= n
	}
}

// sentLocked ends a stream whose answer is all framed: closed when the
// request had ended. An early refusal (413, 431) stays open while the
// client sends the rest of its body, which onData drops: closed at its
// end, or reset with NO_ERROR past h2Drain (RFC 9113 8.1).
func (h *h2conn) sentLocked(st *h2stream) {
	if st.remoteDone {
		h.closeStreamLocked(st, false)
		return
	}
	if !st.refused {
		h.rstLocked(st, http2.ErrCodeNo)
	}
}

// flushBlockedLocked sends what waited for window, after the client gave
// more.
func (h *h2conn) flushBlockedLocked() {
	if len(h.blocked) == 0 {
		return
	}
	still := h.blocked[:0]
	for _, st := range h.blocked {
		st.blocked = false
		if st.reset {
			continue
		}
		h.sendLocked(st)
		if len(st.out) == 0 {
			h.sentLocked(st)
		} else {
			still = append(still, st)
		}
	}
	clear(h.blocked[len(still):])
	h.blocked = still
	if len(still) == 0 {
		h.blockedSince = time.Time{}
	} else {
		h.blockedSince = time.Now()
	}
}

func (h *h2conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingHeaderTableSize:
			h.encoder().SetMaxDynamicTableSizeLimit(s.Val)
		case http2.SettingInitialWindowSize:
			// RFC 9113 6.9.2: the change applies to every open stream
			delta := int64(s.Val) - h.initialSend
			h.initialSend = int64(s.Val)
			for _, st := range h.streams {
				if st.sendWindow += delta; st.sendWindow > h2MaxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
		case http2.SettingMaxFrameSize:
			h.peerMaxFrame = int32(s.Val)
		}
		return nil
	})
	if err != nil {
		return err
	}
	_ = h.fr.WriteSettingsAck()
	h.flushBlockedLocked()
	err = h.queuedLocked()
	h.wake()
	return err
}

func (h *h2conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.StreamID == 0 {
		if h.connSend += int64(f.Increment); h.connSend > h2MaxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
	} else {
		if f.StreamID > h.maxStream {
			return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		}
		st := h.streams[f.StreamID]
		if st == nil {
			return nil // closed: a late update
		}
		if st.sendWindow += int64(f.Increment); st.sendWindow > h2MaxWindow {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
		}
	}
	h.flushBlockedLocked()
	h.wake()
	return nil
}

// resetStream ends a stream with RST_STREAM (a stream error).
func (h *h2conn) resetStream(id uint32, code http2.ErrCode) {
	if id > h.maxStream {
		h.maxStream = id // a new stream, opened and closed at once
	}
	h.mu.Lock()
	if st := h.streams[id]; st != nil {
		h.rstLocked(st, code)
	} else {
		_ = h.fr.WriteRSTStream(id, code)
		h.rememberLocked(id, true)
	}
	h.mu.Unlock()
	h.wake()
}

func (h *h2conn) rstLocked(st *h2stream, code http2.ErrCode) {
	_ = h.fr.WriteRSTStream(st.id, code)
	st.reset = true
	h.closeStreamLocked(st, true)
}

// closeStreamLocked forgets a stream. Its buffer goes back to the pool
// unless an answer is being made in it (it is dropped then).
func (h *h2conn) closeStreamLocked(st *h2stream, byUs bool) {
	if h.streams[st.id] != st {
		return
	}
	delete(h.streams, st.id)
	h.rememberLocked(st.id, byUs)
	st.out = nil
	st.closed = true
	if st.blocked {
		for i, b := range h.blocked {
			if b == st {
				h.blocked = append(h.blocked[:i], h.blocked[i+1:]...)
				break
			}
		}
		if len(h.blocked) == 0 {
			h.blockedSince = time.Time{}
		}
	}
	if !st.answering {
		releaseStream(st)
	}
}

// Streams and their buffers are reused: a stream goes back to the pool
// once it is closed and no goroutine is making its answer (that one
// releases it when done), with its buffer (which its answer's octets
// were framed out of).
var streamPool = sync.Pool{New: func() any { return new(h2stream) }}

func releaseStream(st *h2stream) {
	if st.bp != nil {
		packPool.Put(st.bp)
	}
	*st = h2stream{}
	streamPool.Put(st)
}

func (h *h2conn) rememberLocked(id uint32, byUs bool) {
	if h.recent == nil {
		h.recent = new([h2Recent]recentStream)
	}
	h.recent[h.recentN%h2Recent] = recentStream{id: id, byUs: byUs}
	h.recentN++
}

func (h *h2conn) recentStream(id uint32) (recentStream, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.recent == nil {
		return recentStream{}, false
	}
	for _, r := range h.recent {
		if r.id == id {
			return r, true
		}
	}
	return recentStream{}, false
}

// flooded reports a client that lets frames for it pile up past twice
// the queue's bound.
func (h *h2conn) flooded() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.out.b) > 2*h2MaxQueued
}

// queuedLocked reports a client that lets frames for it pile up.
func (h *h2conn) queuedLocked() error {
	if len(h.out.b) > h2MaxQueued {
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	return nil
}

// goAway sends GOAWAY once: no stream past the last one seen is served.
func (h *h2conn) goAway(code http2.ErrCode) {
	h.mu.Lock()
	if !h.goaway {
		h.goaway = true
		_ = h.fr.WriteGoAway(h.maxStream, code, nil)
	}
	h.mu.Unlock()
	h.wake()
}

// connError ends the connection for a protocol error: GOAWAY with its
// code, then close.
func (h *h2conn) connError(code http2.ErrCode) {
	if h.c.metrics != nil {
		h.c.metrics.badFrames.Inc()
	}
	h.goAway(code)
}

func (h *h2conn) wake() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// finish ends the connection once the reader is done: after a graceful
// end the answers in flight are made and sent first.
func (h *h2conn) finish(graceful bool) {
	putReader(h.in) // the reader has stopped
	h.in = nil
	if graceful {
		h.answers.Wait()
	}
	h.mu.Lock()
	h.closed = true
	h.wakeWaiters()
	h.mu.Unlock()
	if !graceful && h.c.raw != nil {
		// what is queued (the GOAWAY) gets a moment, not a write timeout
		_ = h.c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	}
	h.stopWriter()
}

// startWriter starts the goroutine that sends what is framed; stopWriter
// stops it once it has sent everything.
func (h *h2conn) startWriter() {
	h.kick, h.stop, h.wdone = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go h.writeLoop(h.kick, h.stop, h.wdone)
}

func (h *h2conn) stopWriter() {
	close(h.stop)
	<-h.wdone
}

// writeLoop sends what is framed, as much as is ready in one write.
func (h *h2conn) writeLoop(kick, stop, wdone chan struct{}) {
	defer close(wdone)
	var spare []byte
	failed := false
	for {
		final := false
		select {
		case <-kick:
		case <-stop:
			final = true
		}
		if !final && h.inFlight.Load() > 0 {
			// answers of this connection that are ready to run (their
			// upstream's replies came in one burst) join this write
			runtime.Gosched()
		}
		h.mu.Lock()
		buf := h.out.b
		h.out.b = spare[:0]
		h.writing = len(buf)
		h.mu.Unlock()
		if len(buf) > 0 && !failed {
			if h.c.raw != nil {
				_ = h.c.raw.SetWriteDeadline(time.Now().Add(h.c.srv.Load().set.write))
			}
			if _, err := h.rw.Write(buf); err != nil {
				failed = true
				h.c.abort()
			}
		}
		if cap(buf) <= 64<<10 {
			spare = buf[:0]
		} else {
			spare = nil
		}
		h.mu.Lock()
		h.writing = 0
		h.wakeWaiters()
		h.mu.Unlock()
		if final {
			return
		}
	}
}

// lengthTexts holds the decimal strings of the content lengths answers
// have had (made at the first answer of each length), so that an answer
// allocates none: strconv.Itoa allocates for 100 and more, and most
// answers are longer (padding alone makes 128 or 468 octets).
var lengthTexts [4096]atomic.Pointer[string]

func lengthText(n int) string {
	if n < 0 || n >= len(lengthTexts) {
		return strconv.Itoa(n)
	}
	if p := lengthTexts[n].Load(); p != nil {
		return *p
	}
	t := strconv.Itoa(n)
	lengthTexts[n].Store(&t)
	return t
}

func statusText(s int) string {
	switch s {
	case http.StatusOK:
		return "200"
	case http.StatusBadRequest:
		return "400"
	case http.StatusNotFound:
		return "404"
	}
	return strconv.Itoa(s)
}
