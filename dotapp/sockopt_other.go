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

// acceptQueued is Linux's; elsewhere the accept queue is left to the
// listener's close.
func acceptQueued(syscall.RawConn) []net.Conn { return nil }

// steerToNewest is Linux's; elsewhere the kernel splits new connections
// between the old and the new listener during a reload.
func steerToNewest(syscall.RawConn) error { return nil }

// maxFastOpenQueue bounds tcp_fast_open (Linux's).
const maxFastOpenQueue = 65535

// fastOpenUsable: TCP Fast Open is turned on for Linux alone.
func fastOpenUsable() error {
	return errors.New("TCP Fast Open is turned on only on Linux")
}

// keepAliveOnListener: elsewhere Go sets keepalive on each connection.
const keepAliveOnListener = false

func setKeepAlive(syscall.RawConn) error { return nil }

// setFastOpen is Linux's: elsewhere tcp_fast_open is refused.
func setFastOpen(syscall.RawConn, int) error { return fastOpenUsable() }
