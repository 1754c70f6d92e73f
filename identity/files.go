package identity

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names of an identity folder, as written by WriteFiles and read by
// LoadFiles: the SVID's certificate chain, its private key (0600), and the
// trust bundle that verifies peers.
const (
	SVIDCertFile = "svid.pem"
	SVIDKeyFile  = "svid_key.pem"
	BundleFile   = "bundle.pem"
)

// Source provides an SVID to present and the bundles to verify peers with.
// The dev CA's files and (later) the SPIRE Workload API both satisfy it.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// StaticSource is a Source with a fixed SVID and bundles, loaded from files.
type StaticSource struct {
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle // the SVID's own trust domain
	bundles *x509bundle.Set    // own and federated
}

// NewStaticSource pairs an SVID with the bundle of its trust domain.
func NewStaticSource(svid *x509svid.SVID, bundle *x509bundle.Bundle) *StaticSource {
	return &StaticSource{svid: svid, bundle: bundle, bundles: x509bundle.NewSet(bundle)}
}

// AddFederatedBundle trusts the bundle in file for peers of trust domain td
// (SPIFFE federation). The SVID's own trust domain cannot be replaced.
func (s *StaticSource) AddFederatedBundle(td spiffeid.TrustDomain, file string) error {
	if td == s.svid.ID.TrustDomain() {
		return fmt.Errorf("federated bundle for %s: that is the server's own trust domain", td)
	}
	b, err := x509bundle.Load(td, file)
	if err != nil {
		return fmt.Errorf("load federated bundle of %s from %s: %w", td, file, err)
	}
	s.bundles.Add(b)
	return nil
}

// GetX509SVID implements x509svid.Source.
func (s *StaticSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

// GetX509BundleForTrustDomain implements x509bundle.Source: the SVID's own
// trust domain and any federated ones.
func (s *StaticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.GetX509BundleForTrustDomain(td)
}

// ID is the SPIFFE ID of the SVID.
func (s *StaticSource) ID() spiffeid.ID { return s.svid.ID }

// ExpiresAt is when the SVID's leaf certificate expires.
func (s *StaticSource) ExpiresAt() time.Time { return s.svid.Certificates[0].NotAfter }

// WriteFiles writes svid.pem, svid_key.pem (0600) and bundle.pem into dir
// (created 0700).
func WriteFiles(dir string, svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create identity directory: %w", err)
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("encode SVID %s: %w", svid.ID, err)
	}
	bundlePEM, err := bundle.Marshal()
	if err != nil {
		return fmt.Errorf("encode bundle of %s: %w", bundle.TrustDomain(), err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{SVIDKeyFile, keyPEM, 0o600},
		{SVIDCertFile, certPEM, 0o644},
		{BundleFile, bundlePEM, 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

// LoadFiles reads an SVID, its key and a trust bundle from three files. The
// bundle is taken to belong to the SVID's trust domain.
func LoadFiles(certFile, keyFile, bundleFile string) (*StaticSource, error) {
	svid, err := x509svid.Load(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load SVID from %s: %w", certFile, err)
	}
	bundle, err := x509bundle.Load(svid.ID.TrustDomain(), bundleFile)
	if err != nil {
		return nil, fmt.Errorf("load trust bundle from %s: %w", bundleFile, err)
	}
	return NewStaticSource(svid, bundle), nil
}

// LoadDir reads an identity folder written by WriteFiles.
func LoadDir(dir string) (*StaticSource, error) {
	return LoadFiles(filepath.Join(dir, SVIDCertFile), filepath.Join(dir, SVIDKeyFile), filepath.Join(dir, BundleFile))
}
