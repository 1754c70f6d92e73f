// Package metrics exports the server's figures to Prometheus, on a
// registry of its own (no global state). Counters on hot paths stay in
// the parts that own them (the cache, the audit log, SDS) as plain
// counters read at scrape time, so that a Resolve costs the same with
// metrics on or off; per-secret figures come from the inventory's last
// snapshot, so a scrape never waits on the store or a backend.
//
// Labels are secret names, backend schemes, operations, states, webhook
// and subscriber names: never a value, a ref's fields or a SPIFFE ID.
package metrics

import (
	"context"
	"errors"
	"maps"
	"regexp"
	"runtime"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/inventory"
	"github.com/secretplane/secretplane/controlplane/resolve"
)

const ns = "secretplane"

// StreamStats are what SDS reports (the server adapts sds.Stats: the core
// knows nothing of SDS).
type StreamStats struct {
	Streams             int
	Pushes, Acks, Nacks uint64
}

// Sources are the functions a scrape reads; nil ones are left out.
type Sources struct {
	Cache       func() resolve.Stats
	Audit       func() audit.Stats
	SDS         func() StreamStats
	Watch       func() int               // open Watch streams
	Drops       func() map[string]uint64 // events dropped, by subscriber
	DeadLetters func() map[string]uint64 // webhook deliveries given up, by webhook
	Inventory   func() (inventory.Snapshot, bool)
	Now         func() time.Time
}

// Metrics is the server's registry and the collectors it feeds.
type Metrics struct {
	reg *prometheus.Registry
	src Sources

	backendRequests *prometheus.CounterVec
	backendErrors   *prometheus.CounterVec
	backendDuration *prometheus.HistogramVec
	backendUp       *prometheus.GaugeVec

	rotationFailures *prometheus.CounterVec
	rotationDuration *prometheus.HistogramVec

	collectors []prometheus.Collector // what New registered
}

// New builds the registry with the Go runtime's and the process's
// collectors, the build's info, and the server's own figures, read at
// each scrape from the sources given to Read.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), src: Sources{Now: time.Now}}
	m.backendRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "backend_requests_total",
		Help: "Requests to secret managers, by backend and operation."}, []string{"backend", "operation"})
	m.backendErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "backend_request_errors_total",
		Help: "Requests to secret managers that failed, by backend and operation (not found and denied included)."}, []string{"backend", "operation"})
	m.backendDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "backend_request_duration_seconds",
		Help:    "Latency of requests to secret managers.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"backend", "operation"})
	m.backendUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "backend_up",
		Help: "1 when the backend's last request was answered (found, not found or denied), 0 when it could not be reached."}, []string{"backend"})
	m.rotationFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rotation_failures_total",
		Help: "Rotations that failed, by secret."}, []string{"secret"})
	m.rotationDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "rotation_duration_seconds",
		Help:    "Time from a rotation's start to its completion, by method.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}}, []string{"method"})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "build_info",
		Help: "The running build: 1, labelled with its version and Go version."}, []string{"version", "go_version"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	m.collectors = []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build, m.backendRequests, m.backendErrors, m.backendDuration, m.backendUp,
		m.rotationFailures, m.rotationDuration,
		&scraped{m: m},
	}
	m.reg.MustRegister(m.collectors...)
	return m
}

// Register adds c to the registry (the gRPC server's metrics).
func (m *Metrics) Register(c prometheus.Collector) {
	m.reg.MustRegister(c)
	m.collectors = append(m.collectors, c)
}

