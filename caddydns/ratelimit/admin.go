package ratelimit

import (
	"cmp"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/adminapi"
	"github.com/dnsfront/dnsfront/internal/clientrate"
	"github.com/dnsfront/dnsfront/internal/promreg"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI adds GET /dns/ratelimit to Caddy's admin API: per limiter,
// the prefixes tracked, the queries limited, and the prefixes limited
// most (?top=n, default 20).
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.dns_ratelimit", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes implements caddy.AdminRouter.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/dns/ratelimit", Handler: caddy.AdminHandlerFunc(handleStats)}}
}

// Stats is one limiter's state.
type Stats struct {
	Name           string       `json:"name"`
	QPS            float64      `json:"qps"`
	Burst          int          `json:"burst"`
	BlockFor       string       `json:"block_for,omitempty"` // how long a prefix over a limit is blocked
	Clients        int          `json:"clients"`             // prefixes tracked
	ClientsLimited int          `json:"clients_limited"`     // prefixes limited in the last second
	ClientsBlocked int          `json:"clients_blocked"`     // prefixes blocked now, by any limit
	Limited        uint64       `json:"limited"`             // queries limited, by any limit
	Top            []Client     `json:"top"`                 // the prefixes limited most by the query rate
	Rcodes         []RcodeStats `json:"rcodes,omitempty"`    // the rcode limits
}

// RcodeStats is the state of one rcode limit.
type RcodeStats struct {
	Rcode          string   `json:"rcode"`
	QPS            float64  `json:"qps"`
	Burst          int      `json:"burst"`
	Clients        int      `json:"clients"`         // prefixes that got such an answer lately
	ClientsLimited int      `json:"clients_limited"` // prefixes limited in the last second
	Limited        uint64   `json:"limited"`         // queries limited by it
	Top            []Client `json:"top"`             // the prefixes limited most by it
}

// Client is one prefix's state in one limit.
type Client struct {
	Prefix       string     `json:"prefix"`
	Limited      uint64     `json:"limited"`
	LastLimited  time.Time  `json:"last_limited"`
	Tokens       float64    `json:"tokens"`
	BlockedUntil *time.Time `json:"blocked_until,omitempty"`
}

// recently is how long after its last limited query a prefix counts as
// limited now.
const recently = time.Second

// stats reads the buckets: the prefixes limited and blocked now, and the
// top n of each limit.
func (l *limiter) stats(n int, now int64) Stats {
	st := Stats{Name: l.name, QPS: l.PerSecond(), Burst: l.Burst(), Limited: l.limited.Load()}
	if l.blockFor > 0 {
		st.BlockFor = l.blockFor.String()
	}
	blocked := map[[16]byte]bool{}
	st.Clients, st.ClientsLimited, st.Top = scan(l.Limiter, n, now, blocked)
	for _, ru := range l.rules {
		rs := RcodeStats{Rcode: dns.RcodeToString[ru.rcode], QPS: ru.PerSecond(), Burst: ru.Burst(), Limited: ru.limited.Load()}
		rs.Clients, rs.ClientsLimited, rs.Top = scan(ru.Limiter, n, now, blocked)
		st.Rcodes = append(st.Rcodes, rs)
	}
	st.ClientsBlocked = len(blocked)
	return st
}

// scan reads one limit's buckets at now: the prefixes it holds, those it
// limited in the last second, and the n it limited most; it adds the
// prefixes it blocks to blocked.
func scan(cl *clientrate.Limiter, n int, now int64, blocked map[[16]byte]bool) (clients, limitedNow int, top []Client) {
	type limitedPrefix struct {
		key [16]byte
		st  clientrate.State
	}
	var all []limitedPrefix
	for k, b := range cl.All(now) {
		clients++
		if b.BlockedUntil != 0 {
			blocked[k] = true
		}
		if b.Limited == 0 {
			continue
		}
		if now-b.LastLimited < int64(recently) {
			limitedNow++
		}
		if n > 0 {
			all = append(all, limitedPrefix{k, b})
		}
	}
	slices.SortFunc(all, func(a, b limitedPrefix) int { return cmp.Compare(b.st.Limited, a.st.Limited) })
	top = []Client{}
	for _, p := range all[:min(n, len(all))] {
		c := Client{Prefix: cl.Prefix(p.key).String(), Limited: p.st.Limited, LastLimited: time.Unix(0, p.st.LastLimited).UTC(), Tokens: p.st.Tokens}
		if p.st.BlockedUntil != 0 {
			t := time.Unix(0, p.st.BlockedUntil).UTC()
			c.BlockedUntil = &t
		}
		top = append(top, c)
	}
	return clients, limitedNow, top
}

func liveLimiters() []*limiter {
	var out []*limiter
	live.Range(func(k, _ any) bool {
		out = append(out, k.(*limiter))
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func handleStats(w http.ResponseWriter, r *http.Request) error {
	if err := adminapi.Method(r, http.MethodGet); err != nil {
		return err
	}
	n := 20
	if v := r.URL.Query().Get("top"); v != "" {
		t, err := strconv.Atoi(v)
		if err != nil || t < 0 || t > 10000 {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Message: "top " + strconv.Quote(v) + ": want 0 to 10000"}
		}
		n = t
	}
	now := time.Now().UnixNano()
	out := []Stats{}
	for _, l := range liveLimiters() {
		out = append(out, l.stats(n, now))
	}
	return adminapi.WriteJSON(w, out)
}

// collector reports every live limiter, labelled by name.
type collector struct{}

var (
	descLimited        = prometheus.NewDesc("dnsfront_ratelimit_limited_total", "Queries over their prefix's rate, refused or dropped.", []string{"ratelimit"}, nil)
	descClientsLimited = prometheus.NewDesc("dnsfront_ratelimit_clients_limited", "Prefixes limited in the last second.", []string{"ratelimit"}, nil)
	descClients        = prometheus.NewDesc("dnsfront_ratelimit_clients", "Prefixes tracked (at most max_clients).", []string{"ratelimit"}, nil)
	descClientsBlocked = prometheus.NewDesc("dnsfront_ratelimit_clients_blocked", "Prefixes blocked now (block_for), by any limit.", []string{"ratelimit"}, nil)
	descRcodeLimited   = prometheus.NewDesc("dnsfront_ratelimit_rcode_limited_total", "Queries limited because their prefix went over an rcode limit (counted in dnsfront_ratelimit_limited_total too).", []string{"ratelimit", "rcode"}, nil)
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLimited
	ch <- descClientsLimited
	ch <- descClients
	ch <- descClientsBlocked
	ch <- descRcodeLimited
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now().UnixNano()
	for _, l := range liveLimiters() {
		st := l.stats(0, now)
		ch <- prometheus.MustNewConstMetric(descLimited, prometheus.CounterValue, float64(st.Limited), l.name)
		ch <- prometheus.MustNewConstMetric(descClientsLimited, prometheus.GaugeValue, float64(st.ClientsLimited), l.name)
		ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(st.Clients), l.name)
		ch <- prometheus.MustNewConstMetric(descClientsBlocked, prometheus.GaugeValue, float64(st.ClientsBlocked), l.name)
		for _, rs := range st.Rcodes {
			ch <- prometheus.MustNewConstMetric(descRcodeLimited, prometheus.CounterValue, float64(rs.Limited), l.name, rs.Rcode)
		}
	}
}

func registerMetrics(ctx caddy.Context) error {
	return promreg.Register(ctx.GetMetricsRegistry(), collector{})
}
