//go:build linux

package portshare

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:07E3":                         "127.0.0.1:2019",
		"00000000:0035":                         "0.0.0.0:53",
		"00000000000000000000000001000000:22A5": "[::1]:8869",
		"0000000000000000FFFF00000100007F:0050": "127.0.0.1:80", // v4-mapped prints as v4
	} {
		got, err := parseProcAddr(in)
		if err != nil || got != want {
			t.Errorf("parseProcAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "01007F:0050", "zz00007F:0050", "0100007F:10000"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q): no error", bad)
		}
	}
}

func reusePortListen(t *testing.T, addr string) net.Listener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestCheck: a listener of this process alone is fine; once a child
// process binds the same address with SO_REUSEPORT, Check names the
// address and the child's pid.
func TestCheck(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	if os.Getenv("PORTSHARE_CHILD") != "" {
		reusePortListen(t, os.Getenv("PORTSHARE_CHILD"))
		os.Stdout.WriteString("listening\n")
		os.Stdin.Read(make([]byte, 1)) // until the parent closes stdin
		return
	}
	ln := reusePortListen(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	if err := Check(); err != nil {
		var e Error
		if errors.As(err, &e) {
			for _, s := range e {
				if s.Addr == addr {
					t.Fatalf("only this process listens on %s, yet: %v", addr, err)
				}
			}
		}
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestCheck$")
	cmd.Env = append(os.Environ(), "PORTSHARE_CHILD="+addr)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	buf := make([]byte, 64)
	n, _ := out.Read(buf)
	if !strings.Contains(string(buf[:n]), "listening") {
		t.Fatalf("child did not listen: %q", buf[:n])
	}

	err := Check()
	var e Error
	if !errors.As(err, &e) {
		t.Fatalf("Check() = %v with a child on %s too", err, addr)
	}
	for _, s := range e {
		if s.Addr == addr {
			if len(s.PIDs) != 1 || s.PIDs[0] != cmd.Process.Pid {
				t.Errorf("%s shared with pids %v, want [%d]", addr, s.PIDs, cmd.Process.Pid)
			}
			if !strings.Contains(err.Error(), addr+" (pid "+strconv.Itoa(cmd.Process.Pid)+")") {
				t.Errorf("message does not name the address and pid: %v", err)
			}
			return
		}
	}
	t.Fatalf("Check() = %v, does not name %s", err, addr)
}
