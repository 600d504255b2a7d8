package route

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// DefaultNameFilePoll is how often name files are checked for changes.
const DefaultNameFilePoll = time.Minute

// maxNameLine bounds a line of a name file: far past any name (255
// octets) or hosts line an operator writes.
const maxNameLine = 64 << 10

// nameSetOf is a set of canonical names (lower case, fully qualified;
// "." holds every name).
type nameSetOf = map[string]struct{}

// readNameFiles reads the names of files (field names them in errors)
// into set, which holds the inline names already.
func readNameFiles(set nameSetOf, files []string, field string) error {
	for i, path := range files {
		if err := readNameFile(set, path); err != nil {
			return fmt.Errorf("route: %s.name_file[%d]: %w", field, i, err)
		}
	}
	return nil
}

// readNameFile adds the names of the file at path to set. A line is a
// name ("ads.example", "*.ads.example" meaning the same: a name holds
// the names under it), a hosts file's line (an address, then names:
// "0.0.0.0 ads.example"), or an adblock-style "||ads.example^"; "#"
// at a line's start or after a space starts a comment, a line that
// starts with "!" is an adblock list's comment, blank lines are
// skipped. Anything else is an error
// naming the file and line: a list in another syntax is refused whole
// rather than read in part.
func readNameFile(set nameSetOf, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return readNames(set, f, path)
}

func readNames(set nameSetOf, r io.Reader, path string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), maxNameLine)
	for line := 1; sc.Scan(); line++ {
		text := stripComment(sc.Bytes())
		fields := strings.Fields(string(text))
		if len(fields) == 0 || strings.HasPrefix(fields[0], "!") {
			continue // blank, or an adblock list's comment line
		}
		names, hosts := fields, false
		if _, err := netip.ParseAddr(fields[0]); err == nil {
			names, hosts = fields[1:], true // a hosts line: the names after the address
			if len(names) == 0 {
				return fmt.Errorf("%s:%d: %q: an address and no name", path, line, strings.TrimSpace(string(text)))
			}
		} else if len(fields) > 1 {
			return fmt.Errorf("%s:%d: %q: not a name, a hosts line (an address, then names) or ||name^", path, line, strings.TrimSpace(string(text)))
		}
		for _, n := range names {
			name, err := listedName(n)
			if err != nil {
				return fmt.Errorf("%s:%d: %w", path, line, err)
			}
			if name != "" && !(hosts && hostsHousekeeping[name]) {
				set[name] = struct{}{}
			}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s: a line over %d octets", path, maxNameLine)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// stripComment cuts a line at its comment: a # that starts the line or
// follows a space or tab (a hosts file's). A # inside a token is not one:
// an adblock list's "example.com##.banner" hides an element on a page,
// it blocks no name, and is refused rather than read as example.com.
func stripComment(line []byte) []byte {
	for i, c := range line {
		if c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t') {
			return line[:i]
		}
	}
	return line
}

// hostsHousekeeping are the names a hosts file lists for the machine
// itself (StevenBlack's lists open with them: 127.0.0.1 localhost, ::1
// ip6-loopback, 255.255.255.255 broadcasthost): on a hosts line they
// name the machine, not something to block, and are skipped. A plain
// name list that names one means it.
var hostsHousekeeping = map[string]bool{
	"localhost.": true, "localhost.localdomain.": true, "local.": true, "broadcasthost.": true,
	"ip6-localhost.": true, "ip6-loopback.": true, "ip6-localnet.": true, "ip6-mcastprefix.": true,
	"ip6-allnodes.": true, "ip6-allrouters.": true, "ip6-allhosts.": true,
}

// listedName is the canonical name of a name file's entry n, or "" for
// an entry that names an address (a hosts file's "0.0.0.0 0.0.0.0").
func listedName(n string) (string, error) {
	name := n
	if strings.HasPrefix(name, "||") {
		if !strings.HasSuffix(name, "^") {
			return "", fmt.Errorf("%q: an adblock rule other than ||name^", n)
		}
		name = name[2 : len(name)-1]
	}
	name = strings.TrimPrefix(name, "*.")
	if _, err := netip.ParseAddr(name); err == nil {
		return "", nil
	}
	if _, ok := dns.IsDomainName(name); !ok || name == "" || strings.IndexFunc(name, notHostChar) >= 0 {
		return "", fmt.Errorf("%q is not a domain name (letters, digits, - and _; an IDN in its xn-- form)", n)
	}
	return dns.CanonicalName(name), nil
}

// notHostChar: what a listed name may not hold (ASCII letters, digits,
// -, _ and dots only: the names that lists hold, IDNs as xn-- labels).
func notHostChar(c rune) bool {
	return !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.')
}

// fileStamp is what a file looked like when it was read: a change of
// either is a change of the file (an atomic replace changes both, or at
// least the time).
type fileStamp struct {
	size int64
	mod  time.Time
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{size: -1}
	}
	return fileStamp{size: fi.Size(), mod: fi.ModTime()}
}

// nameFiles is a matcher whose names come from files too: its inline
// names, the files, and how they looked when they were read.
type nameFiles struct {
	x      *matcher
	inline []string // canonical
	files  []string
	field  string
	stamps []fileStamp
}

// load reads the names of n's files into a new set with the inline
// ones, and makes it its matcher's: on an error, the matcher keeps the
// set it has. Either way the files' stamps are what they were before
// the read: a change during it, or after a failed read, is seen next
// time.
func (n *nameFiles) load() (int, error) {
	n.stamps = make([]fileStamp, len(n.files))
	for i, path := range n.files {
		n.stamps[i] = stampOf(path)
	}
	set := make(nameSetOf, len(n.inline))
	for _, name := range n.inline {
		set[name] = struct{}{}
	}
	if err := readNameFiles(set, n.files, n.field); err != nil {
		return 0, err
	}
	n.x.names.Store(&set)
	return len(set), nil
}

// changed reports whether a file of n looks other than when it was read.
func (n *nameFiles) changed() bool {
	for i, path := range n.files {
		if stampOf(path) != n.stamps[i] {
			return true
		}
	}
	return false
}

// watch reads the name files of lists again when they change, every
// poll, until ctx ends (the config is unloaded). A file that fails to
// read is logged, and its matcher keeps the names it has.
func watch(ctx context.Context, lists []*nameFiles, poll time.Duration, logger *zap.Logger) {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, n := range lists {
			if !n.changed() {
				continue
			}
			count, err := n.load()
			if err != nil {
				logger.Error("name files not read again: the names read before stay", zap.Strings("files", n.files), zap.Error(err))
				continue
			}
			logger.Info("name files read again", zap.Strings("files", n.files), zap.Int("names", count))
		}
	}
}
