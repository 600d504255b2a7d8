package dotapp

import (
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A header block (HEADERS, then CONTINUATION frames until END_HEADERS;
// the Framer keeps them in order) is decoded here as its fragments come,
// with x/net's HPACK decoder emitting each field straight into the
// block's request: no list of fields and no frame of them is built (the
// Framer's MetaHeadersFrame cost a request 8 allocations). The checks are
// the Framer's (valid names and values, pseudo-headers first, known and
// once, the header list limit, a block that grows past it ends the
// connection), with the request's own (RFC 9113 8.2.2 and 8.3.1) and a
// bound on the block's size on the wire.

// h2MaxBlock is the most a header block may take on the wire: twice the
// header list limit (the Framer's own bound for the octets it decodes)
// and a frame header for each frame of that. Endless empty CONTINUATION
// frames, which add nothing to decode, end there.
const h2MaxBlock = 2*h2HeaderListSize + (2*h2HeaderListSize/h2MaxFrame+1)*9 + h2MaxFrame

// h2KeepForwarded is the most room for X-Forwarded-For a connection keeps
// from one header block to the next: a proxy's field (a few addresses)
// fits, a client's 96 KiB one is let go with its request.
const h2KeepForwarded = 512

// The pseudo-headers of a request, as bits.
const (
	pseudoMethod = 1 << iota
	pseudoScheme
	pseudoPath
	pseudoAuthority
)

// hblock is the header block being decoded, and what it says.
type hblock struct {
	active    bool
	id        uint32
	endStream bool
	prioDep   uint32 // the PRIORITY's stream dependency, when it has one
	hasPrio   bool
	wire      int    // octets on the wire so far
	remain    uint32 // of the header list limit
	truncated bool
	invalid   bool // a malformed field: PROTOCOL_ERROR on the stream
	regular   bool // a regular field came: no pseudo-header after it
	pseudo    int  // the pseudo-headers seen

	method, path, contentType, accept string
	forwarded                         []byte // X-Forwarded-For's fields, joined with commas (up to h2KeepForwarded of room kept from block to block)
	contentLength                     int64  // -1: none
}

// newDecoder makes the connection's HPACK decoder, emitting into h.blk.
// Its dynamic table is the connection's: it lives as long.
func (h *h2conn) newDecoder() {
	h.hdec = hpack.NewDecoder(h2HeaderTable, h.field)
	h.hdec.SetMaxStringLength(h2HeaderListSize)
}

// onHeadersFrame starts a header block.
func (h *h2conn) onHeadersFrame(f *http2.HeadersFrame) error {
	if h.blk == nil {
		h.blk = new(hblock) // from the first header block; let go when parked
	}
	fwd := h.blk.forwarded[:0]
	if cap(fwd) > h2KeepForwarded {
		fwd = nil // a long one is not kept for the connection's life
	}
	*h.blk = hblock{active: true, id: f.StreamID, endStream: f.StreamEnded(), remain: h2HeaderListSize, contentLength: -1,
		forwarded: fwd}
	if f.HasPriority() {
		h.blk.hasPrio, h.blk.prioDep = true, f.Priority.StreamDep
	}
	if h.hdec == nil {
		h.newDecoder() // from the first header block: a connection that asks nothing holds none
	}
	h.hdec.SetEmitEnabled(true)
	return h.fragment(f.HeaderBlockFragment(), f.HeadersEnded(), true)
}

// onContinuation goes on with the block.
func (h *h2conn) onContinuation(f *http2.ContinuationFrame) error {
	frag := f.HeaderBlockFragment()
	if len(frag) == 0 {
		if h.empty++; h.empty > h2MaxEmpty {
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
	}
	return h.fragment(frag, f.HeadersEnded(), false)
}

// fragment decodes a piece of the block; at its end the block becomes a
// request (or a request's trailers).
func (h *h2conn) fragment(frag []byte, end, first bool) error {
	b := h.blk
	if b == nil || !b.active {
		return http2.ConnectionError(http2.ErrCodeProtocol) // a CONTINUATION with no block open (the Framer lets none through)
	}
	if b.wire += len(frag) + 9; b.wire > h2MaxBlock {
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	// the Framer's bounds: a fragment that cannot fit what is left of the
	// list, or any after a malformed field, ends the connection rather
	// than being decoded for nothing
	if int64(len(frag)) > 2*int64(b.remain) || (b.invalid && !first) {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if _, err := h.hdec.Write(frag); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	if !end {
		return nil
	}
	b.active = false
	if err := h.hdec.Close(); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	if b.invalid {
		return http2.StreamError{StreamID: b.id, Code: http2.ErrCodeProtocol}
	}
	return h.onRequest(b)
}

// field takes one decoded field into the block.
func (h *h2conn) field(hf hpack.HeaderField) {
	b := h.blk
	if b.invalid {
		return
	}
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		b.invalid = true
		return
	}
	pseudo := 0
	if strings.HasPrefix(hf.Name, ":") {
		switch hf.Name {
		case ":method":
			pseudo = pseudoMethod
		case ":scheme":
			pseudo = pseudoScheme
		case ":path":
			pseudo = pseudoPath
		case ":authority":
			pseudo = pseudoAuthority
		}
		// a response's (:status), an unknown one, :protocol (no
		// extended CONNECT here), a repeated one, one after a regular
		// field: malformed
		if pseudo == 0 || b.pseudo&pseudo != 0 || b.regular {
			b.invalid = true
			return
		}
		b.pseudo |= pseudo
	} else {
		b.regular = true
		if !validFieldName(hf.Name) {
			b.invalid = true
			return
		}
	}
	if size := hf.Size(); size > b.remain {
		// past the header list limit: 431, and no more fields are kept
		b.truncated, b.remain = true, 0
		h.hdec.SetEmitEnabled(false)
		return
	} else {
		b.remain -= size
	}
	switch hf.Name {
	case ":method":
		b.method = hf.Value
	case ":path":
		b.path = hf.Value
	case "content-type":
		b.contentType = hf.Value
	case "accept":
		b.accept = hf.Value
	case "x-forwarded-for":
		if len(b.forwarded) > 0 {
			b.forwarded = append(b.forwarded, ',')
		}
		b.forwarded = append(b.forwarded, hf.Value...)
	case "content-length":
		n, err := strconv.ParseUint(hf.Value, 10, 63)
		if err != nil || (b.contentLength >= 0 && int64(n) != b.contentLength) {
			b.invalid = true
		}
		b.contentLength = int64(n)
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		// RFC 9113 8.2.2: connection-specific fields make a request malformed
		b.invalid = true
	case "te":
		b.invalid = hf.Value != "trailers"
	}
}

// validFieldName reports a field name as HTTP/2 carries it: a token, in
// lower case.
func validFieldName(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !httpguts.IsTokenRune(rune(c)) || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}
