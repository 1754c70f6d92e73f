package sds

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/secretplane/secretplane/controlplane/material"
)

// SecretType is the xDS type URL of an SDS resource.
const SecretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// spiffeValidator is Envoy's SPIFFE certificate validator extension.
const spiffeValidator = "envoy.tls.cert_validator.spiffe"

// form is how a resource is shaped for a given Envoy: trust bundles take
// the SPIFFE validator form from Envoy 1.18, plain trusted_ca before.
type form uint8

const (
	formPlain form = iota
	formSPIFFE
)

// built is a resource ready to send: the same for every stream of the
// same form, so it is built once per content change, not once per stream.
type built struct {
	name    string
	version string // derived from content: the same on every replica and after a restart
	any     *anypb.Any
	ref     string   // canonical ref it was resolved from (secrets)
	quoted  [][]byte // what a NACK's text must not quote
}

// secretResource builds the Envoy Secret for a secret of kind m.Kind.
func secretResource(name string, m material.Material) *tlsv3.Secret {
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	s := &tlsv3.Secret{Name: name}
	switch m.Kind {
	case material.TLSCertificate:
		s.Type = &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{CertificateChain: inline(m.CertificateChain), PrivateKey: inline(m.PrivateKey)}}
	case material.ValidationContext:
		s.Type = &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(m.TrustedCA)}}
	case material.SessionTicketKeys:
		keys := make([]*corev3.DataSource, len(m.TicketKeys))
		for i, k := range m.TicketKeys {
			keys[i] = inline(k)
		}
		s.Type = &tlsv3.Secret_SessionTicketKeys{SessionTicketKeys: &tlsv3.TlsSessionTicketKeys{Keys: keys}}
	default:
		s.Type = &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{Secret: inline(m.Data)}}
	}
	return s
}

// bundleResource builds the validation context of a trust domain's
// bundle, in the form f.
func bundleResource(name, trustDomain string, caPEM []byte, f form) (*tlsv3.Secret, error) {
	vc := &tlsv3.CertificateValidationContext{}
	inline := &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: caPEM}}
	if f == formSPIFFE {
		cfg, err := anypb.New(&tlsv3.SPIFFECertValidatorConfig{TrustDomains: []*tlsv3.SPIFFECertValidatorConfig_TrustDomain{{Name: trustDomain, TrustBundle: inline}}})
		if err != nil {
			return nil, fmt.Errorf("build SPIFFE validator of %s: %w", trustDomain, err)
		}
		vc.CustomValidatorConfig = &corev3.TypedExtensionConfig{Name: spiffeValidator, TypedConfig: cfg}
	} else {
		vc.TrustedCa = inline
	}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}, nil
}

func pack(s *tlsv3.Secret) (*anypb.Any, error) {
	a, err := anypb.New(s)
	if err != nil {
		return nil, fmt.Errorf("marshal secret %s: %w", s.GetName(), err)
	}
	return a, nil
}

// versionOf derives a resource version from what determines its content:
// for a secret its kind, its shape and its keyed fingerprint (never the
// value: a version is shown to operators); for a bundle its certificates.
func versionOf(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// stateVersion is a SotW response's version_info when it carries more
// than one resource: the versions of everything the stream holds.
func stateVersion(names []string, versions map[string]string) string {
	parts := make([][]byte, 0, 2*len(names))
	for _, n := range names {
		parts = append(parts, []byte(n), []byte(versions[n]))
	}
	return versionOf(parts...)
}

// quotable lists what a consumer's failure text must not carry: the value
// and, for PEM material, each line of the private key.
func quotable(data []byte, m material.Material) [][]byte {
	out := [][]byte{bytes.Clone(data)} // the caller may zero data
	if len(m.PrivateKey) > 0 {
		b, _ := pem.Decode(m.PrivateKey)
		if b != nil {
			for _, line := range bytes.Split(pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes}), []byte("\n")) {
				if len(line) >= 16 && !bytes.HasPrefix(line, []byte("-----")) {
					out = append(out, line)
				}
			}
		}
	}
	return out
}
