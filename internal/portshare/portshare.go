// Package portshare finds the listening TCP sockets of this process that
// another process listens on too.
//
// Caddy opens every listener with SO_REUSEPORT, which is how a reload
// drops nothing; the price is that a second Caddy of the same user binds
// the same admin, DoT and HTTPS ports without an error, and the kernel
// splits connections between the two. A reload posted to the admin API
// then reaches one of them at random. dnsfront checks once, when it first
// starts, and refuses to run beside such a twin.
package portshare

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Shared is one address this process listens on that others listen on too.
type Shared struct {
	Addr string // e.g. 127.0.0.1:2019
	PIDs []int  // the other processes, when they could be found
}

// Error lists the shared addresses.
type Error []Shared

func (e Error) Error() string {
	var b strings.Builder
	b.WriteString("another process listens on the same address as this one (Caddy opens listeners with SO_REUSEPORT, so the kernel would split connections, admin API requests included, between the two): ")
	for i, s := range e {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s.Addr)
		if len(s.PIDs) > 0 {
			fmt.Fprintf(&b, " (pid %s)", strings.Trim(fmt.Sprint(s.PIDs), "[]"))
		}
	}
	b.WriteString("; stop the other instance (caddy stop, or Ctrl-C) or give this one other addresses")
	return b.String()
}

// Check returns an Error when a TCP address this process listens on is
// also listened on by another process. Where /proc cannot be read (not
// Linux) it returns nil: there is nothing it could tell.
func Check() error {
	own, err := socketInodes("/proc/self/fd")
	if err != nil {
		return nil
	}
	listeners := map[string][]uint64{} // address -> inodes listening on it
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if err := readListeners(f, listeners); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	var found []*Shared
	others := map[uint64]*Shared{}
	for addr, inodes := range listeners {
		mine, foreign := false, []uint64{}
		for _, ino := range inodes {
			if _, ok := own[ino]; ok {
				mine = true
			} else if ino != 0 {
				foreign = append(foreign, ino)
			}
		}
		if !mine || len(foreign) == 0 {
			continue
		}
		s := &Shared{Addr: addr}
		found = append(found, s)
		for _, ino := range foreign {
			others[ino] = s
		}
	}
	if len(found) == 0 {
		return nil
	}
	owners(others)
	shared := make(Error, len(found))
	for i, s := range found {
		sort.Ints(s.PIDs)
		shared[i] = *s
	}
	sort.Slice(shared, func(i, j int) bool { return shared[i].Addr < shared[j].Addr })
	return shared
}

// socketInodes returns the inodes of the sockets among the descriptors in dir.
func socketInodes(dir string) (map[uint64]struct{}, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]struct{}, len(ents))
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			if n, err := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64); err == nil {
				out[n] = struct{}{}
			}
		}
	}
	return out, nil
}

// readListeners adds the sockets in LISTEN state of a /proc/net/tcp{,6}
// table to m, by local address.
func readListeners(file string, m map[string][]uint64) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" {
			continue
		}
		addr, err := parseProcAddr(fields[1])
		if err != nil {
			continue
		}
		ino, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			continue
		}
		m[addr] = append(m[addr], ino)
	}
	return sc.Err()
}

// parseProcAddr turns "0100007F:07E3" (an address in host-order 32-bit
// words, a port in hex) into "127.0.0.1:2019".
func parseProcAddr(s string) (string, error) {
	hexIP, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return "", fmt.Errorf("no port in %q", s)
	}
	raw, err := hex.DecodeString(hexIP)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return "", fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return "", fmt.Errorf("bad port %q", s)
	}
	ip := make(net.IP, len(raw))
	for w := 0; w < len(raw); w += 4 { // each 32-bit word is little-endian on the hosts Linux runs on
		ip[w], ip[w+1], ip[w+2], ip[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	return net.JoinHostPort(ip.String(), strconv.FormatUint(port, 10)), nil
}

// owners fills in the PIDs of the processes holding the given inodes,
// as far as /proc lets this user see them.
func owners(inodes map[uint64]*Shared) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		socks, err := socketInodes(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		for ino, s := range inodes {
			if _, ok := socks[ino]; ok && !slices.Contains(s.PIDs, pid) {
				s.PIDs = append(s.PIDs, pid)
			}
		}
	}
}
