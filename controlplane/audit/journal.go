package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/secretplane/secretplane/store"
)

// The journal is the audit log's write-ahead file for an embedded store: a
// directory of append-only segment files of JSON lines, one event a line,
// each segment named by the sequence number of its first event. Appending
// a batch is one write to the end of a file, where a SQLite transaction
// rewrites whole pages of the table and its indexes; so a caller's event is
// acknowledged once it is in the journal, and the events move into the
// store behind it in large transactions. The journal's lock file keeps a
// second process off it, since the writer holds the chain head in memory.
const (
	journalLock   = "LOCK"
	segmentSuffix = ".jsonl"
)

type segment struct {
	path string
	last int64 // sequence number of its last event
}

type journal struct {
	dir      string
	lock     *os.File
	maxBytes int64

	mu     sync.Mutex
	cur    *os.File
	curSeg segment
	size   int64
	closed []segment // full segments, oldest first, not yet all in the store
	broken error     // set when a failed write could not be undone
	buf    []byte
}

func openJournal(dir string, maxBytes int64) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create audit journal directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, journalLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit journal lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("audit journal %s is in use by another process: is another server running on this store?", dir)
		}
		return nil, fmt.Errorf("lock audit journal %s: %w", dir, err)
	}
	return &journal{dir: dir, lock: lock, maxBytes: maxBytes}, nil
}

// segmentPaths lists the segment files in sequence order (their names are
// zero-padded sequence numbers).
func (j *journal) segmentPaths() ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(j.dir, "*"+segmentSuffix))
	if err != nil {
		return nil, fmt.Errorf("list audit journal segments: %w", err)
	}
	sort.Strings(paths)
	return paths, nil
}

// replay reads every segment and returns its events in order (see
// decodeSegment). A last line cut short (the machine stopped while it was
// written) is dropped and reported as torn; any other damage is an error
// naming the segment.
func (j *journal) replay() (events []store.AuditEvent, torn bool, err error) {
	paths, err := j.segmentPaths()
	if err != nil {
		return nil, false, err
	}
	for i, path := range paths {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, false, fmt.Errorf("read audit journal segment: %w", err)
		}
		var cut bool
		events, cut, err = decodeSegment(raw, events)
		if err != nil {
			return nil, false, fmt.Errorf("audit journal segment %s: %w", filepath.Base(path), err)
		}
		if cut && i != len(paths)-1 {
			return nil, false, fmt.Errorf("audit journal segment %s: its last line is cut short but later segments follow", filepath.Base(path))
		}
		torn = cut
	}
	return events, torn, nil
}

// decodeSegment appends a segment's events to events, each checked: its
// hash matches its fields and it follows the event before it. cut reports
// a last line without its newline, which is not decoded.
func decodeSegment(raw []byte, events []store.AuditEvent) (_ []store.AuditEvent, cut bool, _ error) {
	lines := bytes.Split(raw, []byte{'\n'})
	cut = len(lines[len(lines)-1]) > 0
	for n, line := range lines[:len(lines)-1] {
		var je JSONEvent
		if err := json.Unmarshal(line, &je); err != nil {
			return nil, false, fmt.Errorf("line %d: not an audit event: %w", n+1, err)
		}
		e := storeEvent(je)
		if Hash(e) != e.Hash {
			return nil, false, fmt.Errorf("line %d: event %d was modified: its hash does not match its contents", n+1, e.Seq)
		}
		if k := len(events); k > 0 && (e.Seq != events[k-1].Seq+1 || e.PrevHash != events[k-1].Hash) {
			return nil, false, fmt.Errorf("line %d: event %d does not follow event %d", n+1, e.Seq, events[k-1].Seq)
		}
		events = append(events, e)
	}
	return events, cut, nil
}

