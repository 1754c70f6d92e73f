package identity_test

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/identity"
)

// A server whose SVID files are rotated in place presents the new SVID on
// the next handshake after the check interval; files caught half-written
// or carrying another SPIFFE ID keep the last good SVID.
func TestFileSourceFollowsRotation(t *testing.T) {
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverID := spiffeid.RequireFromPath(td, "/server")
	dir := t.TempDir()
	stamp := time.Now().Add(-time.Hour)
	write := func(id spiffeid.ID, ca *identity.CA) string {
		t.Helper()
		svid, err := ca.IssueToDir(dir, id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		touch(t, dir, &stamp)
		return svid.Certificates[0].SerialNumber.String()
	}
	first := write(serverID, ca)
	now := time.Unix(1_800_000_000, 0)
	src, err := identity.WatchFiles(filepath.Join(dir, identity.SVIDCertFile), filepath.Join(dir, identity.SVIDKeyFile), filepath.Join(dir, identity.BundleFile),
		identity.FileOptions{CheckInterval: time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	serverCfg, err := identity.ServerTLSConfig(src, td)
	if err != nil {
		t.Fatal(err)
	}
	clientSVID, err := ca.IssueSVID(spiffeid.RequireFromPath(td, "/client"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clientCfg := identity.ClientTLSConfig(identity.NewStaticSource(clientSVID, ca.Bundle()), serverID)

	want, next := first, ""
	steps := []struct {
		name    string
		change  func() string // returns the serial the server should present next, "" = unchanged
		advance time.Duration
	}{
		{"unchanged files", func() string { return "" }, 2 * time.Second},
		{"rotated, not yet looked at", func() string { next = write(serverID, ca); return "" }, 500 * time.Millisecond},
		{"rotated, after the check interval", func() string { return next }, time.Second},
		{"certificate half-written", func() string {
			if err := os.WriteFile(filepath.Join(dir, identity.SVIDCertFile), []byte("-----BEGIN CERTIFICATE-----\nMIIB"), 0o644); err != nil {
				t.Fatal(err)
			}
			touch(t, dir, &stamp)
			return ""
		}, 2 * time.Second},
		{"SVID for another SPIFFE ID", func() string { write(spiffeid.RequireFromPath(td, "/intruder"), ca); return "" }, 2 * time.Second},
		{"good files again", func() string { return write(serverID, ca) }, 2 * time.Second},
	}
	for _, step := range steps {
		if got := step.change(); got != "" {
			want = got
		}
		now = now.Add(step.advance)
		if serial := serverSerial(t, serverCfg, clientCfg); serial != want {
			t.Fatalf("%s: server presented serial %s, want %s", step.name, serial, want)
		}
	}
	if src.ID() != serverID {
		t.Fatalf("ID %s", src.ID())
	}
}

// touch moves the identity files' modification time forward, so that a
// rewrite within the file system's time resolution is still seen.
func touch(t *testing.T, dir string, stamp *time.Time) {
	t.Helper()
	*stamp = stamp.Add(time.Second)
	for _, f := range []string{identity.SVIDCertFile, identity.SVIDKeyFile, identity.BundleFile} {
		if err := os.Chtimes(filepath.Join(dir, f), *stamp, *stamp); err != nil {
			t.Fatal(err)
		}
	}
}

// serverSerial handshakes and returns the serial of the server's leaf.
func serverSerial(t *testing.T, server, client *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a, err := lis.Accept()
		if err != nil {
			return
		}
		defer a.Close()
		_ = tls.Server(a, server).Handshake()
	}()
	conn, err := tls.Dial("tcp", lis.Addr().String(), client)
	if err != nil {
		t.Fatal(err)
	}
	serial := conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	conn.Close()
	<-done // the server side is done with the clock too
	return serial
}

// Unchanged files are not read again, however many federated bundles
// there are (their stamps are compared in a fixed order).
func TestFileSourceUnchangedWithFederatedBundles(t *testing.T) {
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := ca.IssueToDir(dir, spiffeid.RequireFromPath(td, "/server"), time.Hour); err != nil {
		t.Fatal(err)
	}
	federated := map[spiffeid.TrustDomain]string{}
	for _, name := range []string{"a.test", "b.test", "c.test", "d.test"} {
		other, err := identity.NewCA(spiffeid.RequireTrustDomainFromString(name), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := other.Bundle().Marshal()
		file := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(file, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		federated[other.TrustDomain()] = file
	}
	var logs bytes.Buffer
	now := time.Unix(1_800_000_000, 0)
	src, err := identity.WatchFiles(filepath.Join(dir, identity.SVIDCertFile), filepath.Join(dir, identity.SVIDKeyFile), filepath.Join(dir, identity.BundleFile),
		identity.FileOptions{Federated: federated, CheckInterval: time.Second, Now: func() time.Time { return now },
			Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		now = now.Add(2 * time.Second)
		if _, err := src.GetX509SVID(); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(logs.String(), "reloaded") {
		t.Fatalf("unchanged files were read again:\n%s", logs.String())
	}
}
