package sds

import (
	"context"
	"encoding/pem"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BundleSource gives the trust bundles the server trusts (identity.Source).
type BundleSource interface {
	GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error)
}

// bundles follows the trust bundles of the served trust domains: read
// from the source every interval (the dev CA's files, SPIRE's Workload
// API), each change is broadcast to the streams holding them.
type bundles struct {
	source   BundleSource
	domains  []spiffeid.TrustDomain
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	current map[string][]byte // resource name (spiffe://td) -> CA PEM
	changed chan struct{}     // closed and replaced on every change
	cache   map[bundleKey]*built
}

type bundleKey struct {
	name string
	form form
}

func newBundles(src BundleSource, domains []spiffeid.TrustDomain, interval time.Duration, log *slog.Logger) *bundles {
	b := &bundles{source: src, domains: domains, interval: interval, log: log, current: map[string][]byte{}, changed: make(chan struct{}), cache: map[bundleKey]*built{}}
	b.refresh()
	return b
}

// bundleName is the resource name a trust domain's bundle is served as.
func bundleName(td spiffeid.TrustDomain) string { return td.IDString() }

// built returns the resource of the bundle served as name in form f (nil:
// none), built once per bundle change and form for every stream.
func (b *bundles) built(name string, f form) *built {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := bundleKey{name, f}
	if r, ok := b.cache[k]; ok {
		return r
	}
	pem := b.current[name]
	if pem == nil {
		return nil
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return nil
	}
	sec, err := bundleResource(name, td.Name(), pem, f)
	if err != nil {
		b.log.Error("trust bundle could not be built", "trust_bundle", name, "error", err.Error())
		return nil
	}
	a, err := pack(sec)
	if err != nil {
		return nil
	}
	r := &built{name: name, version: versionOf([]byte("bundle"), []byte(name), []byte{byte(f)}, pem), any: a}
	b.cache[k] = r
	return r
}

// watching returns the channel closed at the next change.
func (b *bundles) watching() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}

// isBundleName reports whether name names a trust bundle (spiffe://td).
func isBundleName(name string) bool {
	td, err := spiffeid.TrustDomainFromString(name)
	return err == nil && bundleName(td) == name
}

func (b *bundles) refresh() {
	next := make(map[string][]byte, len(b.domains))
	for _, td := range b.domains {
		bundle, err := b.source.GetX509BundleForTrustDomain(td)
		if err != nil || bundle == nil {
			// Keep serving the last one read: a failed read is no change.
			b.mu.Lock()
			if prev := b.current[bundleName(td)]; prev != nil {
				next[bundleName(td)] = prev
			}
			b.mu.Unlock()
			continue
		}
		var out []byte
		for _, c := range bundle.X509Authorities() {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		if len(out) > 0 {
			next[bundleName(td)] = out
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	same := len(next) == len(b.current)
	for n, p := range next {
		if string(b.current[n]) != string(p) {
			same = false
			if b.current[n] != nil {
				b.log.Info("trust bundle changed; pushing it to the SDS streams holding it", "trust_bundle", n)
			}
		}
	}
	if same {
		return
	}
	b.current = next
	clear(b.cache)
	close(b.changed)
	b.changed = make(chan struct{})
}

// run re-reads the bundles every interval until ctx ends.
func (b *bundles) run(ctx context.Context) {
	t := time.NewTicker(b.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.refresh()
		}
	}
}
