// Package material knows what a secret's value is for: its kind says how
// the bytes a backend holds become what a consumer is given (a TLS
// certificate and its key, a CA bundle to validate peers with, session
// ticket keys, or opaque bytes), and Parse checks those bytes before they
// are served. Errors describe what is wrong with the content, never the
// content itself.
package material

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind is what a secret's value is.
type Kind string

// The kinds of secret.
const (
	Generic           Kind = "generic"             // opaque bytes (Envoy: generic_secret)
	TLSCertificate    Kind = "tls_certificate"     // certificate chain and private key
	ValidationContext Kind = "validation_context"  // CA bundle to validate peers with
	SessionTicketKeys Kind = "session_ticket_keys" // one or more 80-byte TLS session ticket keys
)

// Kinds lists every kind, for messages and flag help.
var Kinds = []Kind{Generic, TLSCertificate, ValidationContext, SessionTicketKeys}

// ParseKind returns the kind named s; empty is Generic.
func ParseKind(s string) (Kind, error) {
	if s == "" {
		return Generic, nil
	}
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	names := make([]string, len(Kinds))
	for i, k := range Kinds {
		names[i] = string(k)
	}
	return "", fmt.Errorf("unknown kind (want one of %s)", strings.Join(names, ", "))
}

// TicketKeyLen is the length of one TLS session ticket key (Envoy's).
const TicketKeyLen = 80

// Material is a value parsed for its kind. Its byte slices may share the
// value's memory: treat them as read-only.
type Material struct {
	Kind Kind
	// Generic: the value as it is.
	Data []byte
	// TLSCertificate: the chain (leaf first) and the key, as PEM.
	CertificateChain []byte
	PrivateKey       []byte
	// ValidationContext: the CA certificates, as PEM.
	TrustedCA []byte
	// SessionTicketKeys: the keys, TicketKeyLen bytes each, newest first
	// (Envoy encrypts with the first).
	TicketKeys [][]byte
	// NotAfter is when the material stops being valid: the leaf's expiry,
	// or the last CA certificate's; zero when it has none.
	NotAfter time.Time
}

// Error is a content check that failed; it says what, never the content.
type Error struct {
	Kind   Kind
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("%s content: %s", e.Kind, e.Reason) }

func fail(k Kind, format string, args ...any) error {
	return &Error{Kind: k, Reason: fmt.Sprintf(format, args...)}
}

// Parse checks data as a value of kind k at now and returns what it holds.
func Parse(k Kind, data []byte, now time.Time) (Material, error) {
	switch k {
	case Generic, "":
		if len(data) == 0 {
			return Material{}, fail(Generic, "empty value")
		}
		return Material{Kind: Generic, Data: data}, nil
	case TLSCertificate:
		return parseTLSCertificate(data, now)
	case ValidationContext:
		return parseValidationContext(data, now)
	case SessionTicketKeys:
		return parseTicketKeys(data)
	}
	return Material{}, fmt.Errorf("material: unknown kind %q", k)
}

// certificateJSON is a TLS certificate held as a JSON object: ours, or
// Kubernetes' kubernetes.io/tls Secret keys (ca.crt is ignored).
type certificateJSON struct {
	Certificate string `json:"certificate"`
	PrivateKey  string `json:"private_key"`
	TLSCrt      string `json:"tls.crt"`
	TLSKey      string `json:"tls.key"`
}

func parseTLSCertificate(data []byte, now time.Time) (Material, error) {
	var chainPEM, keyPEM []byte
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' {
		var j certificateJSON
		if err := json.Unmarshal(trimmed, &j); err != nil {
			return Material{}, fail(TLSCertificate, "a JSON value must be an object with certificate and private_key (or tls.crt and tls.key) strings")
		}
		cert, key := j.Certificate, j.PrivateKey
		if cert == "" && key == "" {
			cert, key = j.TLSCrt, j.TLSKey
		}
		if cert == "" || key == "" {
			return Material{}, fail(TLSCertificate, "the JSON object lacks certificate and private_key (or tls.crt and tls.key)")
		}
		chainPEM, keyPEM = []byte(cert), []byte(key)
	} else {
		var err error
		if chainPEM, keyPEM, err = splitBundle(data); err != nil {
			return Material{}, err
		}
	}
	certs, err := parseCertificates(TLSCertificate, chainPEM)
	if err != nil {
		return Material{}, err
	}
	key, keyBlock, err := parsePrivateKey(keyPEM)
	if err != nil {
		return Material{}, err
	}
	leaf := certs[0]
	if !publicKeyMatches(leaf.PublicKey, key) {
		return Material{}, fail(TLSCertificate, "the private key does not match the leaf certificate (%s)", describe(leaf))
	}
	if !now.Before(leaf.NotAfter) {
		return Material{}, fail(TLSCertificate, "the leaf certificate (%s) expired at %s", describe(leaf), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return Material{}, fail(TLSCertificate, "the leaf certificate (%s) is not valid before %s", describe(leaf), leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return Material{Kind: TLSCertificate, CertificateChain: encodeCerts(certs), PrivateKey: pem.EncodeToMemory(keyBlock), NotAfter: leaf.NotAfter}, nil
}

// splitBundle separates a PEM bundle into its certificates and its one
// private key.
func splitBundle(data []byte) (certs, key []byte, err error) {
	rest := data
	keys := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE":
			certs = append(certs, pem.EncodeToMemory(b)...)
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			keys++
			key = pem.EncodeToMemory(b)
		default:
			return nil, nil, fail(TLSCertificate, "unexpected PEM block %q (want CERTIFICATE and one PRIVATE KEY)", b.Type)
		}
	}
	switch {
	case len(certs) == 0 && keys == 0:
		return nil, nil, fail(TLSCertificate, "no PEM blocks: want a certificate chain and its private key as PEM, or a JSON object holding them")
	case len(certs) == 0:
		return nil, nil, fail(TLSCertificate, "no CERTIFICATE block")
	case keys == 0:
		return nil, nil, fail(TLSCertificate, "no PRIVATE KEY block")
	case keys > 1:
		return nil, nil, fail(TLSCertificate, "%d PRIVATE KEY blocks; want one", keys)
	}
	return certs, key, nil
}

