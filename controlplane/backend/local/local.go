// Package local is secretplane's embedded secret manager, for dev mode and
// small installations: versioned key/value secrets in one file, each
// version sealed with AES-256-GCM under a 32-byte key from a file (mode
// 0600) or the environment. The secret's name and version are the
// additional data, so a sealed value cannot be moved to another slot.
package local

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// KeySize is the AES-256 key length.
const KeySize = 32

// Backend is the local backend over one file.
type Backend struct {
	path string
	aead cipher.AEAD
	now  func() time.Time
}

var _ backend.Backend = (*Backend)(nil)

// file is the on-disk form: names to versions, oldest first.
type file struct {
	Format  int                    `json:"format"`
	Secrets map[string][]sealedVer `json:"secrets"`
}

type sealedVer struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Sealed  string    `json:"sealed"` // base64(nonce || ciphertext)
}

// LoadKey reads a key file: 32 raw bytes or their base64, mode 0600 or
// stricter.
func LoadKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("local backend key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("local backend key %s is readable by others (mode %v): chmod 600 it", path, st.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("local backend key: %w", err)
	}
	return ParseKey(raw)
}

// ParseKey accepts 32 raw bytes or their standard base64.
func ParseKey(raw []byte) ([]byte, error) {
	if len(raw) == KeySize {
		return raw, nil
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(k) != KeySize {
		return nil, errors.New("local backend key must be 32 bytes (raw or base64)")
	}
	return k, nil
}

// EnsureKeyFile creates a random key file (0600) at path if absent.
func EnsureKeyFile(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create local backend key: %w", err)
	}
	defer f.Close()
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(k) + "\n")
	return err
}

