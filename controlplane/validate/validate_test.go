package validate

import (
	"strings"
	"testing"
)

func TestName(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
		why  string
	}{
		{"payments/db", true, ""},
		{"a", true, ""},
		{"team-a/svc_1/db.password", true, ""},
		{"", false, "required"},
		{"Payments/db", false, "upper-case"},
		{"payments//db", false, "empty"},
		{"/payments", false, "empty"},
		{"payments/", false, "empty"},
		{"payments/-db", false, "start and end"},
		{"payments/db.", false, "start and end"},
		{"pay ments", false, "not allowed"},
		{"pay\x00ments", false, "not allowed"},
		{"payments/../db", false, "start and end"},
		{strings.Repeat("a", 254), false, "limit is 253"},
		{strings.Repeat("a/", 16) + "a", false, "segments"},
		{"x/" + strings.Repeat("a", 64), false, "limit is 63"},
		{"ghp_zq8vw3xrpl2mn7kt9sy4zq8vw3xrpl2mn7kt", false, "looks like a secret value"},
		{"\xff", false, "UTF-8"},
	}
	for _, tc := range cases {
		err := Name(tc.name)
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), tc.why)) {
			t.Errorf("Name(%.30q) = %v; want ok=%v (%s)", tc.name, err, tc.ok, tc.why)
		}
		if err != nil && len(tc.name) > 3 && strings.Contains(err.Error(), tc.name) {
			t.Errorf("Name error echoes the input: %v", err)
		}
	}
}

func TestLabelsAndText(t *testing.T) {
	var c Collector
	Labels(&c, "labels", map[string]string{
		"team":    "payments",
		"Bad":     "x",
		"ok/key":  "value",
		"token":   "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT",
		"ctl":     "a\x01b",
		"toolong": strings.Repeat("x", MaxLabelValueLen+1),
	})
	err := c.Err()
	if err == nil {
		t.Fatal("want violations")
	}
	verr := err.(*Error)
	fields := map[string]bool{}
	for _, v := range verr.Violations {
		fields[v.Field] = true
	}
	for _, want := range []string{"labels", "labels[token]", "labels[ctl]", "labels[toolong]"} {
		if !fields[want] {
			t.Errorf("no violation for %s in %v", want, verr.Violations)
		}
	}
	if strings.Contains(err.Error(), "ghp_") {
		t.Fatalf("violation echoes a value: %v", err)
	}
	if p := verr.Prefixed("secret."); p.Violations[0].Field[:7] != "secret." {
		t.Fatalf("Prefixed: %v", p)
	}
	var none Collector
	if none.Err() != nil {
		t.Fatal("empty collector returned an error")
	}
}

func TestNamePrefix(t *testing.T) {
	for _, p := range []string{"", "payments/", "pay", "a/b-c_d.e"} {
		if err := NamePrefix(p); err != nil {
			t.Errorf("NamePrefix(%q): %v", p, err)
		}
	}
	for _, p := range []string{"A", "a b", "a%", strings.Repeat("a", 300)} {
		if NamePrefix(p) == nil {
			t.Errorf("NamePrefix(%.20q) accepted", p)
		}
	}
}
