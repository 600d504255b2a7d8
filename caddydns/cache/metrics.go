package cache

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsfront/dnsfront/internal/promreg"
)

// collector reports every live store's counters, labelled by cache name.
type collector struct{}

var (
	descHits        = prometheus.NewDesc("dnsfront_cache_hits_total", "Queries answered from a cache while fresh.", []string{"cache"}, nil)
	descMisses      = prometheus.NewDesc("dnsfront_cache_misses_total", "Queries a cache did not answer fresh (asked on, coalesced or answered stale).", []string{"cache"}, nil)
	descStale       = prometheus.NewDesc("dnsfront_cache_stale_served_total", "Expired answers served because the upstreams failed or were slow (RFC 8767).", []string{"cache"}, nil)
	descPrefetches  = prometheus.NewDesc("dnsfront_cache_prefetches_total", "Popular entries refreshed before they expired.", []string{"cache"}, nil)
	descCoalesced   = prometheus.NewDesc("dnsfront_cache_coalesced_total", "Misses that waited for an identical miss's query instead of asking again.", []string{"cache"}, nil)
	descEvictions   = prometheus.NewDesc("dnsfront_cache_evictions_total", "Entries evicted to stay within max_entries and max_bytes.", []string{"cache"}, nil)
	descNotAdmitted = prometheus.NewDesc("dnsfront_cache_not_admitted_total", "Answers a full cache did not keep: their name was not asked before lately (the doorkeeper).", []string{"cache"}, nil)
	descEntries     = prometheus.NewDesc("dnsfront_cache_entries", "Entries in a cache.", []string{"cache"}, nil)
	descBytes       = prometheus.NewDesc("dnsfront_cache_bytes", "Memory of a cache's entries, as counted against max_bytes.", []string{"cache"}, nil)
)

// counterDescs are the counters, in the order of store.counters.
var counterDescs = [...]*prometheus.Desc{descHits, descMisses, descStale, descPrefetches, descCoalesced, descEvictions, descNotAdmitted}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range counterDescs {
		ch <- d
	}
	ch <- descEntries
	ch <- descBytes
}

// Collect sums the stores of each name (two configs may name their
// caches alike).
func (collector) Collect(ch chan<- prometheus.Metric) {
	type sums struct {
		counters       [len(counterDescs)]uint64
		entries, bytes int64
	}
	byName := map[string]*sums{}
	live.Range(func(k, _ any) bool {
		s := k.(*store)
		t := byName[s.name]
		if t == nil {
			t = new(sums)
			byName[s.name] = t
		}
		for i, v := range s.counters() {
			t.counters[i] += v
		}
		t.entries += int64(s.entries())
		t.bytes += s.bytes.Load()
		return true
	})
	for name, t := range byName {
		for i, d := range counterDescs {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(t.counters[i]), name)
		}
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(t.entries), name)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(t.bytes), name)
	}
}

var theCollector collector

func registerMetrics(ctx caddy.Context) {
	_ = promreg.Register(ctx.GetMetricsRegistry(), theCollector)
}
