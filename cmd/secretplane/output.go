package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/secretref"
)

func checkOutput(format string) error {
	if format != "table" && format != "json" {
		return fmt.Errorf("--output %q: want table or json", format)
	}
	return nil
}

func printJSON(w io.Writer, m proto.Message) error {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	// protojson varies its whitespace on purpose; re-indent for stable output.
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// table writes rows under a header, columns aligned.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// fields writes "key: value" lines, aligned.
func fields(w io.Writer, kv [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, p := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func formatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

// formatStatus renders a gRPC error: code, message, and each field
// violation of a BadRequest detail on its own line.
func formatStatus(st *status.Status) string {
	var b strings.Builder
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			fmt.Fprintf(&b, "%s:", st.Code())
			for _, v := range br.GetFieldViolations() {
				fmt.Fprintf(&b, "\n  %s: %s", v.GetField(), v.GetDescription())
			}
			return b.String()
		}
	}
	fmt.Fprintf(&b, "%s: %s", st.Code(), st.Message())
	return b.String()
}

// shown renders a piece of the user's input for a message: quoted when it
// is short, printable and does not look like a secret, else by its length
// only. Input is where secrets get pasted by mistake, and a message ends up
// in terminals, CI logs and tickets.
func shown(s string) string {
	if s != "" && len(s) <= 128 && utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) {
		if _, secret := secretref.DetectLiteral(s); !secret {
			return strconv.Quote(s)
		}
	}
	return fmt.Sprintf("[%d bytes, not shown]", len(s))
}

// scrub replaces each word of a message that looks like a secret: the
// last line of defence for messages that quote input (a parser's, a
// server's).
func scrub(msg string) string {
	if _, secret := secretref.DetectLiteral(msg); !secret {
		return msg
	}
	for w := range strings.FieldsSeq(msg) {
		if _, secret := secretref.DetectLiteral(w); secret {
			msg = strings.ReplaceAll(msg, w, fmt.Sprintf("[%d bytes, not shown]", len(w)))
		}
	}
	return msg
}
