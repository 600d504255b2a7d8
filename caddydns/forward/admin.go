package forward

import (
	"net/http"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dnsfront/dnsfront/internal/adminapi"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI adds GET /dns/upstreams to Caddy's admin API: each upstream
// the running config forwards to, with its health and counters (as
// dnsdist's showServers()).
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.dns_upstreams", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes implements caddy.AdminRouter.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/dns/upstreams", Handler: caddy.AdminHandlerFunc(handleUpstreams)}}
}

// UpstreamStatus is one upstream's state, as GET /dns/upstreams reports
// it.
type UpstreamStatus struct {
	Upstream string `json:"upstream"`
	// Healthy: queries go to it first (else only when every healthy
	// upstream failed); Down says why not.
	Healthy bool   `json:"healthy"`
	Down    string `json:"down,omitempty"` // "active" (its health checks fail) or "passive" (queries failed)
	// DownUntil: when a passive mark-down ends.
	DownUntil           *time.Time `json:"down_until,omitempty"`
	ActiveChecks        bool       `json:"active_checks"`
	ConsecutiveFailures int32      `json:"consecutive_failures"`
	Outstanding         int64      `json:"outstanding"`
	Queries             uint64     `json:"queries"`
	Errors              uint64     `json:"errors"`
	// CaseRandomized: UDP questions go in random letter case (0x20);
	// false when it is off or the upstream was seen not to keep case.
	CaseRandomized bool `json:"case_randomized"`
	// ProxyProtocol: its queries go with a PROXY header (a forward's
	// proxy_protocol; the same address without it is another entry).
	ProxyProtocol bool `json:"proxy_protocol,omitempty"`
}

func handleUpstreams(w http.ResponseWriter, r *http.Request) error {
	if err := adminapi.Method(r, http.MethodGet); err != nil {
		return err
	}
	now := time.Now()
	out := []UpstreamStatus{}
	upstreams.Range(func(_, v any) bool {
		out = append(out, v.(*upstream).status(now))
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Upstream < out[j].Upstream })
	return adminapi.WriteJSON(w, out)
}

// status is u's state at now.
func (u *upstream) status(now time.Time) UpstreamStatus {
	s := UpstreamStatus{
		Upstream:            u.name,
		Healthy:             u.isHealthy(now),
		ActiveChecks:        u.checks.Load() != nil,
		ConsecutiveFailures: u.fails.Load(),
		Outstanding:         u.outstanding.Load(),
		Queries:             counterValue(u.queries),
		Errors:              counterValue(u.errors),
		CaseRandomized:      u.spec.proto == "udp" && !u.caseOff.Load() && (u.caseOffUntil.Load() == 0 || now.UnixNano() >= u.caseOffUntil.Load()),
		ProxyProtocol:       u.spec.proxy,
	}
	switch until := u.downUntil.Load(); {
	case u.activeDown.Load():
		s.Down = "active"
	case now.UnixNano() < until:
		s.Down = "passive"
		t := time.Unix(0, until).UTC()
		s.DownUntil = &t
	}
	return s
}

func counterValue(c prometheus.Counter) uint64 {
	var m dto.Metric
	if c.Write(&m) != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}

var _ caddy.AdminRouter = AdminAPI{}
