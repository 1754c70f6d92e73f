package e2e_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// loadDriver is a load driver process (internal/sdsload, internal/rotload)
// spoken to in lines: commands on its stdin, one JSON object per line on
// its stdout. Closing its input ends it.
type loadDriver struct {
	name   string
	stdin  io.WriteCloser
	lines  chan []byte
	stderr *lockedBuffer
	server *server // whose output a failure shows
}

// startDriver runs cmd as a load driver until the benchmark ends.
func startDriver(b *testing.B, cmd *exec.Cmd, srv *server) *loadDriver {
	b.Helper()
	d := &loadDriver{name: filepath.Base(cmd.Path), lines: make(chan []byte), stderr: &lockedBuffer{}, server: srv}
	cmd.Stderr = d.stderr
	var err error
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
		for sc.Scan() {
			d.lines <- slices.Clone(sc.Bytes())
		}
		close(d.lines)
		exited <- cmd.Wait() // once its output is read to the end
	}()
	b.Cleanup(func() {
		d.stdin.Close() // end of input ends the driver
		go func() {
			for range d.lines {
			}
		}()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return d
}

// send writes one command line.
func (d *loadDriver) send(b *testing.B, format string, args ...any) {
	b.Helper()
	if _, err := fmt.Fprintf(d.stdin, format+"\n", args...); err != nil {
		b.Fatalf("%s: %v\n%s", d.name, err, d.stderr.String())
	}
}

// read decodes the driver's next line, what it is for naming it in a failure.
func (d *loadDriver) read(b *testing.B, what string, v any) {
	b.Helper()
	select {
	case line, ok := <-d.lines:
		if !ok {
			b.Fatalf("%s ended before %s:\n%s\nserver:\n%s", d.name, what, d.stderr.String(), d.server.out.String())
		}
		if err := json.Unmarshal(line, v); err != nil {
			b.Fatalf("%s's %s line: %v: %.500s", d.name, what, err, line)
		}
	case <-time.After(3 * time.Minute):
		b.Fatalf("no %s from %s in 3m:\n%s", what, d.name, d.stderr.String())
	}
}
