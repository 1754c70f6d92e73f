package api

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// decodeGuard makes malformed requests (invalid UTF-8 in a string field,
// broken wire format) fail with INVALID_ARGUMENT instead of grpc-go's
// INTERNAL: the fault is the caller's. grpc-go wraps every codec error as
// INTERNAL before interceptors run, so the codec instead records the failure
// against the (reset) message and the outermost interceptor reports it.
//
// It is a CodecV2, so messages are marshalled into, and decoded from,
// grpc-go's pooled buffers: a codec of the older []byte kind would cost
// every call a fresh buffer each way. Decoding is grpc-go's own proto
// codec's. Responses carry secret values, so the pooled buffers of large
// ones are cleared as they go back to the pool rather than kept there
// until reused.
type decodeGuard struct {
	proto  encoding.CodecV2
	mu     sync.Mutex
	failed map[proto.Message]error
}

func newDecodeGuard() *decodeGuard {
	c := encoding.GetCodecV2(protocodec.Name)
	if c == nil {
		panic("api: grpc-go's proto codec is not registered")
	}
	return &decodeGuard{proto: c, failed: make(map[proto.Message]error)}
}

// Name implements encoding.CodecV2; it replaces the default "proto" codec
// of this server only.
func (g *decodeGuard) Name() string { return protocodec.Name }

// Marshal implements encoding.CodecV2: into a pooled buffer that is
// cleared when grpc-go has sent it.
func (g *decodeGuard) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal: %T is not a protobuf message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // reuses the Size just computed; m is not being changed
	if mem.IsBelowBufferPoolingThreshold(size) {
		// grpc-go does not pool small buffers (Free is a no-op for
		// them): this one is garbage once sent, like any other.
		out, err := opts.MarshalAppend(make([]byte, 0, size), m)
		if err != nil {
			return nil, fmt.Errorf("marshal %T: %w", v, err)
		}
		return mem.BufferSlice{mem.SliceBuffer(out)}, nil
	}
	buf := zeroOnPut{}.Get(size)
	out, err := opts.MarshalAppend((*buf)[:0], m)
	if err != nil {
		zeroOnPut{}.Put(buf)
		return nil, fmt.Errorf("marshal %T: %w", v, err)
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, zeroOnPut{})}, nil
}

// zeroOnPut is grpc-go's default buffer pool, except that a buffer is
// zeroed as it is put back. It has no state of its own.
type zeroOnPut struct{}

func (zeroOnPut) Get(n int) *[]byte { return mem.DefaultBufferPool().Get(n) }

func (zeroOnPut) Put(b *[]byte) {
	clear((*b)[:cap(*b)])
	mem.DefaultBufferPool().Put(b)
}

// Unmarshal implements encoding.CodecV2.
func (g *decodeGuard) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("unmarshal: %T is not a protobuf message", v)
	}
	if err := g.proto.Unmarshal(data, m); err != nil {
		proto.Reset(m)
		g.mu.Lock()
		g.failed[m] = err
		g.mu.Unlock()
	}
	return nil
}

// check returns INVALID_ARGUMENT when decoding m failed, and forgets m.
func (g *decodeGuard) check(m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil
	}
	g.mu.Lock()
	err, failed := g.failed[pm]
	if failed {
		delete(g.failed, pm)
	}
	g.mu.Unlock()
	if failed {
		return status.Errorf(codes.InvalidArgument, "malformed request message: %v", err)
	}
	return nil
}

// unary must be the outermost interceptor, so that every recorded failure
// is collected even when a later interceptor refuses the call.
func (g *decodeGuard) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := g.check(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (g *decodeGuard) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &guardedStream{ServerStream: ss, guard: g})
}

type guardedStream struct {
	grpc.ServerStream
	guard *decodeGuard
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.guard.check(m)
}
