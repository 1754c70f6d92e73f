// Package testcert makes throwaway self-signed ECDSA certificates for
// tests and load drivers: the values SDS serves as tls_certificate and
// validation_context secrets.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// Options shape a certificate. Zero values take the defaults: a random
// serial, valid from an hour ago for a day.
type Options struct {
	CommonName string // also its DNS name; default "test.example"
	Serial     int64
	NotBefore  time.Time
	NotAfter   time.Time
	CA         bool
}

// Pair is a certificate and its private key, as PEM.
type Pair struct {
	Cert, Key []byte
	Serial    *big.Int
}

// Bundle is the certificate followed by its key: one PEM value.
func (p Pair) Bundle() []byte { return append(append([]byte{}, p.Cert...), p.Key...) }

// New makes a certificate, failing t on error.
func New(t testing.TB, o Options) Pair {
	t.Helper()
	if o.CommonName == "" {
		o.CommonName = "test.example"
	}
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	serial := big.NewInt(o.Serial)
	if o.Serial == 0 {
		var err error
		if serial, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126)); err != nil {
			t.Fatal(err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: o.CommonName}, DNSNames: []string{o.CommonName},
		NotBefore: o.NotBefore, NotAfter: o.NotAfter, IsCA: o.CA, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if o.CA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Pair{Cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), Key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), Serial: serial}
}
