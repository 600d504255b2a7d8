//go:build !linux

package dotapp

import "net"

// quickAck is Linux's TCP_QUICKACK; elsewhere delayed ACKs stay as they are.
func quickAck(net.Conn) {}
