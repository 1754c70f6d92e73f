package identity

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Dev mode identities, in a data directory laid out as:
//
//	ca/                 the dev CA (ca.pem, ca_key.pem 0600)
//	server/             the server's SVID, key and bundle
//	admin/              the admin SVID the CLI uses
const (
	DevCADir     = "ca"
	DevServerDir = "server"
	DevAdminDir  = "admin"
)

// Lifetimes of dev identities. SVIDs are re-issued at server start once less
// than half of their lifetime is left.
const (
	DevCATTL   = 5 * 365 * 24 * time.Hour
	DevSVIDTTL = 30 * 24 * time.Hour
)

// DevServerID and DevAdminID are the SPIFFE IDs of the dev server and admin
// in trust domain td.
func DevServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/secretplane/server")
}

// DevAdminID is the identity the CLI uses in dev mode.
func DevAdminID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/secretplane/admin")
}

// DevWorkloadID names a workload in the dev trust domain.
func DevWorkloadID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "workload", name)
}

// DevIdentities is the result of BootstrapDev.
type DevIdentities struct {
	CA     *CA
	Server *StaticSource
	Admin  *StaticSource
}

// BootstrapDev loads the dev CA from dataDir, creating it for td on first
// use, and makes sure the server and admin SVIDs exist and have at least half
// their lifetime left. An existing CA of another trust domain is an error.
func BootstrapDev(dataDir string, td spiffeid.TrustDomain, now time.Time) (*DevIdentities, error) {
	caDir := filepath.Join(dataDir, DevCADir)
	clock := WithClock(func() time.Time { return now })
	ca, err := LoadCA(caDir, clock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if ca, err = NewCA(td, DevCATTL, clock); err != nil {
			return nil, err
		}
		if err := ca.Save(caDir); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	case ca.TrustDomain() != td:
		return nil, fmt.Errorf("dev CA in %s is for trust domain %q, not %q: use another --data-dir or the same trust domain", caDir, ca.TrustDomain(), td)
	}
	server, err := ensureSVID(ca, filepath.Join(dataDir, DevServerDir), DevServerID(td), now)
	if err != nil {
		return nil, err
	}
	admin, err := ensureSVID(ca, filepath.Join(dataDir, DevAdminDir), DevAdminID(td), now)
	if err != nil {
		return nil, err
	}
	return &DevIdentities{CA: ca, Server: server, Admin: admin}, nil
}

func ensureSVID(ca *CA, dir string, id spiffeid.ID, now time.Time) (*StaticSource, error) {
	if src, err := LoadDir(dir); err == nil && src.ID() == id && freshEnough(src, now) && src.bundle.HasX509Authority(ca.Certificate()) {
		return src, nil
	}
	svid, err := ca.IssueToDir(dir, id, DevSVIDTTL)
	if err != nil {
		return nil, err
	}
	return NewStaticSource(svid, ca.Bundle()), nil
}

func freshEnough(src *StaticSource, now time.Time) bool {
	leaf := src.svid.Certificates[0]
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotAfter.Sub(now) > life/2
}

// EnsureDir creates dir with mode 0700 (and parents), and refuses an existing
// one that others can read or write: it holds keys.
func EnsureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s is accessible to other users (mode %v): chmod 700 it", dir, st.Mode().Perm())
	}
	return nil
}
