package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Files written by the dev CA into its directory.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca_key.pem"
)

// CA is the built-in development certificate authority: a self-signed root
// for one trust domain that issues X.509-SVIDs. It is the embedded default;
// production deployments take identities from SPIRE.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
	now  func() time.Time
}

// CAOption customises a CA.
type CAOption func(*CA)

// WithClock sets the clock the CA uses for validity periods (tests).
func WithClock(now func() time.Time) CAOption { return func(ca *CA) { ca.now = now } }

// NewCA creates a CA for the trust domain whose root is valid for ttl.
func NewCA(td spiffeid.TrustDomain, ttl time.Duration, opts ...CAOption) (*CA, error) {
	ca := &CA{td: td, now: time.Now}
	for _, o := range opts {
		o(ca)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"secretplane"}, CommonName: "secretplane dev CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	ca.cert, ca.key = cert, key
	return ca, nil
}

// LoadCA reads a CA written by Save from dir.
func LoadCA(dir string, opts ...CAOption) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, fmt.Errorf("read dev CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, fmt.Errorf("read dev CA key: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("read dev CA certificate: no PEM certificate in " + caCertFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse dev CA certificate: %w", err)
	}
	kblock, _ := pem.Decode(keyPEM)
	if kblock == nil {
		return nil, errors.New("read dev CA key: no PEM block in " + caKeyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(kblock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse dev CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("parse dev CA key: not a signing key")
	}
	if len(cert.URIs) != 1 {
		return nil, errors.New("dev CA certificate has no trust domain URI")
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("dev CA trust domain: %w", err)
	}
	ca := &CA{td: id.TrustDomain(), cert: cert, key: signer, now: time.Now}
	for _, o := range opts {
		o(ca)
	}
	return ca, nil
}

// Save writes the CA certificate and key into dir (created 0700; key 0600).
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create dev CA directory: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("encode dev CA key: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, caKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("write dev CA key: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, caCertFile), encodeCerts(ca.cert), 0o644); err != nil {
		return fmt.Errorf("write dev CA certificate: %w", err)
	}
	return nil
}

// TrustDomain is the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate is the CA's root certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Bundle is the trust bundle that verifies the SVIDs this CA issues.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// IssueSVID issues an X.509-SVID for id, valid for ttl (capped at the CA's
// own expiry), usable for both TLS server and client authentication.
func (ca *CA) IssueSVID(id spiffeid.ID, ttl time.Duration) (*x509svid.SVID, error) {
	return ca.IssueServingSVID(id, ttl)
}

// IssueToDir issues an SVID for id (with hosts, as IssueServingSVID) and
// writes it with the CA's bundle into dir, as WriteFiles does.
func (ca *CA) IssueToDir(dir string, id spiffeid.ID, ttl time.Duration, hosts ...string) (*x509svid.SVID, error) {
	svid, err := ca.IssueServingSVID(id, ttl, hosts...)
	if err != nil {
		return nil, err
	}
	if err := WriteFiles(dir, svid, ca.Bundle()); err != nil {
		return nil, err
	}
	return svid, nil
}

// IssueServingSVID is IssueSVID with DNS names and IP addresses added, for
// a server that non-SPIFFE clients verify by host name (a dev Vault
// listener, for instance). As SPIRE does, the first DNS name is also the
// subject's common name, which Vault's certificate auth requires.
func (ca *CA) IssueServingSVID(id spiffeid.ID, ttl time.Duration, hosts ...string) (*x509svid.SVID, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("issue SVID for %s: not in trust domain %s", id, ca.td)
	}
	cert, key, err := ca.issue(ca.now(), ttl, &x509.Certificate{URIs: []*url.URL{id.URL()}}, hosts)
	if err != nil {
		return nil, fmt.Errorf("issue SVID for %s: %w", id, err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// IssueCertificate issues a TLS certificate (server and client auth) for
// commonName and hosts (DNS names or IP addresses), valid from now for ttl
// (capped at the CA's expiry), with a new key: what a rotation re-issues
// for an Envoy gateway. It returns the leaf and its key as PEM.
func (ca *CA) IssueCertificate(now time.Time, commonName string, hosts []string, ttl time.Duration) (chainPEM, keyPEM []byte, err error) {
	cert, key, err := ca.issue(now, ttl, &x509.Certificate{}, append([]string{commonName}, hosts...))
	if err != nil {
		return nil, nil, fmt.Errorf("issue a certificate for %s: %w", commonName, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode the key for %s: %w", commonName, err)
	}
	defer clear(der)
	return encodeCerts(cert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// issue signs tmpl (its URIs kept) with a new P-256 key, for hosts: the
// first DNS name is also the subject's common name, as SPIRE does (Vault's
// certificate auth requires it).
func (ca *CA) issue(now time.Time, ttl time.Duration, tmpl *x509.Certificate, hosts []string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("ttl must be positive")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl.SerialNumber = serial
	tmpl.Subject = pkix.Name{Organization: []string{"secretplane"}}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), notAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	tmpl.BasicConstraintsValid = true
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			if len(tmpl.DNSNames) == 0 {
				tmpl.Subject.CommonName = h
			}
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse: %w", err)
	}
	return cert, key, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n, nil
}

func encodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// writeFileAtomic writes data to a temporary file in the same directory and
// renames it over path, so readers never see a half-written file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
