package cache

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"

	"github.com/dnsfront/dnsfront/caddydns"
	"github.com/dnsfront/dnsfront/internal/adminapi"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI adds the cache routes to Caddy's admin API:
//
//   - GET /dns/cache: each cache's entries, bytes and counters;
//   - POST /dns/cache/purge: empty every cache; ?name=example.org purges
//     that name (name= again for more names), &subtree=1 that name and
//     every name under it; &type=AAAA only the entries of that type;
//     &cache= only the cache of that name (404 when there is none). It
//     answers how many entries it removed. Any other parameter is a 400.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.dns_cache", New: func() caddy.Module { return new(AdminAPI) }}
}

// Routes implements caddy.AdminRouter.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/dns/cache", Handler: caddy.AdminHandlerFunc(handleStats)},
		{Pattern: "/dns/cache/purge", Handler: caddy.AdminHandlerFunc(handlePurge)},
	}
}

// Stats is one cache's state, as GET /dns/cache reports it.
type Stats struct {
	Name        string `json:"name"`
	Entries     int    `json:"entries"`
	Bytes       int64  `json:"bytes"`
	Hits        uint64 `json:"hits"`
	Misses      uint64 `json:"misses"`
	StaleServed uint64 `json:"stale_served"`
	Prefetches  uint64 `json:"prefetches"`
	Coalesced   uint64 `json:"coalesced"`
	Evictions   uint64 `json:"evictions"`
	NotAdmitted uint64 `json:"not_admitted"`
}

func liveStores() []*store {
	var out []*store
	live.Range(func(k, _ any) bool {
		out = append(out, k.(*store))
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func handleStats(w http.ResponseWriter, r *http.Request) error {
	if err := adminapi.Method(r, http.MethodGet); err != nil {
		return err
	}
	stats := []Stats{}
	for _, s := range liveStores() {
		stats = append(stats, Stats{Name: s.name, Entries: s.entries(), Bytes: s.bytes.Load(), Hits: s.hits.Load(),
			Misses: s.misses.Load(), StaleServed: s.staleServed.Load(), Prefetches: s.prefetches.Load(),
			Coalesced: s.coalesced.Load(), Evictions: s.evictions.Load(), NotAdmitted: s.notAdmitted.Load()})
	}
	return adminapi.WriteJSON(w, stats)
}

func handlePurge(w http.ResponseWriter, r *http.Request) error {
	if err := adminapi.Method(r, http.MethodPost); err != nil {
		return err
	}
	p, err := purgeParams(r.URL.Query())
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	stores := liveStores()
	if p.cache != "" {
		stores = slices.DeleteFunc(stores, func(s *store) bool { return s.name != p.cache })
		if len(stores) == 0 {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("cache=%q: no cache of that name", p.cache)}
		}
	}
	purged := 0
	for _, s := range stores {
		if len(p.names) == 0 {
			purged += s.purge("", false, p.qtype)
		}
		for _, name := range p.names {
			purged += s.purge(name, p.subtree, p.qtype)
		}
	}
	return adminapi.WriteJSON(w, map[string]int{"purged": purged})
}

// purge is what POST /dns/cache/purge was asked to remove.
type purge struct {
	names   []string // none: every name
	subtree bool
	qtype   uint16 // 0: every type
	cache   string // "": every cache
}

// purgeParams reads the purge's parameters: name (again for more names),
// subtree, type and cache. A parameter it does not know, one given twice
// (but name) or empty, or a name that is not one, is an error: a typo
// must not purge every entry.
func purgeParams(q url.Values) (purge, error) {
	var p purge
	for k, vs := range q {
		if k != "name" && len(vs) > 1 {
			return p, fmt.Errorf("%s given %d times: once at most", k, len(vs))
		}
		if slices.Contains(vs, "") {
			return p, fmt.Errorf("%s is empty", k)
		}
		switch k {
		case "name":
			for _, v := range vs {
				if _, ok := dns.IsDomainName(v); !ok {
					return p, fmt.Errorf("name=%q: not a domain name", v)
				}
			}
			p.names = vs
		case "subtree":
			b, err := strconv.ParseBool(vs[0])
			if err != nil {
				return p, fmt.Errorf("subtree=%q: want 1 or 0", vs[0])
			}
			p.subtree = b
		case "type":
			t, ok := caddydns.ParseType(vs[0])
			if !ok {
				return p, fmt.Errorf("type=%q: want a record type such as AAAA, TYPE65 or 65", vs[0])
			}
			p.qtype = t
		case "cache":
			p.cache = vs[0]
		default:
			return p, fmt.Errorf("unknown parameter %q: want name, subtree, type or cache", k)
		}
	}
	if p.subtree && len(p.names) == 0 {
		return p, fmt.Errorf("subtree needs a name")
	}
	return p, nil
}

var _ caddy.AdminRouter = AdminAPI{}
