// Package deploy_test checks the monitoring files under deploy/: the
// Prometheus alert rules (promtool's own checks and unit tests, and the
// rules' required fields) and the Grafana dashboard (every query names only
// metrics the server exports).
package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/secretplane/secretplane/internal/server"
)

const (
	alertsFile     = "prometheus/alerts.yaml"
	alertsTestFile = "prometheus/alerts_test.yaml"
	runbookPrefix  = "https://github.com/secretplane/secretplane/blob/main/docs/operations.md#"
)

// knownMetrics are the metric names the server exports (controlplane
// metrics, the go-grpc-middleware provider's defaults) plus Prometheus's own
// up. Histograms are listed by base name; their _bucket, _sum and _count
// series are accepted.
var knownMetrics = map[string]bool{
	"secretplane_secret_expiration_timestamp_seconds":     false,
	"secretplane_secret_renewal_timestamp_seconds":        false,
	"secretplane_required_secret_resolvable":              false,
	"secretplane_rotation_state":                          false,
	"secretplane_rotation_started_timestamp_seconds":      false,
	"secretplane_rotation_last_success_timestamp_seconds": false,
	"secretplane_rotation_next_due_timestamp_seconds":     false,
	"secretplane_rotation_failures_total":                 false,
	"secretplane_rotation_duration_seconds":               true,
	"secretplane_consumers_lagging":                       false,
	"secretplane_backend_requests_total":                  false,
	"secretplane_backend_request_errors_total":            false,
	"secretplane_backend_request_duration_seconds":        true,
	"secretplane_backend_up":                              false,
	"secretplane_cache_hits_total":                        false,
	"secretplane_cache_misses_total":                      false,
	"secretplane_cache_stale_serves_total":                false,
	"secretplane_cache_evictions_total":                   false,
	"secretplane_cache_entries":                           false,
	"secretplane_cache_bytes":                             false,
	"grpc_server_started_total":                           false,
	"grpc_server_handled_total":                           false,
	"grpc_server_handling_seconds":                        true,
	"grpc_server_msg_sent_total":                          false,
	"grpc_server_msg_received_total":                      false,
	"secretplane_audit_journal_pending_events":            false,
	"secretplane_inventory_timestamp_seconds":             false,
	"secretplane_audit_queue_depth":                       false,
	"secretplane_audit_journal_lag_seconds":               false,
	"secretplane_audit_write_failures_total":              false,
	"secretplane_sds_streams":                             false,
	"secretplane_sds_pushes_total":                        false,
	"secretplane_sds_acks_total":                          false,
	"secretplane_sds_nacks_total":                         false,
	"secretplane_watch_streams":                           false,
	"secretplane_build_info":                              false,
	"secretplane_store_up":                                false,
	"secretplane_events_dropped_total":                    false,
	"secretplane_webhook_dead_letters_total":              false,
	"up":                                                  false,
}

// wantAlerts are the alerts issue 18 asks for; each has a section of that
// name in docs/operations.md.
var wantAlerts = []string{
	"SecretExpiringSoon", "SecretRenewalOverdue", "RotationFailed", "RotationOverdue",
	"RolloutStuck", "BackendUnavailable", "AuditBacklog", "SecretplaneDown",
	"RequiredSecretUnresolvable",
}

// promqlWords are the PromQL functions, aggregations, keywords and
// modifiers the files may use: every other identifier in a query must be a
// known metric (label names are recognised by position).
var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`abs absent absent_over_time avg avg_over_time bottomk ceil changes
		clamp clamp_max clamp_min count count_over_time count_values delta deriv exp floor group
		histogram_quantile idelta increase irate label_join label_replace last_over_time ln log2 log10
		max max_over_time min min_over_time quantile quantile_over_time rate resets round scalar sort
		sort_desc sqrt stddev stdvar sum sum_over_time time timestamp topk vector
		and or unless by without on ignoring group_left group_right offset bool`) {
		promqlWords[w] = true
	}
}

var (
	quotedRE  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	rangeRE   = regexp.MustCompile(`\[[^\]]*\]`)
	varRE     = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	groupRE   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	matcherRE = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
	numberRE  = regexp.MustCompile(`\b\d+(\.\d+)?([eE][+-]?\d+)?\b`)
	identRE   = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	grafanaRE = regexp.MustCompile(`^\s*label_values\((.*)\)\s*$`)
)

