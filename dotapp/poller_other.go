//go:build !linux

package dotapp

import (
	"errors"
)

// poller parks connections on Linux only; elsewhere a quiet connection's
// reader waits in a blocking read until its idle deadline.
type poller struct{}

var idlePoller poller

func (poller) ok() bool        { return false }
func (poller) arm(*conn) error { return errors.New("idle poller: not on this system") }
func (poller) forget(*conn)    {}