func parseCertificates(k Kind, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fail(k, "unexpected PEM block %q where certificates belong", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fail(k, "certificate %d does not parse", len(certs)+1)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fail(k, "no PEM certificate")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fail(k, "data after the last PEM certificate is not PEM")
	}
	return certs, nil
}

func parsePrivateKey(data []byte) (crypto.PrivateKey, *pem.Block, error) {
	b, rest := pem.Decode(data)
	if b == nil || !strings.HasSuffix(b.Type, "PRIVATE KEY") {
		return nil, nil, fail(TLSCertificate, "the private key is not a PEM PRIVATE KEY block")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, nil, fail(TLSCertificate, "data after the private key's PEM block")
	}
	var (
		key crypto.PrivateKey
		err error
	)
	switch b.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	default:
		return nil, nil, fail(TLSCertificate, "unsupported private key block %q (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", b.Type)
	}
	if err != nil {
		return nil, nil, fail(TLSCertificate, "the %s block does not parse", b.Type)
	}
	return key, b, nil
}

func publicKeyMatches(pub any, key crypto.PrivateKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	var kp crypto.PublicKey
	switch k := key.(type) {
	case *rsa.PrivateKey:
		kp = &k.PublicKey
	case *ecdsa.PrivateKey:
		kp = &k.PublicKey
	case ed25519.PrivateKey:
		kp = k.Public()
	default:
		return false
	}
	e, ok := kp.(equaler)
	return ok && e.Equal(pub)
}

func parseValidationContext(data []byte, now time.Time) (Material, error) {
	certs, err := parseCertificates(ValidationContext, data)
	if err != nil {
		return Material{}, err
	}
	var last time.Time
	for _, c := range certs {
		if !c.IsCA {
			return Material{}, fail(ValidationContext, "certificate %s is not a CA certificate", describe(c))
		}
		if c.NotAfter.After(last) {
			last = c.NotAfter
		}
	}
	if !now.Before(last) {
		return Material{}, fail(ValidationContext, "every CA certificate has expired (the last at %s)", last.UTC().Format(time.RFC3339))
	}
	return Material{Kind: ValidationContext, TrustedCA: encodeCerts(certs), NotAfter: last}, nil
}

// parseTicketKeys accepts the keys as raw bytes (a multiple of 80, newest
// first) or as base64 text, one key per line or separated by commas or
// spaces.
func parseTicketKeys(data []byte) (Material, error) {
	var keys [][]byte
	if len(data) > 0 && len(data)%TicketKeyLen == 0 && !isBase64Text(data) {
		for i := 0; i < len(data); i += TicketKeyLen {
			keys = append(keys, data[i:i+TicketKeyLen])
		}
	} else {
		fields := strings.FieldsFunc(string(data), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t' })
		for i, f := range fields {
			k, err := base64.StdEncoding.DecodeString(f)
			if err != nil {
				return Material{}, fail(SessionTicketKeys, "key %d is not base64 (want %d raw bytes per key, or base64 keys one per line)", i+1, TicketKeyLen)
			}
			if len(k) != TicketKeyLen {
				return Material{}, fail(SessionTicketKeys, "key %d is %d bytes; each key is %d", i+1, len(k), TicketKeyLen)
			}
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return Material{}, fail(SessionTicketKeys, "no key")
	}
	return Material{Kind: SessionTicketKeys, TicketKeys: keys}, nil
}

func isBase64Text(data []byte) bool {
	for _, c := range data {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '+', c == '/', c == '=', c == '\n', c == '\r', c == ',', c == ' ', c == '\t':
		default:
			return false
		}
	}
	return true
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// describe names a certificate for a message: its subject or first URI
// SAN and its serial number (public facts).
func describe(c *x509.Certificate) string {
	name := c.Subject.CommonName
	if len(c.URIs) > 0 {
		name = c.URIs[0].String()
	}
	if name == "" {
		name = "no subject"
	}
	return fmt.Sprintf("%s, serial %s", name, c.SerialNumber.Text(16))
}

// IsContentError reports whether err is a failed content check.
func IsContentError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