// metricNames returns the metric names expr uses, or an error naming an
// identifier that is neither a known PromQL word nor a known metric.
func metricNames(expr string) ([]string, error) {
	if m := grafanaRE.FindStringSubmatch(expr); m != nil {
		// Grafana's label_values(selector, label): check the selector.
		inner := m[1]
		if i := strings.LastIndex(inner, ","); i >= 0 && !strings.ContainsAny(inner[i:], `"}`) {
			inner = inner[:i]
		}
		expr = inner
	}
	var names []string
	// A __name__ matcher names metrics inside a string.
	for _, m := range regexp.MustCompile(`__name__\s*=~?\s*"([^"]*)"`).FindAllStringSubmatch(expr, -1) {
		names = append(names, strings.Split(m[1], "|")...)
	}
	s := quotedRE.ReplaceAllString(expr, " ")
	s = rangeRE.ReplaceAllString(s, " ")
	s = varRE.ReplaceAllString(s, " ")
	s = groupRE.ReplaceAllString(s, " $1 ")
	s = matcherRE.ReplaceAllString(s, " ")
	s = numberRE.ReplaceAllString(s, " ")
	names = append(names, identRE.FindAllString(s, -1)...)
	var metrics []string
	for _, id := range names {
		if promqlWords[id] {
			continue
		}
		if !isKnownMetric(id) {
			return nil, fmt.Errorf("%q is not a metric secretplane exports (nor a PromQL function or keyword)", id)
		}
		metrics = append(metrics, id)
	}
	return metrics, nil
}

func isKnownMetric(name string) bool {
	if _, ok := knownMetrics[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && knownMetrics[base] {
			return true
		}
	}
	return false
}

func TestMetricNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr    string
		want    []string
		wantErr bool
	}{
		{expr: `sum by (backend) (rate(secretplane_backend_requests_total{instance=~"$instance"}[$__rate_interval]))`, want: []string{"secretplane_backend_requests_total"}},
		{expr: `histogram_quantile(0.99, sum by (le, method) (rate(secretplane_rotation_duration_seconds_bucket[1h])))`, want: []string{"secretplane_rotation_duration_seconds_bucket"}},
		{expr: `(time() - secretplane_rotation_started_timestamp_seconds > 1800) and on (secret) max by (secret) (secretplane_rotation_state{state=~"pending|verifying"} == 1)`, want: []string{"secretplane_rotation_started_timestamp_seconds", "secretplane_rotation_state"}},
		{expr: `absent(up{job="secretplane"})`, want: []string{"up"}},
		{expr: `label_values({__name__=~"secretplane_rotation_state|secretplane_consumers_lagging"}, secret)`, want: []string{"secretplane_rotation_state", "secretplane_consumers_lagging"}},
		{expr: `rate(grpc_server_handled_total{grpc_code!="OK"}[5m])`, want: []string{"grpc_server_handled_total"}},
		{expr: `secretplane_secret_expiry_seconds - time()`, wantErr: true},
		{expr: `rate(secretplane_cache_hits[5m])`, wantErr: true},
		{expr: `sum by (backend) (secretplane_backend_up) * process_resident_memory_bytes`, wantErr: true},
		{expr: `secretplane_rotation_failures_total_bucket`, wantErr: true},
		{expr: `label_values({__name__=~"secretplane_rotation_state|secretplane_made_up"}, secret)`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			t.Parallel()
			got, err := metricNames(tt.expr)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("metricNames accepted %q (found %v), want an unknown-metric error", tt.expr, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("metricNames(%q): %v", tt.expr, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("metricNames(%q) = %v, want %v", tt.expr, got, tt.want)
			}
		})
	}
}

// requirePromtool returns promtool's path, skipping the test without it
// unless CI or SECRETPLANE_REQUIRE_PROMTOOL says it must run.
func requirePromtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err == nil {
		return path
	}
	if os.Getenv("CI") != "" || os.Getenv("SECRETPLANE_REQUIRE_PROMTOOL") != "" {
		t.Fatalf("promtool is required here (CI or SECRETPLANE_REQUIRE_PROMTOOL is set) but not found on PATH: %v; install it with apt-get install -y prometheus (scripts/test.sh does so as root)", err)
	}
	t.Skipf("promtool not found on PATH (%v): the alert rules are not checked by promtool; install Debian's prometheus package, or set SECRETPLANE_REQUIRE_PROMTOOL=1 to make this a failure", err)
	return ""
}

func TestPromtool(t *testing.T) {
	t.Parallel()
	promtool := requirePromtool(t)
	tests := []struct {
		name string
		args []string
	}{
		{name: "check rules", args: []string{"check", "rules", alertsFile}},
		{name: "test rules", args: []string{"test", "rules", alertsTestFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(t.Context(), promtool, tt.args...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(tt.args, " "), err, out)
			}
			t.Logf("promtool %s:\n%s", strings.Join(tt.args, " "), out)
		})
	}
}