// appendEvent appends e as a JSON object that decodes to what
// json.Marshal(jsonEvent(e)) does, several times faster: it is on every
// call's path. Strings are valid UTF-8 without NUL (see text), so they
// escape losslessly.
func appendEvent(b []byte, e store.AuditEvent) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendInt(b, e.Seq, 10)
	b = append(b, `,"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	for _, f := range [...]struct {
		name, value string
		omitEmpty   bool
	}{
		{"actor", e.Actor, false}, {"action", e.Action, false}, {"target", e.Target, false},
		{"decision", e.Decision, false}, {"grant", e.Policy, true}, {"outcome", e.Outcome, false},
		{"request_id", e.RequestID, true}, {"ref", e.Ref, true}, {"refused", e.Refused, true},
		{"prev_hash", e.PrevHash, false}, {"hash", e.Hash, false},
	} {
		if f.omitEmpty && f.value == "" {
			continue
		}
		b = append(append(append(b, ',', '"'), f.name...), '"', ':')
		b = appendJSONString(b, f.value)
	}
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		default: // control characters, and HTML's as encoding/json escapes them
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	return append(append(b, s[start:]...), '"')
}

// start removes every segment (their events are in the store) and opens a
// fresh one whose first event will be next.
func (j *journal) start(next int64) error {
	paths, err := j.segmentPaths()
	if err != nil {
		return err
	}
	for _, p := range paths {
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("remove replayed audit journal segment: %w", err)
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.openSegment(next)
}

func (j *journal) openSegment(first int64) error {
	path := filepath.Join(j.dir, fmt.Sprintf("%020d%s", first, segmentSuffix))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("open audit journal segment: %w", err)
	}
	if err := syncDir(j.dir); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	j.cur, j.curSeg, j.size = f, segment{path: path, last: first - 1}, 0
	return nil
}

// syncDir makes a created or removed file's name durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync audit journal directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync audit journal directory: %w", err)
	}
	return nil
}

// append writes events to the end of the current segment in one write and
// starts a new segment when this one is full.
func (j *journal) append(events []store.AuditEvent) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.broken != nil {
		return j.broken
	}
	if j.cur == nil {
		return errors.New("audit journal is closed")
	}
	if j.size >= j.maxBytes { // the last rotation failed: try again
		if err := j.rotate(); err != nil && j.size >= 2*j.maxBytes {
			return fmt.Errorf("audit journal segment %s is full and the next cannot be started: %w", filepath.Base(j.curSeg.path), err)
		}
	}
	buf := j.buf[:0]
	for _, e := range events {
		buf = append(appendEvent(buf, e), '\n')
	}
	j.buf = buf
	if _, err := j.cur.Write(buf); err != nil {
		// A failed write may have left part of a line: cut it off, or
		// refuse every later append rather than write after it.
		if terr := j.cur.Truncate(j.size); terr != nil {
			j.broken = fmt.Errorf("audit journal: a failed write could not be undone: %w", terr)
			return errors.Join(fmt.Errorf("write audit journal: %w", err), j.broken)
		}
		return fmt.Errorf("write audit journal: %w", err)
	}
	j.size += int64(len(buf))
	j.curSeg.last = events[len(events)-1].Seq
	if j.size >= j.maxBytes {
		_ = j.rotate() // a failure is retried at the next append
	}
	return nil
}

// rotate makes the full segment durable, then opens the next: so after a
// machine crash only the newest segment can end short.
func (j *journal) rotate() error {
	full, seg := j.cur, j.curSeg
	if err := full.Sync(); err != nil {
		return fmt.Errorf("sync audit journal segment: %w", err)
	}
	if err := j.openSegment(seg.last + 1); err != nil {
		j.cur, j.curSeg = full, seg
		return err
	}
	full.Close()
	j.closed = append(j.closed, seg)
	return nil
}

// releasable reports whether a full segment holds nothing after upTo.
func (j *journal) releasable(upTo int64) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.closed) > 0 && j.closed[0].last <= upTo
}

// release removes the full segments whose every event is in the store.
func (j *journal) release(upTo int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	keep := j.closed[:0]
	for _, s := range j.closed {
		if s.last > upTo || os.Remove(s.path) != nil {
			keep = append(keep, s)
		}
	}
	j.closed = keep
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	var err error
	if j.cur != nil {
		err = j.cur.Close()
		j.cur = nil
	}
	return errors.Join(err, j.lock.Close())
}
