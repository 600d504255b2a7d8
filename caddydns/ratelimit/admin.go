package ratelimit

import (
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/adminapi"
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
	Name           string   `json:"name"`
	QPS            float64  `json:"qps"`
	Burst          int      `json:"burst"`
	Clients        int      `json:"clients"`         // prefixes tracked
	ClientsLimited int      `json:"clients_limited"` // prefixes limited in the last second
	Limited        uint64   `json:"limited"`         // queries limited
	Top            []Client `json:"top"`             // the prefixes limited most
}

// Client is one prefix's state.
type Client struct {
	Prefix      string    `json:"prefix"`
	Limited     uint64    `json:"limited"`
	LastLimited time.Time `json:"last_limited"`
	Tokens      float64   `json:"tokens"`
}

// recently is how long after its last limited query a prefix counts as
// limited now.
const recently = time.Second

// stats scans the buckets: the prefixes limited now, and the top n.
func (l *limiter) stats(n int, now int64) Stats {
	st := Stats{Name: l.name, QPS: l.PerSecond(), Burst: l.Burst(), Limited: l.limited.Load(), Top: []Client{}}
	for k, b := range l.All(now) {
		st.Clients++
		if b.Limited == 0 {
			continue
		}
		if now-b.LastLimited < int64(recently) {
			st.ClientsLimited++
		}
		if n == 0 {
			continue
		}
		st.Top = append(st.Top, Client{Prefix: l.Prefix(k).String(), Limited: b.Limited, LastLimited: time.Unix(0, b.LastLimited).UTC(), Tokens: b.Tokens})
		sort.Slice(st.Top, func(i, j int) bool { return st.Top[i].Limited > st.Top[j].Limited })
		if len(st.Top) > n {
			st.Top = st.Top[:n]
		}
	}
	return st
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
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLimited
	ch <- descClientsLimited
	ch <- descClients
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now().UnixNano()
	for _, l := range liveLimiters() {
		st := l.stats(0, now)
		ch <- prometheus.MustNewConstMetric(descLimited, prometheus.CounterValue, float64(st.Limited), l.name)
		ch <- prometheus.MustNewConstMetric(descClientsLimited, prometheus.GaugeValue, float64(st.ClientsLimited), l.name)
		ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(st.Clients), l.name)
	}
}

func registerMetrics(ctx caddy.Context) error {
	return promreg.Register(ctx.GetMetricsRegistry(), collector{})
}
