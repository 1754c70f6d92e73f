package identity

import (
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FileOptions tune a FileSource. Zero values take the defaults.
type FileOptions struct {
	// Federated maps trust domains to files holding their bundles.
	Federated map[spiffeid.TrustDomain]string
	// CheckInterval is how often, at most, the files are looked at again;
	// default 5s.
	CheckInterval time.Duration
	Log           *slog.Logger
	Now           func() time.Time
}

// FileSource is an identity kept in files that something else rotates in
// place (spiffe-helper, cert-manager, an init container): when a file's
// modification time or size changes, the SVID and bundles are read again,
// so that the next TLS handshake presents the new SVID and trusts the new
// bundle, without a restart. A rotation caught half-written, or one that
// changes the SPIFFE ID, keeps the last good identity and is tried again at
// the next check.
type FileSource struct {
	certFile, keyFile, bundleFile string
	opts                          FileOptions
	id                            spiffeid.ID
	files                         []string // every file stamped, in a fixed order

	mu      sync.Mutex
	cur     *StaticSource
	stamps  []fileStamp
	checked time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// WatchFiles loads the SVID, key and bundle files (and federated bundles)
// and returns a source that follows their rotation.
func WatchFiles(certFile, keyFile, bundleFile string, opts FileOptions) (*FileSource, error) {
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	f := &FileSource{certFile: certFile, keyFile: keyFile, bundleFile: bundleFile, opts: opts,
		files: []string{certFile, keyFile, bundleFile}}
	// Sorted: map order changes from one range to the next, and stamps are
	// compared by position.
	f.files = append(f.files, slices.Sorted(maps.Values(opts.Federated))...)
	stamps := f.stat()
	src, err := f.load()
	if err != nil {
		return nil, err
	}
	f.id, f.cur, f.stamps, f.checked = src.ID(), src, stamps, opts.Now()
	return f, nil
}

// stat stamps every file; a file that cannot be read stamps as zero, which
// differs from any readable state.
func (f *FileSource) stat() []fileStamp {
	out := make([]fileStamp, len(f.files))
	for i, file := range f.files {
		if fi, err := os.Stat(file); err == nil {
			out[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
		}
	}
	return out
}

func (f *FileSource) load() (*StaticSource, error) {
	src, err := LoadFiles(f.certFile, f.keyFile, f.bundleFile)
	if err != nil {
		return nil, err
	}
	for td, file := range f.opts.Federated {
		if err := src.AddFederatedBundle(td, file); err != nil {
			return nil, err
		}
	}
	return src, nil
}

// current returns the identity, reading the files again when they changed
// since the last look (at most once per CheckInterval).
func (f *FileSource) current() *StaticSource {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.opts.Now()
	if now.Sub(f.checked) < f.opts.CheckInterval {
		return f.cur
	}
	f.checked = now
	stamps := f.stat()
	if equalStamps(stamps, f.stamps) {
		return f.cur
	}
	src, err := f.load()
	if err == nil && src.ID() != f.id {
		err = fmt.Errorf("the new SVID is for %s, not %s", src.ID(), f.id)
	}
	if err != nil {
		f.opts.Log.Warn("SVID files changed but cannot be used; keeping the current SVID", "cert_file", f.certFile, "error", err)
		return f.cur
	}
	f.cur, f.stamps = src, stamps
	f.opts.Log.Info("SVID reloaded from files", "spiffe_id", f.id.String(), "serial", src.svid.Certificates[0].SerialNumber.String(), "expires", src.ExpiresAt())
	return f.cur
}

func equalStamps(a, b []fileStamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].mod.Equal(b[i].mod) || a[i].size != b[i].size {
			return false
		}
	}
	return true
}

// GetX509SVID implements x509svid.Source.
func (f *FileSource) GetX509SVID() (*x509svid.SVID, error) { return f.current().GetX509SVID() }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (f *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return f.current().GetX509BundleForTrustDomain(td)
}

// ID is the SPIFFE ID of the SVID (fixed: a rotation to another ID is
// refused).
func (f *FileSource) ID() spiffeid.ID { return f.id }
