package local_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

func TestLocalBackend(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	if err := local.EnsureKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	key, err := local.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "secrets.json")
	b, err := local.New(path, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const planted = "canary-Zq8vW3xRpL2mN7kT"
	if v, err := b.Write(ctx, secretref.MustParse("local://payments/signing#key"), []byte(planted)); err != nil || v != "1" {
		t.Fatalf("write: %q %v", v, err)
	}
	if v, err := b.Write(ctx, secretref.MustParse("local://payments/signing#alg"), []byte("ed25519")); err != nil || v != "2" {
		t.Fatalf("write: %q %v", v, err)
	}
	cases := []struct {
		ref, want string
		err       error
	}{
		{"local://payments/signing#key", planted, nil},
		{"local://payments/signing#alg", "ed25519", nil},
		{"local://payments/signing?version=1#alg", "", backend.ErrNotFound},
		{"local://payments/signing?version=1#key", planted, nil},
		{"local://payments/other#key", "", backend.ErrNotFound},
	}
	for _, tc := range cases {
		v, err := b.Read(ctx, secretref.MustParse(tc.ref))
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: %v, want %v", tc.ref, err, tc.err)
			}
			continue
		}
		if err != nil || string(v.Data) != tc.want {
			t.Errorf("%s: %q %v", tc.ref, v.Data, err)
		}
	}
	md, err := b.Describe(ctx, secretref.MustParse("local://payments/signing"))
	if err != nil || md.Version != "2" || md.Versions != 2 {
		t.Fatalf("describe: %+v %v", md, err)
	}
	// Encrypted at rest: the file never holds the plaintext, and is private.
	raw, _ := os.ReadFile(path)
	if bytes.Contains(raw, []byte(planted)) || bytes.Contains(raw, []byte("ed25519")) {
		t.Fatal("plaintext on disk")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	// Another key cannot open it; a moved ciphertext does not open either.
	other, _ := local.New(path, bytes.Repeat([]byte{7}, 32))
	if _, err := other.Read(ctx, secretref.MustParse("local://payments/signing#key")); !errors.Is(err, backend.ErrPermissionDenied) {
		t.Fatalf("wrong key: %v", err)
	}
	moved := strings.Replace(string(raw), `"payments/signing"`, `"payments/stolen"`, 1)
	if err := os.WriteFile(path, []byte(moved), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Read(ctx, secretref.MustParse("local://payments/stolen#key")); !errors.Is(err, backend.ErrPermissionDenied) {
		t.Fatalf("moved ciphertext opened: %v", err)
	}
	// Key files readable by others are refused.
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, key, 0o644)
	if _, err := local.LoadKey(loose); err == nil {
		t.Fatal("world-readable key accepted")
	}
}

// A write makes the next version: a ref naming a version is refused, not
// quietly written as the next one.
func TestWriteRefusesAVersion(t *testing.T) {
	b, err := local.New(filepath.Join(t.TempDir(), "s.json"), bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = b.Write(ctx, secretref.MustParse("local://x/v?version=3#k"), []byte("v"))
	if !errors.Is(err, backend.ErrInvalidValue) || !strings.Contains(err.Error(), "drop ?version=") {
		t.Fatalf("write with a version: %v", err)
	}
	if _, err := b.Read(ctx, secretref.MustParse("local://x/v#k")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("the refused write stored something: %v", err)
	}
	if v, err := b.Write(ctx, secretref.MustParse("local://x/v#k"), []byte("v")); err != nil || v != "1" {
		t.Fatalf("write: %q %v", v, err)
	}
}