// TestDashboardQueriesParse has promtool parse every dashboard query, as a
// recording rule with Grafana's variables replaced by sample values: a query
// Prometheus cannot parse shows an empty panel.
func TestDashboardQueriesParse(t *testing.T) {
	t.Parallel()
	promtool := requirePromtool(t)
	files, err := filepath.Glob(filepath.Join("grafana", "*.json"))
	if err != nil {
		t.Fatalf("listing the dashboards: %v", err)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
		"${instance}", ".*", "$instance", ".*", "${secret}", ".*", "$secret", ".*")
	type recording struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []recording
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("reading the dashboard: %v", err)
		}
		var d dashboard
		if err := json.Unmarshal(data, &d); err != nil {
			t.Fatalf("parsing %s: %v", file, err)
		}
		var walk func([]panel)
		walk = func(ps []panel) {
			for _, p := range ps {
				walk(p.Panels)
				for i, tg := range p.Targets {
					expr := vars.Replace(tg.Expr)
					if strings.Contains(expr, "$") {
						t.Errorf("%s: panel %q: expr %q uses a variable the dashboard does not define", file, p.Title, tg.Expr)
						continue
					}
					rules = append(rules, recording{Record: fmt.Sprintf("dashboard:panel_%d_%d", p.ID, i), Expr: expr})
				}
			}
		}
		walk(d.Panels)
	}
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatalf("encoding the dashboard queries as rules: %v", err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatalf("writing the dashboard queries as rules: %v", err)
	}
	res, err := exec.CommandContext(t.Context(), promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the %d dashboard queries: %v\n%s\n%s", len(rules), err, res, out)
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	data, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatalf("reading the alert rules: %v", err)
	}
	var f ruleFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("parsing %s: %v", alertsFile, err)
	}
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s holds no rules", alertsFile)
	}
	return rules
}

var durationRE = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)

func TestAlertRules(t *testing.T) {
	t.Parallel()
	rules := loadRules(t)
	seen := map[string]bool{}
	for i, r := range rules {
		name := r.Alert
		if name == "" {
			name = fmt.Sprintf("rule %d (record %q)", i, r.Record)
		}
		t.Run(fmt.Sprintf("%d_%s", i, name), func(t *testing.T) {
			if r.Alert == "" {
				t.Fatalf("%s: only alerting rules belong in %s", name, alertsFile)
			}
			seen[r.Alert] = true
			if !durationRE.MatchString(r.For) {
				t.Errorf("%s: for is %q, want a duration such as 5m so that the alert does not flap", name, r.For)
			}
			if sev := r.Labels["severity"]; sev != "warning" && sev != "critical" {
				t.Errorf("%s: labels.severity is %q, want warning or critical", name, sev)
			}
			summary := r.Annotations["summary"]
			if summary == "" {
				t.Errorf("%s: no summary annotation", name)
			}
			if strings.Contains(summary, "$value") || strings.Contains(summary, ".Value") {
				t.Errorf("%s: summary %q shows the sample value; name the secret or backend instead", name, summary)
			}
			if r.Annotations["description"] == "" {
				t.Errorf("%s: no description annotation", name)
			}
			if want := runbookPrefix + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url is %q, want %q (the alert's section of docs/operations.md)", name, r.Annotations["runbook_url"], want)
			}
			if _, err := metricNames(r.Expr); err != nil {
				t.Errorf("%s: expr %q: %v", name, r.Expr, err)
			}
		})
	}
	for _, a := range wantAlerts {
		if !seen[a] {
			t.Errorf("%s has no alert %s", alertsFile, a)
		}
	}
}

// TestRunbookAnchors checks that docs/operations.md has a section per alert
// (its heading is the alert's name, so its anchor is the runbook_url's).
func TestRunbookAnchors(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "docs", "operations.md")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the runbooks: %v", err)
	}
	headings := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		if h, ok := strings.CutPrefix(strings.TrimSpace(line), "#"); ok {
			headings[strings.TrimSpace(strings.TrimLeft(h, "#"))] = true
		}
	}
	for _, r := range loadRules(t) {
		if !headings[r.Alert] {
			t.Errorf("%s has no heading %q, the target of %s's runbook_url", path, r.Alert, r.Alert)
		}
	}
}

