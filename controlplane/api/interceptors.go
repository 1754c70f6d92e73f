package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// RequestIDHeader carries the request id in both directions: a caller may
// send one (it is kept when well-formed, replaced otherwise) and gets back
// in the response header the id the server used. A unary call that sent
// none gets the server's id in the trailer of a failure only: an id in
// every response costs each call a header nobody asked for (about 3% of
// Resolve's throughput), while a failure is what one traces. Streams
// always get it in their header.
const RequestIDHeader = "x-request-id"

// callState is what the interceptors learn of a call, in one context
// value (one allocation and one lookup per call rather than one each):
// its request id, then the caller's SPIFFE ID, then its access decision.
type callState struct {
	requestID string
	peer      spiffeid.ID
	hasPeer   bool
	call      *access.Call
}

type callStateKey struct{}

func stateOf(ctx context.Context) *callState {
	s, _ := ctx.Value(callStateKey{}).(*callState)
	return s
}

// RequestID returns the id of the request being served, or "".
func RequestID(ctx context.Context) string {
	if s := stateOf(ctx); s != nil {
		return s.requestID
	}
	return ""
}

// callOf returns the access decision of the call being served, or nil
// (whose NoteRef notes nothing).
func callOf(ctx context.Context) *access.Call {
	if s := stateOf(ctx); s != nil {
		return s.call
	}
	return nil
}

// withRequestID gives ctx the caller's request id, or a new one, and
// reports whether the caller sent one (and so has it back in the header).
func withRequestID(ctx context.Context, header bool) (context.Context, bool) {
	id := ""
	// ValueFromIncomingContext reads the one key; FromIncomingContext
	// would copy every header on every call.
	sent := metadata.ValueFromIncomingContext(ctx, RequestIDHeader)
	if len(sent) == 1 && validRequestID(sent[0]) {
		id = sent[0]
	}
	if id == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	if header = header || len(sent) > 0; header {
		_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, id))
	}
	return context.WithValue(ctx, callStateKey{}, &callState{requestID: id}), header
}

// validRequestID accepts short ids of safe characters only, and nothing
// that looks like a secret: a caller's id lands in logs and responses.
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	if _, secret := secretref.DetectLiteral(s); secret {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func requestIDUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, inHeader := withRequestID(ctx, false)
	resp, err := handler(ctx, req)
	if err != nil && !inHeader {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(RequestIDHeader, RequestID(ctx)))
	}
	return resp, err
}

func requestIDStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, _ := withRequestID(ss.Context(), true)
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

// contextStream replaces a server stream's context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// callLog writes one line per finished call (never a payload): failures
// at the level their code deserves (the middleware's server mapping), and
// successful calls at debug, since at tens of thousands of calls a second
// an info line each would drown the logs; the audit log records every
// access. The line is built only when its level is enabled, so a quiet log
// costs a call nothing.
type callLog struct{ log *slog.Logger }

func (l callLog) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	l.finish(ctx, info.FullMethod, "unary", start, err)
	return resp, err
}

func (l callLog) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	kind := "server_stream"
	switch {
	case info.IsClientStream && info.IsServerStream:
		kind = "bidi_stream"
	case info.IsClientStream:
		kind = "client_stream"
	}
	l.finish(ss.Context(), info.FullMethod, kind, start, err)
	return err
}

func (l callLog) finish(ctx context.Context, method, kind string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelDebug
	if code != codes.OK {
		level = slog.Level(logging.DefaultServerCodeToLevel(code))
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	service, name := "", method
	if i := strings.LastIndexByte(method, '/'); i > 0 {
		service, name = strings.TrimPrefix(method[:i], "/"), method[i+1:]
	}
	attrs := []slog.Attr{
		slog.String("grpc.service", service), slog.String("grpc.method", name), slog.String("grpc.method_type", kind),
		slog.String("grpc.code", code.String()), slog.Float64("grpc.time_ms", float64(time.Since(start).Microseconds())/1000),
		slog.String("request_id", RequestID(ctx)),
	}
	if id, err := connPeerID(ctx); err == nil {
		attrs = append(attrs, slog.String("peer_id", id.String()))
	}
	if err != nil {
		attrs = append(attrs, slog.String("grpc.error", status.Convert(err).Message()))
	}
	l.log.LogAttrs(ctx, level, "finished call", attrs...)
}

// recoveryHandler turns a panic into INTERNAL. The panic value is logged
// through the redacting handler and never returned to the caller.
func recoveryHandler(log *slog.Logger) recovery.RecoveryHandlerFuncContext {
	return func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic while serving request", "request_id", RequestID(ctx), "panic", p, "stack", string(debug.Stack()))
		return status.Errorf(codes.Internal, "internal error (request id %s)", RequestID(ctx))
	}
}

// draining refuses calls once its channel is closed: the server is
// stopping, and a graceful stop then waits only for the calls in flight
// rather than for clients to notice the connection going away.
type draining <-chan struct{}

var errDraining = status.Error(codes.Unavailable, "the server is shutting down; retry, elsewhere")

func (d draining) closed() bool {
	select {
	case <-d:
		return true
	default:
		return false
	}
}

func (d draining) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if d.closed() {
		return nil, errDraining
	}
	return handler(ctx, req)
}

func (d draining) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if d.closed() {
		return errDraining
	}
	return handler(srv, ss)
}
