// Command tailtrace says what a server was doing when a load generator's
// slowest requests were answered: it reads a Go execution trace of the
// server (GET /debug/pprof/trace on Caddy's admin API) and an h2load
// --log-file of the same seconds, and puts each slow request (slower
// than the log's p99, or -slow) with the collector's mark phases and the
// times the server had nothing to run.
//
//	h2load ... --log-file=h2.log &
//	curl -so trace.out 'localhost:2019/debug/pprof/trace?seconds=2'
//	go run ./bench/tailtrace -trace trace.out -log h2.log
//
// An h2load log line is the request's start (microseconds since the
// epoch), its status and its duration (microseconds); a trace from Go
// 1.25 on carries the wall clock that relates the two. A slow request is
// put with a mark phase when it completed during one or within -slack
// after it, else with an idle gap it completed within -slack of, else
// nowhere. After an idle gap the tool names what the goroutine that woke
// had waited for: the upstream's answers, the client's next bytes, room
// to write to the client.
package main

import (
	"bufio"
	"cmp"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

// span is a stretch of the trace, in wall-clock nanoseconds.
type span struct {
	from, to int64
	what     string // for an idle gap: where the goroutine that ended it had blocked
}

func main() {
	tracePath := flag.String("trace", "", "the server's execution trace")
	logPath := flag.String("log", "", "h2load's --log-file of the same seconds")
	slowFlag := flag.Duration("slow", 0, "a slow request takes longer than this (default: the log's p99)")
	idleMin := flag.Duration("idle", 300*time.Microsecond, "the shortest idle gap shown")
	slack := flag.Duration("slack", 2*time.Millisecond, "how long after a phase or gap a completion is still put with it")
	flag.Parse()
	if *tracePath == "" || *logPath == "" {
		flag.Usage()
		os.Exit(2)
	}
	marks, idles, t0, t1, err := readTrace(*tracePath, *idleMin)
	if err != nil {
		log.Fatalf("%s: %v", *tracePath, err)
	}
	reqs, err := readLog(*logPath)
	if err != nil {
		log.Fatalf("%s: %v", *logPath, err)
	}
	slow := *slowFlag
	if slow == 0 {
		durs := make([]time.Duration, len(reqs))
		for i, r := range reqs {
			durs[i] = time.Duration(r.end - r.start)
		}
		slices.Sort(durs)
		if len(durs) > 0 {
			slow = durs[len(durs)*99/100]
		}
	}
	var n, nslow, inMark, inIdle int
	byWhat := map[string]int{}
	for _, r := range reqs {
		end := r.end
		if end < t0 || end > t1 {
			continue // outside the trace
		}
		n++
		if time.Duration(r.end-r.start) <= slow {
			continue
		}
		nslow++
		if within(marks, end, *slack) != nil {
			inMark++
		} else if g := within(idles, end, *slack); g != nil {
			inIdle++
			byWhat[g.what]++
		}
	}
	ms := func(t int64) float64 { return float64(t-t0) / 1e6 }
	fmt.Printf("trace: %.0f ms; requests completed in it: %d; slow (over %v): %d\n", ms(t1), n, slow, nslow)
	var markTotal int64
	for _, m := range marks {
		markTotal += m.to - m.from
		fmt.Printf("  mark phase at %8.3f ms, %.3f ms long\n", ms(m.from), float64(m.to-m.from)/1e6)
	}
	var idleTotal int64
	for _, g := range idles {
		idleTotal += g.to - g.from
	}
	fmt.Printf("mark phases: %d, %.1f ms in all; idle gaps over %v: %d, %.1f ms in all\n",
		len(marks), float64(markTotal)/1e6, *idleMin, len(idles), float64(idleTotal)/1e6)
	if nslow == 0 {
		return
	}
	pct := func(k int) float64 { return float64(k) * 100 / float64(nslow) }
	fmt.Printf("slow requests completed in or just after a mark phase: %d (%.0f%%)\n", inMark, pct(inMark))
	fmt.Printf("slow requests completed in or just after an idle gap: %d (%.0f%%); the server had waited for:\n", inIdle, pct(inIdle))
	whats := make([]string, 0, len(byWhat))
	for w := range byWhat {
		whats = append(whats, w)
	}
	slices.SortFunc(whats, func(a, b string) int { return cmp.Compare(byWhat[b], byWhat[a]) })
	for _, w := range whats {
		fmt.Printf("  %6d  %s\n", byWhat[w], w)
	}
	other := nslow - inMark - inIdle
	fmt.Printf("slow requests with neither: %d (%.0f%%)\n", other, pct(other))
}

// within returns the span that t falls in, or within slack after.
func within(spans []span, t int64, slack time.Duration) *span {
	for i := range spans {
		if t >= spans[i].from && t <= spans[i].to+int64(slack) {
			return &spans[i]
		}
	}
	return nil
}

// request is one line of the log: when it started and completed, in
// wall-clock nanoseconds.
type request struct{ start, end int64 }

func readLog(path string) ([]request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []request
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 {
			return nil, fmt.Errorf("line %d: %d fields, want 3 (start us, status, duration us)", line, len(fields))
		}
		start, err1 := strconv.ParseInt(fields[0], 10, 64)
		dur, err2 := strconv.ParseInt(fields[2], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("line %d: start %q or duration %q is not a number", line, fields[0], fields[2])
		}
		out = append(out, request{start: start * 1000, end: (start + dur) * 1000})
	}
	return out, sc.Err()
}

