package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// docsPlaceholders are the only substitutions made in the commands of
// docs/*.md before they run: the addresses a dev server has by default are
// the test server's free ports.
func docsPlaceholders(srv *server, metricsAddr string) map[string]string {
	return map[string]string{
		"127.0.0.1:7444": metricsAddr,
	}
}

// docCommand is one command line of a ```sh block (continuation lines
// joined), with the line of the page it starts on.
type docCommand struct {
	line      int
	text      string
	wantsFail bool // the line ends in "# fails: why"
}

// failsMark marks a documented command that is meant to exit non-zero.
var failsMark = regexp.MustCompile(`\s#\s*fails:.*$`)

// parseDocCommands reads the commands of every ```sh block of a Markdown
// page; comment lines and blank lines are skipped.
func parseDocCommands(t *testing.T, page string) []docCommand {
	t.Helper()
	raw, err := os.ReadFile(page)
	if err != nil {
		t.Fatal(err)
	}
	var (
		out     []docCommand
		inSh    bool
		inFence bool
		cur     *docCommand
	)
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			if !inFence {
				inFence, inSh = true, strings.TrimPrefix(trimmed, "```") == "sh"
			} else {
				if cur != nil {
					t.Fatalf("%s:%d: a command continues past the end of its block", page, cur.line)
				}
				inFence, inSh = false, false
			}
			continue
		}
		if !inSh {
			continue
		}
		if cur == nil {
			if trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			cur = &docCommand{line: n}
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " "), `\`); ok {
			cur.text += body + " "
			continue
		}
		cur.text += line
		if failsMark.MatchString(cur.text) {
			cur.wantsFail = true
			cur.text = failsMark.ReplaceAllString(cur.text, "")
		}
		out = append(out, *cur)
		cur = nil
	}
	if inFence {
		t.Fatalf("%s: an unclosed ``` block", page)
	}
	return out
}

// Every command shown in docs/ runs, in order, against a dev server of the
// real binary (a fresh one per page), so the docs cannot drift from the
// CLI: `secretplane` (and bin/secretplane) is the built binary, the data
// directory is the test server's (SECRETPLANE_DATA_DIR), the working
// directory a scratch one with the repository's docs/ in it. A command
// that exits non-zero fails the test naming the page, the line and its
// output, unless the page marks it "# fails: ...", when it must fail.
func TestDocs(t *testing.T) {
	pages, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs/*.md: %v", err)
	}
	docsDir, err := filepath.Abs(filepath.Join("..", "docs"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, page := range pages {
		name := filepath.Base(page)
		t.Run(name, func(t *testing.T) {
			if !bytes.Contains(readme, []byte("docs/"+name)) {
				t.Errorf("README.md does not link docs/%s", name)
			}
			cmds := parseDocCommands(t, page)
			if len(cmds) == 0 {
				return
			}
			dataDir := filepath.Join(t.TempDir(), "data")
			metricsAddr := freeAddr(t)
			srv := startDevServer(t, dataDir, "--metrics-listen", metricsAddr)
			work := t.TempDir()
			binDir := filepath.Join(work, "bin")
			if err := os.MkdirAll(binDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(binary, filepath.Join(binDir, "secretplane")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(docsDir, filepath.Join(work, "docs")); err != nil {
				t.Fatal(err)
			}
			env := append(cleanEnv(), "SECRETPLANE_DATA_DIR="+dataDir, "PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
			subst := docsPlaceholders(srv, metricsAddr)
			for _, c := range cmds {
				text := c.text
				for from, to := range subst {
					text = strings.ReplaceAll(text, from, to)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", text)
				cmd.Dir, cmd.Env = work, env
				out, err := cmd.CombinedOutput()
				cancel()
				switch {
				case err != nil && !c.wantsFail:
					t.Fatalf("docs/%s:%d: %s\nexited: %v\n%s\n(server log:\n%s)", name, c.line, c.text, err, out, tail(srv.out.String(), 40))
				case err == nil && c.wantsFail:
					t.Fatalf("docs/%s:%d: %s\nis marked \"# fails\" but succeeded:\n%s", name, c.line, c.text, out)
				}
				t.Logf("docs/%s:%d: %s\n%s", name, c.line, c.text, out)
			}
		})
	}
}

// The alert rules' runbook links land on headings of docs/operations.md.
func TestDocsRunbookAnchors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, l := range strings.Split(string(raw), "\n") {
		if h, ok := strings.CutPrefix(l, "#"); ok {
			anchors[githubAnchor(strings.TrimLeft(h, "# "))] = true
		}
	}
	for _, alert := range []string{"SecretExpiringSoon", "SecretRenewalOverdue", "RotationFailed", "RotationOverdue", "RolloutStuck", "BackendUnavailable", "AuditBacklog", "SecretplaneDown", "RequiredSecretUnresolvable"} {
		if !anchors[strings.ToLower(alert)] {
			t.Errorf("docs/operations.md has no heading %q", alert)
		}
	}
	rules, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`docs/operations\.md#([A-Za-z0-9_-]+)`).FindAllSubmatch(rules, -1) {
		if !anchors[string(m[1])] {
			t.Errorf("deploy/prometheus/alerts.yaml links docs/operations.md#%s, which is no heading", m[1])
		}
	}
}

// githubAnchor is the id GitHub gives a heading: lower case, spaces as
// hyphens, punctuation other than - and _ dropped.
func githubAnchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(h)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
