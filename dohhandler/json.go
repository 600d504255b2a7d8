package dohhandler

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
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

func (e *Endpoint) serveJSON(ctx context.Context, req *Request) Reply {
	args, _ := url.ParseQuery(req.RawQuery)
	name := args.Get("name")
	if name == "" {
		return e.Refuse(http.StatusBadRequest, "missing name parameter")
	}
	if _, ok := dns.IsDomainName(name); !ok || len(dns.Fqdn(name)) > 254 {
		return e.Refuse(http.StatusBadRequest, "name parameter is not a domain name")
	}
	qtype := dns.TypeA
	if t := args.Get("type"); t != "" {
		if n, err := strconv.ParseUint(t, 10, 16); err == nil {
			qtype = uint16(n)
		} else if n, ok := dns.StringToType[strings.ToUpper(t)]; ok {
			qtype = n
		} else {
			return e.Refuse(http.StatusBadRequest, "type parameter "+strconv.Quote(t)+" is not a DNS type")
		}
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.CheckingDisabled = flag(args.Get("cd"))
	q.SetEdns0(4096, flag(args.Get("do")))

	resp, a := e.chain.ServeMsg(ctx, &caddydns.Request{
		Msg: q, Transport: "doh", Server: e.name, Client: req.Client, Local: req.Local, ServerName: req.ServerName, Path: req.Path, Size: caddydns.MaxMessage,
	})
	if a.Drop {
		return Reply{Drop: true}
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
		return e.Refuse(http.StatusInternalServerError, "encoding answer: "+err.Error())
	}
	body = append(body, '\n') // a terminal shows the prompt on its own line
	r := Reply{Status: http.StatusOK, ContentType: "application/json", Body: body}
	if acceptsJSON(req.Accept) {
		r.ContentType = JSONType
	}
	if a.Cacheable {
		r.CacheControl = maxAge(a.TTL)
	}
	e.responses.count(http.StatusOK)
	return r
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
