//go:build !linux

package dotapp

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// quickAck is Linux's TCP_QUICKACK; elsewhere delayed ACKs stay as they are.
func quickAck(syscall.RawConn) {}

// peekHello is Linux's wait for a ClientHello before parking; elsewhere
// the handshake starts at once.
func (c *conn) peekHello(time.Duration) bool { return true }

// poller parks connections on Linux only; elsewhere a quiet connection's
// reader waits in a blocking read until its idle deadline.
type poller struct{}

var idlePoller poller

func (poller) ok() bool        { return false }
func (poller) arm(*conn) error { return errors.New("idle poller: not on this system") }
func (poller) forget(*conn)    {}

// acceptQueued is Linux's; elsewhere the accept queue is left to the
// listener's close.
func acceptQueued(syscall.RawConn) []net.Conn { return nil }