type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func TestGrafanaDashboards(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("grafana", "*.json"))
	if err != nil {
		t.Fatalf("listing the dashboards: %v", err)
	}
	if len(files) == 0 {
		t.Fatal("no dashboard in deploy/grafana")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("reading the dashboard: %v", err)
			}
			var d dashboard
			if err := json.Unmarshal(data, &d); err != nil {
				t.Fatalf("parsing %s: %v", file, err)
			}
			if d.Title == "" || d.UID == "" {
				t.Errorf("%s: title %q, uid %q: both are needed", file, d.Title, d.UID)
			}
			if d.SchemaVersion < 36 {
				t.Errorf("%s: schemaVersion %d, want a current one (39)", file, d.SchemaVersion)
			}
			checkTemplating(t, file, d)

			used := map[string]bool{}
			ids := map[int]string{}
			var walk func([]panel)
			walk = func(ps []panel) {
				for _, p := range ps {
					if other, dup := ids[p.ID]; dup {
						t.Errorf("%s: panels %q and %q share id %d", file, other, p.Title, p.ID)
					}
					ids[p.ID] = p.Title
					walk(p.Panels)
					if p.Type == "row" {
						continue
					}
					if len(p.Targets) == 0 {
						t.Errorf("%s: panel %q has no query", file, p.Title)
					}
					if !strings.Contains(string(p.Datasource), "${datasource}") {
						t.Errorf("%s: panel %q does not use the ${datasource} variable (datasource %s)", file, p.Title, p.Datasource)
					}
					for _, tg := range p.Targets {
						names, err := metricNames(tg.Expr)
						if err != nil {
							t.Errorf("%s: panel %q: expr %q: %v", file, p.Title, tg.Expr, err)
							continue
						}
						if len(names) == 0 {
							t.Errorf("%s: panel %q: expr %q names no metric", file, p.Title, tg.Expr)
						}
						for _, n := range names {
							used[n] = true
						}
					}
				}
			}
			walk(d.Panels)
			// Each figure issue 18 asks the dashboard for.
			for _, m := range []string{
				"secretplane_secret_expiration_timestamp_seconds", "secretplane_secret_renewal_timestamp_seconds",
				"secretplane_rotation_state", "secretplane_rotation_failures_total", "secretplane_rotation_duration_seconds_bucket",
				"secretplane_consumers_lagging", "secretplane_backend_requests_total", "secretplane_backend_request_errors_total",
				"secretplane_backend_request_duration_seconds_bucket", "secretplane_cache_hits_total", "secretplane_cache_misses_total",
				"secretplane_cache_entries", "secretplane_cache_bytes", "secretplane_cache_stale_serves_total",
				"grpc_server_handled_total", "secretplane_audit_queue_depth", "secretplane_audit_journal_lag_seconds",
				"secretplane_sds_streams", "secretplane_sds_pushes_total", "secretplane_sds_acks_total",
				"secretplane_sds_nacks_total", "secretplane_watch_streams",
			} {
				if !used[m] {
					t.Errorf("%s: no panel shows %s", file, m)
				}
			}
		})
	}
}

func checkTemplating(t *testing.T, file string, d dashboard) {
	t.Helper()
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		var q string
		if err := json.Unmarshal(v.Query, &q); err != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Errorf("%s: variable %s: query %s is neither a string nor {query}", file, v.Name, v.Query)
			}
			q = obj.Query
		}
		vars[v.Name] = v.Type + " " + q
		if v.Type == "query" {
			if _, err := metricNames(q); err != nil {
				t.Errorf("%s: variable %s: query %q: %v", file, v.Name, q, err)
			}
		}
	}
	if vars["datasource"] != "datasource prometheus" {
		t.Errorf("%s: want a datasource variable of type prometheus, have %q", file, vars["datasource"])
	}
	if !strings.HasPrefix(vars["secret"], "query label_values(") || !strings.HasSuffix(vars["secret"], ", secret)") {
		t.Errorf("%s: want a secret variable from label_values(..., secret), have %q", file, vars["secret"])
	}
}

// The names the rules and dashboards may use are the server's: every
// known name is one its registry describes, and every secretplane_ or
// grpc_server_ metric it describes is known (a rename in the code fails
// here, not silently in Prometheus).
func TestKnownMetricsAreTheServers(t *testing.T) {
	exported := map[string]bool{}
	for _, n := range server.MetricNames() {
		exported[n] = true
	}
	for name := range knownMetrics {
		if name != "up" && !exported[name] {
			t.Errorf("%s is used by the rules or dashboards but the server does not export it", name)
		}
	}
	for name := range exported {
		if (strings.HasPrefix(name, "secretplane_") || strings.HasPrefix(name, "grpc_server_")) && !known(name) {
			t.Errorf("the server exports %s, which knownMetrics does not list", name)
		}
	}
}

func known(name string) bool {
	_, ok := knownMetrics[name]
	return ok
}
