// Command secretplane is the secretplane server and its command-line client.
//
//	secretplane server --dev          start a dev server on embedded defaults
//	secretplane secret put|get|list|delete
//	secretplane config put|get|list|delete
//	secretplane ref check REF
//	secretplane dev issue NAME        write a workload SVID from the dev CA
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		if msg := describeError(err); msg != "" {
			fmt.Fprintln(os.Stderr, "error:", msg)
		}
		os.Exit(exitCode(err)) // 1, or a command's own (doctor: 1 warnings, 2 failures)
	}
}

// describeError renders an error for the terminal: a gRPC status as its code
// and message plus each field violation.
func describeError(err error) string {
	var silent silentError
	if errors.As(err, &silent) {
		return scrub(silent.msg)
	}
	st, ok := status.FromError(err)
	if !ok {
		return scrub(err.Error())
	}
	return scrub(formatStatus(st))
}

type silentError struct{ msg string }

func (e silentError) Error() string { return e.msg }
