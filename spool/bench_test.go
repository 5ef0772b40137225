package spool

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend measures ingest through group commit: each call appends
// one 1 KiB event and returns once it is fsynced. The p* cases run that many
// appenders per GOMAXPROCS, which is what group commit amortises.
func BenchmarkAppend(b *testing.B) {
	event := bytes.Repeat([]byte("x"), 1024)
	for _, par := range []int{1, 32} {
		b.Run(fmt.Sprintf("p%d", par), func(b *testing.B) {
			s := openTest(b, Options{DedupWindow: 24 * time.Hour})
			var commits, seq atomic.Int64
			s.SetCommitHook(func(int, int, time.Duration) { commits.Add(1) })
			b.SetBytes(int64(len(event)))
			b.SetParallelism(par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := seq.Add(1)
					_, err := s.Append([]Entry{{
						Key:        []byte(fmt.Sprintf("bench-%d", n)),
						MessageID:  fmt.Sprintf("msg-%d", n),
						ReceivedAt: time.Now(),
						Event:      event,
					}})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			if c := commits.Load(); c > 0 {
				b.ReportMetric(float64(b.N)/float64(c), "events/commit")
			}
		})
	}
}
