package awssm_test

// The backend is contract-tested at the protocol level against
// internal/awsfake, a Secrets Manager that speaks the JSON 1.1 protocol and
// enforces AWS's stage-label rules (no AWS emulator can be had here). These
// are the assertions the tests make about what the fake saw and holds.

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/secretplane/secretplane/internal/awsfake"
)

// wantCalls asserts the exact sequence of calls since the last ResetCalls.
func wantCalls(t *testing.T, f *awsfake.Server, want ...string) {
	t.Helper()
	var got []string
	for _, c := range f.Calls() {
		got = append(got, c.String())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("calls at AWS:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// wantStages asserts VersionIdsToStages at the fake (labels in any order).
func wantStages(t *testing.T, f *awsfake.Server, want map[string][]string) {
	t.Helper()
	got := f.Stages("prod/db")
	norm := func(m map[string][]string) map[string][]string {
		out := map[string][]string{}
		for k, v := range m {
			out[k] = slices.Sorted(slices.Values(v))
		}
		return out
	}
	if !reflect.DeepEqual(norm(got), norm(want)) {
		t.Fatalf("labels at AWS %v, want %v", got, want)
	}
}

// pendingValue is the JSON document of the version labelled AWSPENDING.
func pendingValue(t *testing.T, f *awsfake.Server) map[string]any {
	t.Helper()
	for _, v := range f.Versions("prod/db") {
		if slices.Contains(v.Stages, "AWSPENDING") {
			var doc map[string]any
			dec := json.NewDecoder(strings.NewReader(v.Value))
			dec.UseNumber()
			if err := dec.Decode(&doc); err != nil {
				t.Fatalf("staged value is not JSON: %v", err)
			}
			return doc
		}
	}
	t.Fatal("no version is AWSPENDING")
	return nil
}
