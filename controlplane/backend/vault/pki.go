package vault

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// IssueCertificate issues a certificate with a new key from a PKI secrets
// engine role: path is pki/issue/<role> (or <mount>/issue/<role>). The
// chain returned is the leaf followed by the issuing CAs that are not
// self-signed roots (a peer holds the roots).
func (b *Backend) IssueCertificate(ctx context.Context, path, commonName string, altNames []string, ttl time.Duration) (chainPEM, keyPEM []byte, err error) {
	path = strings.Trim(path, "/")
	if mount, _, ok := strings.Cut(path, "/issue/"); !ok || mount == "" || strings.HasSuffix(path, "/issue/") {
		return nil, nil, fmt.Errorf("vault pki: path %.64q: want <mount>/issue/<role>", path)
	}
	req := map[string]any{"common_name": commonName, "ttl": ttl.String(), "format": "pem"}
	var dns, ips []string
	for _, n := range altNames {
		if isIP(n) {
			ips = append(ips, n)
		} else {
			dns = append(dns, n)
		}
	}
	if len(dns) > 0 {
		req["alt_names"] = strings.Join(dns, ",")
	}
	if len(ips) > 0 {
		req["ip_sans"] = strings.Join(ips, ",")
	}
	s, err := b.client.Logical().WriteWithContext(ctx, path, req)
	if err != nil {
		return nil, nil, fmt.Errorf("vault pki: issue from %s: %w", path, classify(err))
	}
	if s == nil || s.Data == nil {
		return nil, nil, fmt.Errorf("vault pki: %s returned no certificate", path)
	}
	cert, _ := s.Data["certificate"].(string)
	key, _ := s.Data["private_key"].(string)
	if cert == "" || key == "" {
		return nil, nil, fmt.Errorf("vault pki: %s returned no certificate or key", path)
	}
	var chain bytes.Buffer
	chain.WriteString(strings.TrimSpace(cert) + "\n")
	cas, _ := s.Data["ca_chain"].([]any)
	if len(cas) == 0 {
		if ca, _ := s.Data["issuing_ca"].(string); ca != "" {
			cas = []any{ca}
		}
	}
	for _, c := range cas {
		if p, _ := c.(string); p != "" && !selfSigned(p) {
			chain.WriteString(strings.TrimSpace(p) + "\n")
		}
	}
	return chain.Bytes(), []byte(key), nil
}

func selfSigned(p string) bool {
	block, _ := pem.Decode([]byte(p))
	if block == nil {
		return false
	}
	c, err := x509.ParseCertificate(block.Bytes)
	return err == nil && bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func isIP(s string) bool { return net.ParseIP(s) != nil }

// Invalidate implements backend.Invalidator: the KV v2 version is deleted
// (soft: Vault keeps it for an operator's undelete, but reads of it fail).
func (b *Backend) Invalidate(ctx context.Context, ref secretref.Ref, version string) error {
	n, err := strconv.Atoi(version)
	if err != nil || n <= 0 {
		return fmt.Errorf("%s: version %.32q is not a KV v2 version: %w", ref, version, backend.ErrInvalidValue)
	}
	if err := b.clientFor(ref).KVv2(ref.VaultMount()).DeleteVersions(ctx, ref.VaultPath(), []int{n}); err != nil {
		return fmt.Errorf("%s: delete version %d: %w", ref, n, classify(err))
	}
	return nil
}