// fqName finds a Desc's name in its String form (the Desc type keeps it
// unexported).
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Names are the names of every metric the registry describes, sorted:
// what alert rules and dashboards may query.
func (m *Metrics) Names() []string {
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range m.collectors {
			c.Describe(ch)
		}
		close(ch)
	}()
	seen := map[string]bool{}
	for d := range ch {
		if sub := fqName.FindStringSubmatch(d.String()); sub != nil {
			seen[sub[1]] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// Read sets the sources scrapes read: before the registry is first
// served (the parts are built after the metrics, which observe their
// backends).
func (m *Metrics) Read(src Sources) {
	if src.Now == nil {
		src.Now = time.Now
	}
	m.src = src
}

// Registry is the registry to serve (and to register more collectors on:
// the gRPC server's).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// BackendsConfigured starts each backend's up gauge at 1: a backend is
// assumed reachable until a request says otherwise.
func (m *Metrics) BackendsConfigured(schemes []string) {
	for _, s := range schemes {
		m.backendUp.WithLabelValues(s).Set(1)
	}
}

// BackendRequest implements backend.Observer.
func (m *Metrics) BackendRequest(scheme, op string, took time.Duration, err error) {
	m.backendRequests.WithLabelValues(scheme, op).Inc()
	m.backendDuration.WithLabelValues(scheme, op).Observe(took.Seconds())
	if err != nil {
		m.backendErrors.WithLabelValues(scheme, op).Inc()
	}
	switch {
	case err == nil, errors.Is(err, backend.ErrNotFound), errors.Is(err, backend.ErrPermissionDenied), errors.Is(err, backend.ErrInvalidValue):
		m.backendUp.WithLabelValues(scheme).Set(1)
	case errors.Is(err, context.Canceled):
		// The caller went away: says nothing of the backend.
	default:
		m.backendUp.WithLabelValues(scheme).Set(0)
	}
}

// Follow counts rotation outcomes from the bus until ctx ends.
func (m *Metrics) Follow(ctx context.Context, bus *events.Bus) {
	sub := bus.Subscribe("metrics", 0)
	defer sub.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-sub.C():
			step, ok := e.(events.RotationStep)
			if !ok || step.Step != step.State {
				continue // only transitions into a state
			}
			switch step.State {
			case "failed":
				m.rotationFailures.WithLabelValues(step.Secret).Inc()
			case "completed":
				if !step.Started.IsZero() {
					m.rotationDuration.WithLabelValues(step.Method).Observe(m.src.Now().Sub(step.Started).Seconds())
				}
			}
		}
	}
}

// scraped collects, at each scrape, what the parts count themselves and
// the inventory's per-secret figures.
type scraped struct{ m *Metrics }

var (
	descCacheHits    = desc("cache_hits_total", "Resolves answered from the cache (values and cached not-found or denied answers).")
	descCacheMisses  = desc("cache_misses_total", "Resolves that read the backend.")
	descCacheStale   = desc("cache_stale_serves_total", "Values served past their TTL because the backend failed (up to max-stale).")
	descCacheEvicted = desc("cache_evictions_total", "Values dropped from the cache to stay within its bounds.")
	descCacheEntries = desc("cache_entries", "Values in the cache.")
	descCacheBytes   = desc("cache_bytes", "Bytes of values in the cache.")

	descAuditQueue   = desc("audit_queue_depth", "Audit events waiting to be written.")
	descAuditLag     = desc("audit_journal_lag_seconds", "Age of the oldest audit event in the journal not yet in the store (0: none).")
	descAuditBehind  = desc("audit_journal_pending_events", "Audit events in the journal not yet in the store.")
	descAuditFailure = desc("audit_write_failures_total", "Audit events whose write failed.")

	descSDSStreams = desc("sds_streams", "Open SDS and ADS streams.")
	descSDSPushes  = desc("sds_pushes_total", "SDS responses sent.")
	descSDSAcks    = desc("sds_acks_total", "SDS responses Envoys acknowledged.")
	descSDSNacks   = desc("sds_nacks_total", "SDS responses Envoys rejected.")
	descWatch      = desc("watch_streams", "Open Watch streams.")
	descDrops      = desc("events_dropped_total", "Change events dropped because a subscriber's queue was full.", "subscriber")
	descDead       = desc("webhook_dead_letters_total", "Webhook deliveries given up after every attempt.", "webhook")

	descStoreUp     = desc("store_up", "1 when the inventory's last read of the store succeeded.")
	descInventoryAt = desc("inventory_timestamp_seconds", "When the per-secret figures were last refreshed.")
	descExpiry      = desc("secret_expiration_timestamp_seconds", "When the secret's current value expires (a certificate's NotAfter).", "secret")
	descRenewal     = desc("secret_renewal_timestamp_seconds", "When the secret's certificate is due for renewal under its rotation policy.", "secret")
	descRequired    = desc("required_secret_resolvable", "1 when a secret marked required resolves, 0 when it does not.", "secret")
	descRotState    = desc("rotation_state", "1 for the state of the secret's latest rotation.", "secret", "state")
	descRotStarted  = desc("rotation_started_timestamp_seconds", "When the secret's latest rotation started.", "secret")
	descRotSuccess  = desc("rotation_last_success_timestamp_seconds", "When the secret's latest completed rotation ended.", "secret")
	descRotDue      = desc("rotation_next_due_timestamp_seconds", "When the secret's rotation cadence next wants a rotation.", "secret")
	descLagging     = desc("consumers_lagging", "Consumers seen within the horizon that are not on the secret's current version.", "secret")
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, nil)
}

