package rotation

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Issuer issues a certificate with a new key (Vault PKI, the built-in CA).
type Issuer interface {
	Issue(ctx context.Context, req IssueRequest) (chainPEM, keyPEM []byte, err error)
}

// IssueRequest is what a certificate is issued for.
type IssueRequest struct {
	Path       string // the issuer's own locator: Vault's pki/issue/<role>
	CommonName string
	AltNames   []string // DNS names or IP addresses
	TTL        time.Duration
}

// Certificate re-issues a tls_certificate secret from an issuer and
// writes the chain and key as {"certificate": ..., "private_key": ...}.
// Parameters:
//
//	issuer       the issuer's name (vault, builtin)
//	path         the issuer's locator (Vault: pki/issue/<role>)
//	common_name  required
//	alt_names    comma-separated DNS names or IP addresses
//	ttl          the certificate's lifetime (Go duration; default 24h)
type Certificate struct {
	Issuers map[string]Issuer
}

// Check implements Rotator.
func (c Certificate) Check(params map[string]string) error {
	_, _, err := c.request(params)
	return err
}

func (c Certificate) request(params map[string]string) (Issuer, IssueRequest, error) {
	req := IssueRequest{TTL: 24 * time.Hour}
	var iss Issuer
	names := make([]string, 0, len(c.Issuers))
	for k := range c.Issuers {
		names = append(names, k)
	}
	slices.Sort(names)
	for k, v := range params {
		switch k {
		case "issuer":
			if iss = c.Issuers[v]; iss == nil {
				return nil, req, fmt.Errorf("certificate: issuer %.32q is not configured on this server (configured: %s)", v, strings.Join(names, ", "))
			}
		case "path":
			req.Path = v
		case "common_name":
			req.CommonName = v
		case "alt_names":
			for n := range strings.SplitSeq(v, ",") {
				if n = strings.TrimSpace(n); n != "" {
					req.AltNames = append(req.AltNames, n)
				}
			}
		case "ttl":
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second {
				return nil, req, fmt.Errorf("certificate: ttl %.32q: want a duration of at least 1s", v)
			}
			req.TTL = d
		default:
			return nil, req, fmt.Errorf("certificate: unknown parameter %.32q (known: issuer, path, common_name, alt_names, ttl)", k)
		}
	}
	switch {
	case iss == nil:
		return nil, req, fmt.Errorf("certificate: the issuer parameter is required (configured: %s)", strings.Join(names, ", "))
	case req.CommonName == "":
		return nil, req, fmt.Errorf("certificate: the common_name parameter is required")
	case params["issuer"] == "vault" && req.Path == "":
		return nil, req, fmt.Errorf("certificate: the vault issuer needs path (pki/issue/<role>)")
	}
	return iss, req, nil
}

// Next implements Rotator.
func (c Certificate) Next(ctx context.Context, r Request) ([]byte, error) {
	iss, req, err := c.request(r.Params)
	if err != nil {
		return nil, err
	}
	chain, key, err := iss.Issue(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("certificate: issue %s: %w", req.CommonName, err)
	}
	defer clear(key)
	out, err := json.Marshal(struct {
		Certificate string `json:"certificate"`
		PrivateKey  string `json:"private_key"`
	}{string(chain), string(key)})
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return out, nil
}
