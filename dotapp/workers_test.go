package dotapp

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type countTask struct {
	n  *atomic.Int32
	wg *sync.WaitGroup
}

func (t countTask) run() {
	t.n.Add(1)
	t.wg.Done()
}

// TestWorkers: every task dispatched runs once, no more than
// maxIdleWorkers wait afterwards, and the waiting workers end once they
// have had nothing to do for a workerIdle or two.
func TestWorkers(t *testing.T) {
	var n atomic.Int32
	var wg sync.WaitGroup
	const tasks = 2000
	wg.Add(tasks)
	for range 20 {
		go func() {
			for range tasks / 20 {
				dispatch(countTask{&n, &wg})
			}
		}()
	}
	wg.Wait()
	if got := n.Load(); got != tasks {
		t.Fatalf("%d tasks ran, want %d", got, tasks)
	}
	if idle := workers.idle.Load(); idle > maxIdleWorkers {
		t.Fatalf("%d workers wait, more than %d", idle, maxIdleWorkers)
	}
	deadline := time.Now().Add(3*workerIdle + time.Second)
	for workers.idle.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still wait after %v with nothing to do", workers.idle.Load(), 3*workerIdle)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