func (s *scraped) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCacheHits, descCacheMisses, descCacheStale, descCacheEvicted, descCacheEntries, descCacheBytes,
		descAuditQueue, descAuditLag, descAuditBehind, descAuditFailure, descSDSStreams, descSDSPushes, descSDSAcks, descSDSNacks, descWatch,
		descDrops, descDead, descStoreUp, descInventoryAt, descExpiry, descRenewal, descRequired, descRotState, descRotStarted, descRotSuccess,
		descRotDue, descLagging} {
		ch <- d
	}
}

func (s *scraped) Collect(ch chan<- prometheus.Metric) {
	src := s.m.src
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	stamp := func(d *prometheus.Desc, t time.Time, l ...string) {
		if !t.IsZero() {
			gauge(d, float64(t.UnixNano())/1e9, l...)
		}
	}
	now := src.Now()
	if src.Cache != nil {
		c := src.Cache()
		counter(descCacheHits, float64(c.Hits))
		counter(descCacheMisses, float64(c.Misses))
		counter(descCacheStale, float64(c.StaleServes))
		counter(descCacheEvicted, float64(c.Evictions))
		gauge(descCacheEntries, float64(c.Entries))
		gauge(descCacheBytes, float64(c.Bytes))
	}
	if src.Audit != nil {
		a := src.Audit()
		gauge(descAuditQueue, float64(a.Queued))
		gauge(descAuditBehind, float64(a.Behind))
		lag := 0.0
		if !a.Oldest.IsZero() {
			lag = max(0, now.Sub(a.Oldest).Seconds())
		}
		gauge(descAuditLag, lag)
		counter(descAuditFailure, float64(a.WriteFailures))
	}
	if src.SDS != nil {
		x := src.SDS()
		gauge(descSDSStreams, float64(x.Streams))
		counter(descSDSPushes, float64(x.Pushes))
		counter(descSDSAcks, float64(x.Acks))
		counter(descSDSNacks, float64(x.Nacks))
	}
	if src.Watch != nil {
		gauge(descWatch, float64(src.Watch()))
	}
	if src.Drops != nil {
		for name, n := range src.Drops() {
			counter(descDrops, float64(n), name)
		}
	}
	if src.DeadLetters != nil {
		for name, n := range src.DeadLetters() {
			counter(descDead, float64(n), name)
		}
	}
	if src.Inventory == nil {
		return
	}
	snap, ok := src.Inventory()
	if !ok {
		return // before the first refresh: no figures rather than zeros
	}
	up := 1.0
	if snap.Err != nil {
		up = 0
	}
	gauge(descStoreUp, up)
	stamp(descInventoryAt, snap.At)
	for _, sec := range snap.Secrets {
		stamp(descExpiry, sec.ExpiresAt, sec.Name)
		stamp(descRenewal, sec.RenewAt, sec.Name)
		if sec.Required {
			v := 0.0
			if sec.Resolvable {
				v = 1
			}
			gauge(descRequired, v, sec.Name)
		}
		if r := sec.Rotation; r != nil {
			gauge(descRotState, 1, sec.Name, r.State)
			stamp(descRotStarted, r.CreateTime, sec.Name)
		}
		stamp(descRotSuccess, sec.LastSuccess, sec.Name)
		stamp(descRotDue, sec.NextDue, sec.Name)
		gauge(descLagging, float64(sec.Lagging), sec.Name)
	}
}
