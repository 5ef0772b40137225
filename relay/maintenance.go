package relay

import (
	"context"
	"log/slog"
	"time"
)

// DedupPruner is the part of the spool the pruning loop needs.
type DedupPruner interface {
	PruneDedup(max int) (int, error)
}

// pruneChunk is how many dedup keys one prune commit removes: small enough
// that ingest, which shares the single write lock, never waits long.
const pruneChunk = 1000

// PruneDedupLoop forgets dedup keys older than the window, every interval,
// in small commits, until ctx ends.
func PruneDedupLoop(ctx context.Context, p DedupPruner, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		total := 0
		for ctx.Err() == nil {
			n, err := p.PruneDedup(pruneChunk)
			if err != nil {
				log.Warn("pruning dedup keys", "error", err)
				break
			}
			total += n
			if n < pruneChunk {
				break
			}
		}
		if total > 0 {
			log.Debug("pruned dedup keys", "count", total)
		}
	}
}
