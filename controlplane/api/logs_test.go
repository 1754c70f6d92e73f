package api_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

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
}
