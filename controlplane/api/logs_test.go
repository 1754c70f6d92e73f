package api_test

import (
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Every call gets a request id (the caller's when well-formed), returned in
// the response header and written to the call's log line with the caller's
// SPIFFE ID.
func TestRequestIDAndCallLog(t *testing.T) {
	e := newEnv(t)
	c := e.adminClient(t)
	cases := []struct {
		name, sent string
		keep       bool
	}{
		{"caller id kept", "req-1234.abc_X", true},
		{"malformed id replaced", "bad id with spaces", false},
		{"secret-looking id replaced", "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hdr metadata.MD
			ctx := metadata.AppendToOutgoingContext(ctxT(t), "x-request-id", tc.sent)
			if _, err := c.ListSecrets(ctx, &spv1.ListSecretsRequest{}, grpc.Header(&hdr)); err != nil {
				t.Fatal(err)
			}
			got := hdr.Get("x-request-id")
			if len(got) != 1 || got[0] == "" {
				t.Fatalf("response header x-request-id = %v", got)
			}
			if (got[0] == tc.sent) != tc.keep {
				t.Fatalf("request id %q for sent %q; keep=%v", got[0], tc.sent, tc.keep)
			}
			logs := e.logs.String()
			if !strings.Contains(logs, `"request_id":"`+got[0]+`"`) || !strings.Contains(logs, `"peer_id":"`+e.admin.ID().String()+`"`) {
				t.Fatalf("call log lacks request id or peer id:\n%s", logs)
			}
			if !tc.keep && strings.Contains(logs, tc.sent) {
				t.Fatalf("refused request id reached the logs")
			}
		})
	}
	// A caller that sent none: no id on success, the server's id in the
	// trailer of a failure, the same id as in the call log.
	var hdr, trl metadata.MD
	if _, err := c.ListSecrets(ctxT(t), &spv1.ListSecretsRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl)); err != nil {
		t.Fatal(err)
	}
	if got := append(hdr.Get("x-request-id"), trl.Get("x-request-id")...); len(got) != 0 {
		t.Fatalf("a successful call that sent no id got %v back", got)
	}
	_, err := c.GetSecret(ctxT(t), &spv1.GetSecretRequest{Name: "no/such-secret"}, grpc.Header(&hdr), grpc.Trailer(&trl))
	got := trl.Get("x-request-id")
	if status.Code(err) != codes.NotFound || len(got) != 1 || !validID.MatchString(got[0]) {
		t.Fatalf("failed call: %v, trailer id %v", err, got)
	}
	if !strings.Contains(e.logs.String(), `"request_id":"`+got[0]+`"`) {
		t.Fatalf("the trailer's id %s is not the call log's", got[0])
	}
}

var validID = regexp.MustCompile(`^[0-9a-f]{24}$`)
