package audit

import (
	"context"
	"fmt"

	"github.com/secretplane/secretplane/store"
)

// Reader reads the log back.
type Reader interface {
	QueryAudit(ctx context.Context, q store.AuditQuery) ([]store.AuditEvent, error)
	ChainHead(ctx context.Context) (store.AuditChainHead, error)
}

// Problem is one break in the chain.
type Problem struct {
	Seq    int64  // the event where the break shows
	Reason string // "modified", "deleted", "reordered", ...
}

func (p Problem) String() string { return fmt.Sprintf("event %d: %s", p.Seq, p.Reason) }

// Report is the result of Verify.
type Report struct {
	Events   int64
	Problems []Problem
}

// OK reports whether the chain verified.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// Verify walks the whole log in sequence order and checks every link: each
// event's hash matches its fields (else it was modified), sequence numbers
// follow each other (else events were deleted), each event names its
// predecessor's hash (else events were reordered or removed), and the chain
// ends where the store's chain head says (else the newest were deleted).
// The head is read first and events recorded after it are left for the
// next run, so a log being written to verifies.
func Verify(ctx context.Context, r Reader) (Report, error) {
	head, err := r.ChainHead(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("verify audit log: read chain head: %w", err)
	}
	var (
		rep      Report
		prevSeq  int64
		prevHash string
		after    int64
		lastSeq  int64
	)
	for {
		page, err := r.QueryAudit(ctx, store.AuditQuery{AfterSeq: after, Limit: 1000})
		if err != nil {
			return rep, fmt.Errorf("verify audit log: %w", err)
		}
		for _, e := range page {
			if e.Seq > head.Seq {
				break
			}
			rep.Events++
			switch {
			case Hash(e) != e.Hash:
				rep.Problems = append(rep.Problems, Problem{e.Seq, "modified: its hash does not match its contents"})
			case e.Seq != prevSeq+1:
				rep.Problems = append(rep.Problems, Problem{e.Seq, fmt.Sprintf("deleted: events %d to %d are missing", prevSeq+1, e.Seq-1)})
			case e.PrevHash != prevHash:
				rep.Problems = append(rep.Problems, Problem{e.Seq, "reordered or replaced: it does not follow the event before it"})
			}
			prevSeq, prevHash = e.Seq, e.Hash
			after = e.Seq
			lastSeq = e.Seq
		}
		if len(page) < 1000 || after >= head.Seq {
			break
		}
	}
	if head.Seq != lastSeq || head.Hash != prevHash {
		rep.Problems = append(rep.Problems, Problem{head.Seq, fmt.Sprintf("deleted: the chain head is event %d but the log ends at %d", head.Seq, lastSeq)})
	}
	return rep, nil
}