// New opens (creating on first write) the secrets file at path.
func New(path string, key []byte) (*Backend, error) {
	if len(key) != KeySize {
		return nil, errors.New("local backend key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Backend{path: path, aead: aead, now: time.Now}, nil
}

// Scheme implements backend.Backend.
func (b *Backend) Scheme() secretref.Scheme { return secretref.SchemeLocal }

// Read implements backend.Backend.
func (b *Backend) Read(ctx context.Context, ref secretref.Ref) (backend.Value, error) {
	var out backend.Value
	err := b.locked(syscall.LOCK_SH, func(f *file) (bool, error) {
		v, err := pick(f, ref)
		if err != nil {
			return false, err
		}
		plain, err := b.open(ref.Path, v)
		if err != nil {
			return false, err
		}
		defer clear(plain)
		var doc map[string]any
		if err := json.Unmarshal(plain, &doc); err != nil {
			return false, fmt.Errorf("%s: stored value is not a JSON object: %w", ref, backend.ErrInvalidValue)
		}
		data, err := backend.SelectField(ref, doc, plain)
		if err != nil {
			return false, err
		}
		out = backend.Value{Data: append([]byte(nil), data...), Version: strconv.Itoa(v.Version), CreatedAt: v.Created}
		return false, nil
	})
	return out, err
}

// Describe implements backend.Backend.
func (b *Backend) Describe(ctx context.Context, ref secretref.Ref) (backend.Metadata, error) {
	var md backend.Metadata
	err := b.locked(syscall.LOCK_SH, func(f *file) (bool, error) {
		vs := f.Secrets[ref.Path]
		if len(vs) == 0 {
			return false, fmt.Errorf("%s: %w", ref, backend.ErrNotFound)
		}
		last := vs[len(vs)-1]
		md = backend.Metadata{Version: strconv.Itoa(last.Version), CreatedAt: vs[0].Created, UpdatedAt: last.Created, Versions: len(vs)}
		return false, nil
	})
	return md, err
}

// Write implements backend.Backend: a new version; with a field, the other
// keys of the latest version are kept.
func (b *Backend) Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error) {
	if err := backend.CheckWrite(ref); err != nil {
		return "", err
	}
	if len(data) > backend.MaxValueBytes {
		return "", fmt.Errorf("%s: value over %d bytes: %w", ref, backend.MaxValueBytes, backend.ErrInvalidValue)
	}
	var version int
	err := b.locked(syscall.LOCK_EX, func(f *file) (bool, error) {
		doc := map[string]any{}
		vs := f.Secrets[ref.Path]
		if ref.Field == "" {
			if err := json.Unmarshal(data, &doc); err != nil {
				return false, fmt.Errorf("%s: a whole-secret write needs a JSON object: %w", ref, backend.ErrInvalidValue)
			}
		} else {
			if strings.HasPrefix(ref.Field, "/") {
				return false, fmt.Errorf("%s: writing through a JSON pointer is not supported: %w", ref, backend.ErrInvalidValue)
			}
			if len(vs) > 0 {
				plain, err := b.open(ref.Path, vs[len(vs)-1])
				if err != nil {
					return false, err
				}
				err = json.Unmarshal(plain, &doc)
				clear(plain)
				if err != nil {
					return false, fmt.Errorf("%s: stored value is not a JSON object: %w", ref, backend.ErrInvalidValue)
				}
			}
			doc[ref.Field] = string(data)
		}
		plain, err := json.Marshal(doc)
		if err != nil {
			return false, err
		}
		defer clear(plain)
		version = 1
		if len(vs) > 0 {
			version = vs[len(vs)-1].Version + 1
		}
		f.Secrets[ref.Path] = append(vs, b.seal(ref.Path, version, plain))
		return true, nil
	})
	return strconv.Itoa(version), err
}

func pick(f *file, ref secretref.Ref) (sealedVer, error) {
	vs := f.Secrets[ref.Path]
	if len(vs) == 0 {
		return sealedVer{}, fmt.Errorf("%s: %w", ref, backend.ErrNotFound)
	}
	if ref.Version == "" {
		return vs[len(vs)-1], nil
	}
	want, _ := strconv.Atoi(ref.Version)
	for _, v := range vs {
		if v.Version == want {
			return v, nil
		}
	}
	return sealedVer{}, fmt.Errorf("%s: version %d: %w", ref, want, backend.ErrNotFound)
}

func aad(name string, version int) []byte { return []byte(name + "\x00" + strconv.Itoa(version)) }

func (b *Backend) seal(name string, version int, plain []byte) sealedVer {
	nonce := make([]byte, b.aead.NonceSize())
	_, _ = rand.Read(nonce)
	ct := b.aead.Seal(nonce, nonce, plain, aad(name, version))
	return sealedVer{Version: version, Created: b.now().UTC(), Sealed: base64.StdEncoding.EncodeToString(ct)}
}

func (b *Backend) open(name string, v sealedVer) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(v.Sealed)
	if err != nil || len(raw) < b.aead.NonceSize() {
		return nil, fmt.Errorf("local://%s version %d: sealed value is corrupt: %w", name, v.Version, backend.ErrInvalidValue)
	}
	plain, err := b.aead.Open(nil, raw[:b.aead.NonceSize()], raw[b.aead.NonceSize():], aad(name, v.Version))
	if err != nil {
		return nil, fmt.Errorf("local://%s version %d: cannot be opened with this key (wrong key or tampered file): %w", name, v.Version, backend.ErrPermissionDenied)
	}
	return plain, nil
}

// locked runs fn on the file under an flock (shared or exclusive), so that
// the server and the CLI can use the same file; when fn reports a change,
// the file is rewritten atomically (0600).
func (b *Backend) locked(how int, fn func(*file) (bool, error)) error {
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return fmt.Errorf("local backend: %w", err)
	}
	lock, err := os.OpenFile(b.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("local backend: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), how); err != nil {
		return fmt.Errorf("local backend: lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	f := &file{Format: 1, Secrets: map[string][]sealedVer{}}
	raw, err := os.ReadFile(b.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("local backend: %w", err)
	default:
		if err := json.Unmarshal(raw, f); err != nil {
			return fmt.Errorf("local backend: %s is corrupt: %w", b.path, backend.ErrUnavailable)
		}
		if f.Secrets == nil {
			f.Secrets = map[string][]sealedVer{}
		}
	}
	changed, err := fn(f)
	if err != nil || !changed {
		return err
	}
	out, err := json.Marshal(f)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(b.path), ".local-secrets-*")
	if err != nil {
		return fmt.Errorf("local backend: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return fmt.Errorf("local backend: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("local backend: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("local backend: %w", err)
	}
	return os.Rename(tmp.Name(), b.path)
}
