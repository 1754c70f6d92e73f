package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvSPIREBinDir names a folder holding spire-server and spire-agent to use
// instead of the cached build of scripts/tools.sh.
const EnvSPIREBinDir = "SECRETPLANE_SPIRE_BIN_DIR"

// SPIRE is a SPIRE server and agent (1.13.3, built from the Go module proxy
// by scripts/tools.sh and cached by version) running for a test: SQLite
// datastore, join-token node attestation, unix workload attestation with
// binary-path discovery. Workloads fetch SVIDs from AgentSocket.
type SPIRE struct {
	TrustDomain  string
	AgentSocket  string // unix socket of the agent's Workload API
	ServerSocket string
	AgentID      string // parent of every registration entry
	bin          string
	logs         *lockedLog
}

type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// SPIREOptions tune StartSPIRE.
type SPIREOptions struct {
	TrustDomain string        // default "secretplane.test"
	SVIDTTL     time.Duration // default X.509-SVID lifetime; default 1h
	// CATTL is the CA's lifetime; default 24h. SPIRE prepares the next CA,
	// and adds it to the bundle, at half of it: a short one makes the
	// trust bundle rotate during a test.
	CATTL time.Duration
}

// StartSPIRE starts a SPIRE server and an agent attested with a join token,
// on a free loopback port and private sockets, and stops them when the test
// ends.
func StartSPIRE(t testing.TB, opts SPIREOptions) *SPIRE {
	t.Helper()
	if opts.TrustDomain == "" {
		opts.TrustDomain = "secretplane.test"
	}
	if opts.SVIDTTL == 0 {
		opts.SVIDTTL = time.Hour
	}
	if opts.CATTL == 0 {
		opts.CATTL = 24 * time.Hour
	}
	bin, err := spireBinDir()
	if err != nil {
		t.Fatalf("SPIRE binaries: %v", err)
	}
	// Unix socket paths are limited to about 100 bytes: keep the folder short.
	dir, err := os.MkdirTemp("", "sp-spire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &SPIRE{
		TrustDomain:  opts.TrustDomain,
		AgentSocket:  filepath.Join(dir, "agent.sock"),
		ServerSocket: filepath.Join(dir, "server.sock"),
		AgentID:      "spiffe://" + opts.TrustDomain + "/secretplane-test/agent",
		bin:          bin,
		logs:         &lockedLog{},
	}
	serverConf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  default_x509_svid_ttl = "%s"
  ca_ttl = "%s"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`, port, s.ServerSocket, opts.TrustDomain, filepath.Join(dir, "server-data"), opts.SVIDTTL, opts.CATTL, filepath.Join(dir, "server-data", "datastore.sqlite3"))
	if err := os.WriteFile(filepath.Join(dir, "server.conf"), []byte(serverConf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(t, "spire-server", "run", "-config", filepath.Join(dir, "server.conf"))
	s.waitHealthy(t, "spire-server", "healthcheck", "-socketPath", s.ServerSocket)

	out := s.run(t, "spire-server", "token", "generate", "-socketPath", s.ServerSocket, "-spiffeID", s.AgentID, "-ttl", "600")
	token := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "Token:"))
	if token == "" || strings.ContainsAny(token, " \n") {
		t.Fatalf("unexpected token output: %q", out)
	}
	agentConf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
`, filepath.Join(dir, "agent-data"), port, s.AgentSocket, opts.TrustDomain)
	if err := os.WriteFile(filepath.Join(dir, "agent.conf"), []byte(agentConf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(t, "spire-agent", "run", "-config", filepath.Join(dir, "agent.conf"), "-joinToken", token)
	s.waitHealthy(t, "spire-agent", "healthcheck", "-socketPath", s.AgentSocket)
	return s
}

// RegisterPath registers spiffeID for processes running the binary at path
// (unix:path selector), with the given X.509-SVID lifetime (0: the server's
// default).
func (s *SPIRE) RegisterPath(t testing.TB, spiffeID, path string, ttl time.Duration) {
	t.Helper()
	args := []string{"entry", "create", "-socketPath", s.ServerSocket, "-parentID", s.AgentID, "-spiffeID", spiffeID, "-selector", "unix:path:" + path}
	if ttl > 0 {
		args = append(args, "-x509SVIDTTL", fmt.Sprint(int(ttl.Seconds())))
	}
	s.run(t, "spire-server", args...)
}

// Logs returns what the server and agent printed so far.
func (s *SPIRE) Logs() string { return s.logs.String() }

func (s *SPIRE) start(t testing.TB, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

func (s *SPIRE) run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s\nlogs:\n%s", name, strings.Join(args, " "), err, out, s.Logs())
	}
	return string(out)
}

func (s *SPIRE) waitHealthy(t testing.TB, name string, args ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := exec.Command(filepath.Join(s.bin, name), args...).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not healthy after 60s: %v\n%s\nlogs:\n%s", name, err, out, s.Logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// spireBinDir finds the SPIRE binaries: EnvSPIREBinDir, or the cached build
// of scripts/tools.sh (which builds it, once, when absent).
func spireBinDir() (string, error) {
	if d := os.Getenv(EnvSPIREBinDir); d != "" {
		return d, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "tools.sh"), "spire").Output()
	if err != nil {
		return "", fmt.Errorf("scripts/tools.sh spire: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// repoRoot is the module root (where go.mod is), found from the working
// directory of the test.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.HasPrefix(string(raw), "module github.com/secretplane/secretplane\n") {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("module root not found above the working directory")
		}
		dir = parent
	}
}
