// Package e2e runs the real secretplane binary against real components and
// drives it the way a user does: through the CLI.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/identity"
)

// binary is the secretplane binary built once for the package's tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "secretplane-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "secretplane")
	build := exec.Command("go", "build", "-race", "-o", binary, "github.com/secretplane/secretplane/cmd/secretplane")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build secretplane:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a running `secretplane server`.
type server struct {
	cmd     *exec.Cmd
	dataDir string
	out     *lockedBuffer // stdout and stderr: the next-steps banner and the logs
	done    chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDevServer runs `secretplane server --dev` on a free loopback port
// with dataDir and waits until the CLI can reach it.
func startDevServer(t testing.TB, dataDir string, extra ...string) *server {
	t.Helper()
	return startDevServerBinary(t, binary, dataDir, append([]string{"--log-level", "debug"}, extra...)...)
}

// startDevServerBinary is startDevServer with another build of the binary.
func startDevServerBinary(t testing.TB, bin, dataDir string, extra ...string) *server {
	t.Helper()
	os.Remove(filepath.Join(dataDir, "dev.json"))
	args := append([]string{"server", "--dev", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"}, extra...)
	s := &server{cmd: exec.Command(bin, args...), dataDir: dataDir, out: &lockedBuffer{}, done: make(chan error, 1)}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() { s.stop(t) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dataDir, "dev.json")); err == nil {
			if _, _, err := cli(t, dataDir, "secret", "list"); err == nil {
				return s
			}
		}
		select {
		case err := <-s.done:
			t.Fatalf("server exited during startup: %v\n%s", err, s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not ready after 30s:\n%s", s.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *server) stop(t testing.TB) {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Errorf("server did not stop on SIGTERM")
	}
}

// cli runs the secretplane CLI against the dev server of dataDir.
func cli(t testing.TB, dataDir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	return cliStdin(t, dataDir, "", args...)
}

func cliStdin(t testing.TB, dataDir, stdin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"--data-dir", dataDir}, args...)...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// cleanEnv drops SECRETPLANE_* settings of the developer's shell.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SECRETPLANE_") {
			env = append(env, kv)
		}
	}
	return env
}

func mustCLI(t testing.TB, dataDir string, args ...string) string {
	t.Helper()
	out, errOut, err := cli(t, dataDir, args...)
	if err != nil {
		t.Fatalf("secretplane %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// devEndpoint is what a dev server writes to its data directory's dev.json.
type devEndpoint struct {
	Address  string `json:"address"`
	ServerID string `json:"server_id"`
}

func readDevEndpoint(t testing.TB, dataDir string) devEndpoint {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dataDir, "dev.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ep devEndpoint
	if err := json.Unmarshal(raw, &ep); err != nil {
		t.Fatal(err)
	}
	return ep
}

// devConn dials the dev server of dataDir with the SVID kept in svidDir.
func devConn(t testing.TB, dataDir, svidDir string) *grpc.ClientConn {
	t.Helper()
	src, err := identity.LoadDir(svidDir)
	if err != nil {
		t.Fatal(err)
	}
	ep := readDevEndpoint(t, dataDir)
	conn, err := grpc.NewClient(ep.Address, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, spiffeid.RequireFromString(ep.ServerID)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// adminConn dials the dev server of dataDir as its admin.
func adminConn(t testing.TB, dataDir string) *grpc.ClientConn {
	t.Helper()
	return devConn(t, dataDir, filepath.Join(dataDir, "admin"))
}

// metricsAddr is the dev server's metrics listener, from its dev.json.
func (s *server) metricsAddr(t testing.TB) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(s.dataDir, "dev.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ep struct {
		MetricsAddress string `json:"metrics_address"`
	}
	if err := json.Unmarshal(raw, &ep); err != nil || ep.MetricsAddress == "" {
		t.Fatalf("dev.json names no metrics address (%v): %s", err, raw)
	}
	return ep.MetricsAddress
}

// scrapeMetrics is one scrape of the dev server's /metrics.
func (s *server) scrapeMetrics(t testing.TB) string {
	t.Helper()
	resp, err := http.Get("http://" + s.metricsAddr(t) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(body)
}
