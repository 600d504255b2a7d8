package dohhandler

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
)

// The JSON API, in the format Google Public DNS and Cloudflare serve:
// GET ?name=<name>[&type=<type>][&do=1][&cd=1].
type jsonAnswer struct {
	Status     int            `json:"Status"`
	TC         bool           `json:"TC"`
	RD         bool           `json:"RD"`
	RA         bool           `json:"RA"`
	AD         bool           `json:"AD"`
	CD         bool           `json:"CD"`
	Question   []jsonQuestion `json:"Question"`
	Answer     []jsonRR       `json:"Answer,omitempty"`
	Authority  []jsonRR       `json:"Authority,omitempty"`
	Additional []jsonRR       `json:"Additional,omitempty"`
}

type jsonQuestion struct {
	Name string `json:"name"`
	Type uint16 `json:"type"`
}

type jsonRR struct {
	Name string `json:"name"`
	Type uint16 `json:"type"`
	TTL  uint32 `json:"TTL"`
	Data string `json:"data"`
}

func (h *Handler) serveJSON(w http.ResponseWriter, r *http.Request) error {
	args := r.URL.Query()
	name := args.Get("name")
	if name == "" {
		return h.fail(w, http.StatusBadRequest, "missing name parameter")
	}
	if _, ok := dns.IsDomainName(name); !ok || len(dns.Fqdn(name)) > 254 {
		return h.fail(w, http.StatusBadRequest, "name parameter is not a domain name")
	}
	qtype := dns.TypeA
	if t := args.Get("type"); t != "" {
		if n, err := strconv.ParseUint(t, 10, 16); err == nil {
			qtype = uint16(n)
		} else if n, ok := dns.StringToType[strings.ToUpper(t)]; ok {
			qtype = n
		} else {
			return h.fail(w, http.StatusBadRequest, "type parameter "+strconv.Quote(t)+" is not a DNS type")
		}
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.CheckingDisabled = flag(args.Get("cd"))
	q.SetEdns0(4096, flag(args.Get("do")))

	resp, a := h.Chain.ServeMsg(r.Context(), &caddydns.Request{
		Msg: q, Transport: "doh", Server: h.Name, Client: clientAddr(r), Size: caddydns.MaxMessage,
	})
	if a.Drop {
		dropped()
	}
	out := jsonAnswer{
		Status: resp.Rcode, TC: resp.Truncated, RD: resp.RecursionDesired, RA: resp.RecursionAvailable,
		AD: resp.AuthenticatedData, CD: resp.CheckingDisabled,
		Question:   []jsonQuestion{{Name: q.Question[0].Name, Type: qtype}},
		Answer:     jsonRRs(resp.Answer),
		Authority:  jsonRRs(resp.Ns),
		Additional: jsonRRs(resp.Extra),
	}
	body, err := json.Marshal(out)
	if err != nil {
		return h.fail(w, http.StatusInternalServerError, "encoding answer: "+err.Error())
	}
	body = append(body, '\n') // a terminal shows the prompt on its own line
	ct := "application/json"
	if acceptsJSON(r) {
		ct = JSONType
	}
	hdr := w.Header()
	hdr.Set("Content-Type", ct)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	if a.Cacheable {
		hdr.Set("Cache-Control", "max-age="+strconv.FormatUint(uint64(a.TTL), 10))
	}
	w.WriteHeader(http.StatusOK)
	h.responses.count(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}

func jsonRRs(rrs []dns.RR) []jsonRR {
	var out []jsonRR
	for _, rr := range rrs {
		h := rr.Header()
		if h.Rrtype == dns.TypeOPT {
			continue
		}
		out = append(out, jsonRR{
			Name: h.Name, Type: h.Rrtype, TTL: h.Ttl,
			Data: strings.TrimPrefix(rr.String(), h.String()),
		})
	}
	return out
}

func flag(v string) bool {
	b, err := strconv.ParseBool(v)
	return err == nil && b
}
