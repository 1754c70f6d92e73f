package api

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// A response marshalled into a pooled buffer (grpc-go pools from 1 KiB)
// is zeroed once grpc-go has sent it and frees the buffer; before that it
// decodes to the message. Small responses decode too.
func TestMarshalClearsFreedBuffers(t *testing.T) {
	g := newDecodeGuard()
	for _, size := range []int{16, 2 << 10, 100 << 10} {
		value := bytes.Repeat([]byte{'s'}, size)
		msg := &spv1.ResolveResponse{Values: []*spv1.SecretValue{{Name: "payments/db", Version: "3", Value: value}}}
		data, err := g.Marshal(msg)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if len(data) != 1 {
			t.Fatalf("%d bytes: %d buffers, want 1", size, len(data))
		}
		raw := data[0].ReadOnlyData() // aliases the pooled buffer
		var back spv1.ResolveResponse
		if err := proto.Unmarshal(raw, &back); err != nil || !proto.Equal(&back, msg) {
			t.Fatalf("%d bytes: the marshalled message does not decode to the original (%v)", size, err)
		}
		data.Free()
		if len(raw) >= 1<<10 && !bytes.Equal(raw, make([]byte, len(raw))) {
			t.Fatalf("%d bytes: the freed buffer still holds the message", size)
		}
	}
}

func TestMarshalRefusesNonProto(t *testing.T) {
	if _, err := newDecodeGuard().Marshal(struct{}{}); err == nil {
		t.Fatal("a value that is not a protobuf message was marshalled")
	}
}
