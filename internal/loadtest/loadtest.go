// Package loadtest is the load driver of `make bench`: a fixed number of
// callers share b.N calls, and throughput and latency percentiles are
// reported as benchmark metrics (calls/s, p50-µs, p99-µs), with the
// process's CPU time per call (cpu-µs/call: client and server together),
// which moves less than throughput when the machine's neighbours are busy.
package loadtest

import (
	"context"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Callers is the concurrency of DESIGN.md's targets: 64 callers, each on
// its own connection.
const Callers = 64

// Run calls fn b.N times from Callers goroutines (caller is 0..Callers-1)
// and reports calls/s, p50-µs, p99-µs and cpu-µs/call.
func Run(b *testing.B, fn func(ctx context.Context, caller int) error) {
	var (
		mu   sync.Mutex
		lats = make([]time.Duration, 0, b.N)
		next = make(chan struct{}, b.N)
		wg   sync.WaitGroup
	)
	for i := 0; i < b.N; i++ {
		next <- struct{}{}
	}
	close(next)
	ctx := context.Background()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for c := 0; c < Callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			local := make([]time.Duration, 0, b.N/Callers+1)
			for range next {
				t0 := time.Now()
				if err := fn(ctx, c); err != nil {
					b.Error(err)
					return
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	if len(lats) > 0 {
		b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "calls/s")
		b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
		if cpu > 0 {
			b.ReportMetric(float64(cpu.Microseconds())/float64(len(lats)), "cpu-µs/call")
		}
	}
}

// cpuTime is the CPU time (user and system) this process has used, or 0
// when the platform cannot tell.
func cpuTime() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}
