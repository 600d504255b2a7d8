package cache

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"

	"github.com/caddyserver/caddy/v2"

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
//     that name, &subtree=1 that name and every name under it; &type=AAAA
//     only the entries of that type; &cache= limits it to the caches of
//     that name. It answers how many entries it removed.
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
	q := r.URL.Query()
	name, only := q.Get("name"), q.Get("cache")
	subtree := false
	if v := q.Get("subtree"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("subtree=%q: want 1 or 0", v)}
		}
		subtree = b
	}
	if subtree && name == "" {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("subtree needs a name")}
	}
	var qtype uint16
	if v := q.Get("type"); v != "" {
		t, err := parseType(v)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
		}
		qtype = t
	}
	purged := 0
	for _, s := range liveStores() {
		if only == "" || s.name == only {
			purged += s.purge(name, subtree, qtype)
		}
	}
	return adminapi.WriteJSON(w, map[string]int{"purged": purged})
}

// parseType reads the type= parameter (see caddydns.ParseType).
func parseType(v string) (uint16, error) {
	t, ok := caddydns.ParseType(v)
	if !ok {
		return 0, fmt.Errorf("type=%q: want a record type such as AAAA, TYPE65 or 65", v)
	}
	return t, nil
}

var _ caddy.AdminRouter = AdminAPI{}
