package material_test

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/material"
	"github.com/secretplane/secretplane/internal/testcert"
)

var now = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

type pair struct{ cert, key []byte }

func issue(t testing.TB, ca bool, notBefore, notAfter time.Time) pair {
	p := testcert.New(t, testcert.Options{CommonName: "gw.example.org", Serial: 7, NotBefore: notBefore, NotAfter: notAfter, CA: ca})
	return pair{p.Cert, p.Key}
}

func TestParse(t *testing.T) {
	good := issue(t, false, now.Add(-time.Hour), now.Add(time.Hour))
	other := issue(t, false, now.Add(-time.Hour), now.Add(time.Hour))
	expired := issue(t, false, now.Add(-2*time.Hour), now.Add(-time.Hour))
	future := issue(t, false, now.Add(time.Hour), now.Add(2*time.Hour))
	ca := issue(t, true, now.Add(-time.Hour), now.Add(time.Hour))
	oldCA := issue(t, true, now.Add(-2*time.Hour), now.Add(-time.Hour))
	js := func(v map[string]string) []byte { b, _ := json.Marshal(v); return b }
	key1, key2 := strings.Repeat("a", 80), strings.Repeat("b", 80)
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name    string
		kind    material.Kind
		data    []byte
		wantErr string
		check   func(t *testing.T, m material.Material)
	}{
		{"generic", material.Generic, []byte("hmac"), "", func(t *testing.T, m material.Material) {
			if string(m.Data) != "hmac" {
				t.Fatal(m)
			}
		}},
		{"generic empty", material.Generic, nil, "empty value", nil},
		{"pem bundle, key first", material.TLSCertificate, append(append([]byte{}, good.key...), good.cert...), "", func(t *testing.T, m material.Material) {
			if string(m.CertificateChain) != string(good.cert) || string(m.PrivateKey) != string(good.key) || !m.NotAfter.Equal(now.Add(time.Hour)) {
				t.Fatal("chain, key or expiry not kept")
			}
		}},
		{"json object", material.TLSCertificate, js(map[string]string{"certificate": string(good.cert), "private_key": string(good.key)}), "", nil},
		{"kubernetes tls secret", material.TLSCertificate, js(map[string]string{"tls.crt": string(good.cert), "tls.key": string(good.key), "ca.crt": "ignored"}), "", nil},
		{"key does not match", material.TLSCertificate, append(append([]byte{}, good.cert...), other.key...), "does not match the leaf", nil},
		{"expired leaf", material.TLSCertificate, append(append([]byte{}, expired.cert...), expired.key...), "expired at", nil},
		{"not yet valid", material.TLSCertificate, append(append([]byte{}, future.cert...), future.key...), "not valid before", nil},
		{"no key", material.TLSCertificate, good.cert, "no PRIVATE KEY", nil},
		{"two keys", material.TLSCertificate, append(append(append([]byte{}, good.cert...), good.key...), good.key...), "2 PRIVATE KEY blocks", nil},
		{"not pem", material.TLSCertificate, []byte("hunter2-not-pem"), "no PEM blocks", nil},
		{"broken certificate", material.TLSCertificate, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}), good.key...), "does not parse", nil},
		{"json without fields", material.TLSCertificate, []byte(`{"cert":"x"}`), "lacks certificate", nil},
		{"broken json", material.TLSCertificate, []byte(`{"certificate":`), "JSON value must be an object", nil},
		{"ca bundle", material.ValidationContext, append(append([]byte{}, ca.cert...), oldCA.cert...), "", func(t *testing.T, m material.Material) {
			if !m.NotAfter.Equal(now.Add(time.Hour)) || !strings.Contains(string(m.TrustedCA), "CERTIFICATE") {
				t.Fatal("bundle not kept")
			}
		}},
		{"ca bundle all expired", material.ValidationContext, oldCA.cert, "every CA certificate has expired", nil},
		{"ca bundle with a leaf", material.ValidationContext, good.cert, "not a CA certificate", nil},
		{"ca bundle with trailing junk", material.ValidationContext, append(append([]byte{}, ca.cert...), "junk"...), "not PEM", nil},
		{"ticket keys raw", material.SessionTicketKeys, []byte("\x00" + key1[1:] + key2), "", func(t *testing.T, m material.Material) {
			if len(m.TicketKeys) != 2 || string(m.TicketKeys[1]) != key2 {
				t.Fatal(len(m.TicketKeys))
			}
		}},
		{"ticket keys base64 lines", material.SessionTicketKeys, []byte(b64([]byte(key1)) + "\n" + b64([]byte(key2)) + "\n"), "", func(t *testing.T, m material.Material) {
			if len(m.TicketKeys) != 2 || string(m.TicketKeys[0]) != key1 {
				t.Fatal(len(m.TicketKeys))
			}
		}},
		{"ticket key too short", material.SessionTicketKeys, []byte(b64([]byte("short"))), "is 5 bytes", nil},
		{"ticket keys none", material.SessionTicketKeys, []byte(" \n"), "no key", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := material.Parse(tc.kind, tc.data, now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !material.IsContentError(err) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "BEGIN") {
					t.Fatalf("error quotes the content: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.Kind != tc.kind {
				t.Fatalf("kind %q", m.Kind)
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
}

func TestParseKind(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want material.Kind
		ok   bool
	}{{"", material.Generic, true}, {"tls_certificate", material.TLSCertificate, true}, {"session_ticket_keys", material.SessionTicketKeys, true}, {"TLS", "", false}, {"certificate", "", false}} {
		got, err := material.ParseKind(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseKind(%q) = %q, %v", tc.in, got, err)
		}
	}
}

// FuzzParse: no input panics, and an error never quotes the input.
func FuzzParse(f *testing.F) {
	good := issue(f, false, now.Add(-time.Hour), now.Add(time.Hour))
	f.Add(uint8(1), append(append([]byte{}, good.cert...), good.key...))
	f.Add(uint8(2), good.cert)
	f.Add(uint8(3), []byte(strings.Repeat("k", 160)))
	f.Add(uint8(1), []byte(`{"tls.crt":"x","tls.key":"y"}`))
	f.Fuzz(func(t *testing.T, k uint8, data []byte) {
		kind := material.Kinds[int(k)%len(material.Kinds)]
		_, err := material.Parse(kind, data, now)
		if err != nil && len(data) >= 12 && strings.Contains(err.Error(), string(data)) {
			t.Fatalf("error quotes the input: %v", err)
		}
	})
}