// readTrace returns the collector's mark phases and the gaps longer than
// idleMin in which no goroutine ran or was in a system call, and the trace's first and last
// times, all as wall-clock nanoseconds.
func readTrace(path string, idleMin time.Duration) (marks, idles []span, first, last int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	defer f.Close()
	r, err := trace.NewReader(bufio.NewReader(f))
	if err != nil {
		return nil, nil, 0, 0, err
	}
	var snapTrace trace.Time
	var snapWall time.Time
	have := false
	wall := func(t trace.Time) int64 { return snapWall.Add(time.Duration(t - snapTrace)).UnixNano() }
	blocked := map[trace.GoID]string{}
	running := 0
	idle, idleFrom := false, trace.Time(0)
	var markFrom trace.Time
	var lastT trace.Time
	for {
		ev, rerr := r.ReadEvent()
		if rerr != nil {
			if rerr != io.EOF && !have {
				return nil, nil, 0, 0, rerr
			}
			break
		}
		lastT = ev.Time()
		switch ev.Kind() {
		case trace.EventSync:
			if s := ev.Sync(); s.ClockSnapshot != nil && !have {
				snapTrace, snapWall, have = s.ClockSnapshot.Trace, s.ClockSnapshot.Wall, true
				first = wall(ev.Time())
			}
		case trace.EventRangeBegin:
			if ev.Range().Name == "GC concurrent mark phase" {
				markFrom = ev.Time()
			}
		case trace.EventRangeEnd:
			if ev.Range().Name == "GC concurrent mark phase" && have && markFrom != 0 {
				marks = append(marks, span{from: wall(markFrom), to: wall(ev.Time())})
				markFrom = 0
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			g := st.Resource.Goroutine()
			from, to := st.Goroutine()
			// a goroutine in a system call keeps its thread busy in the
			// kernel: running, for this purpose
			busy := func(s trace.GoState) bool { return s == trace.GoRunning || s == trace.GoSyscall }
			switch {
			case !busy(from) && busy(to):
				if idle && have && ev.Time()-idleFrom > trace.Time(idleMin) {
					idles = append(idles, span{from: wall(idleFrom), to: wall(ev.Time()), what: blocked[g]})
				}
				idle = false
				running++
			case busy(from) && !busy(to):
				blocked[g] = where(ev.Stack())
				if running--; running <= 0 {
					running, idle, idleFrom = 0, true, ev.Time()
				}
			}
		}
	}
	if !have {
		return nil, nil, 0, 0, fmt.Errorf("no wall-clock snapshot: a trace from Go 1.25 or later is needed")
	}
	return marks, idles, first, wall(lastT), nil
}

// where names the first two functions of a stack outside the runtime and
// the standard library's plumbing: what a goroutine blocked in.
func where(s trace.Stack) string {
	var out []string
	for f := range s.Frames() {
		switch {
		case strings.HasPrefix(f.Func, "runtime."), strings.HasPrefix(f.Func, "internal/"),
			strings.HasPrefix(f.Func, "net."), strings.HasPrefix(f.Func, "syscall."),
			strings.HasPrefix(f.Func, "golang.org/x/net/internal/"), strings.HasPrefix(f.Func, "sync."):
			continue
		}
		out = append(out, f.Func)
		if len(out) == 2 {
			break
		}
	}
	if len(out) == 0 {
		return "(no stack)"
	}
	return strings.Join(out, " < ")
}
