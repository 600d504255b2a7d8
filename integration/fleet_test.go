package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/internal/testpki"
)

// countingResponder stands in front of an `openssl ocsp` responder and
// counts the requests for each certificate serial. While held, it keeps
// requests waiting (an instance that is slow to fetch, or that dies while
// fetching).
type countingResponder struct {
	t       *testing.T
	backend string // the openssl responder's URL
	srv     *http.Server

	mu     sync.Mutex
	counts map[string]int
	hold   chan struct{} // closed to release held requests; nil: not held
	held   chan struct{} // receives one value per held request
}

func newCountingResponder(t *testing.T, port int, backend string) *countingResponder {
	t.Helper()
	r := &countingResponder{t: t, backend: backend, counts: map[string]int{}, held: make(chan struct{}, 16)}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.srv.Serve(l) }()
	t.Cleanup(func() { r.release(); _ = r.srv.Close() })
	return r
}

func (r *countingResponder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<16))
	if err != nil || req.Method != http.MethodPost {
		http.Error(w, "want a POSTed OCSP request", http.StatusBadRequest)
		return
	}
	q, err := ocsp.ParseRequest(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.counts[q.SerialNumber.Text(16)]++
	hold := r.hold
	r.mu.Unlock()
	if hold != nil {
		r.held <- struct{}{}
		select {
		case <-hold:
		case <-req.Context().Done():
		}
	}
	resp, err := http.Post(r.backend, "application/ocsp-request", bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", "application/ocsp-response")
	_, _ = io.Copy(w, resp.Body)
}

func (r *countingResponder) count(serial string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[serial]
}

func (r *countingResponder) holdRequests() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hold = make(chan struct{})
}

func (r *countingResponder) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != nil {
		close(r.hold)
		r.hold = nil
	}
}

const fleetSite = `{
	storage file_system {{.Shared}}
	ocsp {
		storage_poll 1s
		certificate {{.A}} {{.AKey}} {
			staple responder
		}
		certificate {{.B}} {{.BKey}} {
			staple responder
		}
		issue fleet.example.test {
			staple pki
		}
	}
}
https://:{{.Port}} {
	tls {
		get_certificate ocsp
	}
	respond "ok"
}
`

// fleetStatus is GET /ocsp/ with the maker of each staple.
type fleetStatus struct {
	Certificate string `json:"certificate"`
	Serial      string `json:"serial"`
	Status      string `json:"status"`
	LastResult  string `json:"last_result"`
	MadeBy      *struct {
		Instance string `json:"instance_id"`
		Here     bool   `json:"here"`
	} `json:"made_by"`
}

// TestFleetSharesStaples runs three instances on one storage folder. A
// staple is fetched once per fleet per refresh, not once per instance;
// every instance serves the same bytes; a bad staple put in storage is
// refused by all of them; GET /ocsp/ and `caddy ocsp status` say who made
// each staple; and an instance that dies holding the lock stalls the
// fleet only until the lock's lease expires.
func TestFleetSharesStaples(t *testing.T) {
	openssl := need(t, "openssl")
	dir := t.TempDir()
	shared := filepath.Join(dir, "storage")
	rport, oport := freePort(t), freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d", rport)

	// one CA, two server certificates whose OCSP URL is the counter
	ca := testpki.NewCA(t, "dnsfront fleet CA", testpki.ECDSA)
	caFile := testpki.WritePEM(t, filepath.Join(dir, "ca.pem"), ca.Cert)
	caKey := testpki.WriteKey(t, filepath.Join(dir, "ca.key"), ca.Key)
	type cert struct {
		name, file, key, serial, sum string
	}
	var certs []cert
	var index strings.Builder
	for _, name := range []string{"a.example.test", "b.example.test"} {
		leaf := ca.Issue(t, testpki.LeafOptions{KeyType: testpki.ECDSA, OCSPServer: url}, name)
		sum := sha256.Sum256(leaf.Cert.Raw)
		certs = append(certs, cert{
			name:   name,
			file:   testpki.WritePEM(t, filepath.Join(dir, name+".pem"), leaf.Cert, ca.Cert),
			key:    testpki.WriteKey(t, filepath.Join(dir, name+".key"), leaf.Key),
			serial: leaf.Cert.SerialNumber.Text(16),
			sum:    hex.EncodeToString(sum[:]),
		})
		fmt.Fprintf(&index, "V\t%s\t\t%X\tunknown\t/CN=%s\n", leaf.Cert.NotAfter.UTC().Format("060102150405Z"), leaf.Cert.SerialNumber, name)
	}
	indexFile := filepath.Join(dir, "index.txt")
	testpki.WriteFile(t, indexFile, []byte(index.String()))
	// openssl's responder answers one request at a time, with a response
	// valid 60 minutes: a refresh is forced through the admin API
	startOCSPResponder(t, openssl, "-index", indexFile, "-port", fmt.Sprint(oport), "-rsigner", caFile, "-rkey", caKey, "-CA", caFile, "-nmin", "60")
	counter := newCountingResponder(t, rport, fmt.Sprintf("http://127.0.0.1:%d", oport))

	vars := func(port int) Vars {
		return Vars{"Shared": shared, "A": certs[0].file, "AKey": certs[0].key, "B": certs[1].file, "BKey": certs[1].key, "Port": port}
	}
	type instance struct {
		c    *caddyProc
		addr string
		id   string
	}
	fleet := make([]*instance, 3)
	launch := func(i int) {
		d := filepath.Join(dir, fmt.Sprintf("instance%d", i+1))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		port := freePort(t)
		fleet[i] = &instance{c: launchCaddy(t, d, fleetSite, vars(port), nil), addr: fmt.Sprintf("127.0.0.1:%d", port)}
	}
	// the first instance alone: Caddy creates the pki CA of an empty
	// storage without a lock (docs/fleet.md); then two more together,
	// which issue and fetch under the fleet's locks
	launch(0)
	fleet[0].c.waitAdmin()
	launch(1)
	launch(2)
	for _, in := range fleet {
		in.c.waitAdmin()
		waitListen(t, in.addr)
		b, err := os.ReadFile(filepath.Join(in.c.dir, "data", "caddy", "instance.uuid"))
		if err != nil {
			t.Fatal(err)
		}
		in.id = strings.TrimSpace(string(b))
	}

	sameStaples := func(what string) map[string][]byte {
		t.Helper()
		out := map[string][]byte{}
		for _, sni := range []string{"a.example.test", "b.example.test", "fleet.example.test"} {
			var first []byte
			var firstChain []*tlsCert
			for i, in := range fleet {
				if in == nil {
					continue
				}
				st, chain := stapleGo(t, in.addr, sni, nil)
				if st == nil {
					t.Fatalf("%s: instance %d staples nothing for %s: %+v", what, i+1, sni, in.c.staples("GET", "/ocsp/"))
				}
				if first == nil {
					first, firstChain = st, chain
					continue
				}
				if !bytes.Equal(st, first) {
					t.Fatalf("%s: instance %d staples other bytes for %s than the first", what, i+1, sni)
				}
				if !bytes.Equal(chain[0].Raw, firstChain[0].Raw) {
					t.Fatalf("%s: instance %d serves another certificate for %s (issued twice)", what, i+1, sni)
				}
			}
			out[sni] = first
		}
		return out
	}
	// waitSame waits until every instance serves the same staples (the
	// others pick a new one up within storage_poll)
	waitSame := func(what string) map[string][]byte {
		t.Helper()
		var got map[string][]byte
		err := eventually(30*time.Second, func() bool {
			got = map[string][]byte{}
			for _, sni := range []string{"a.example.test", "b.example.test", "fleet.example.test"} {
				var first []byte
				for _, in := range fleet {
					if in == nil {
						continue
					}
					st, _, err := tryStaple(in.addr, sni, nil)
					if err != nil || st == nil || (first != nil && !bytes.Equal(st, first)) {
						return false
					}
					first = st
				}
				got[sni] = first
			}
			return true
		})
		if err != nil {
			t.Fatalf("%s: the instances never served the same staples", what)
		}
		return sameStaples(what)
	}
	counts := func() [2]int { return [2]int{counter.count(certs[0].serial), counter.count(certs[1].serial)} }

	// 1. at start: one fetch per certificate for the whole fleet
	before := waitSame("at start")
	if got := counts(); got != [2]int{1, 1} {
		t.Fatalf("responder requests per certificate after 3 instances started: %v, want [1 1]", got)
	}
	// openssl sees the same staple on each instance
	var blocks []string
	for i, in := range fleet {
		out := sClient(t, in.addr, "a.example.test")
		if !strings.Contains(out, "Cert Status: good") {
			t.Fatalf("openssl s_client -status on instance %d: no good staple:\n%s", i+1, out)
		}
		blocks = append(blocks, ocspBlock(out))
		if blocks[i] != blocks[0] {
			t.Fatalf("openssl s_client -status: instance %d staples another response than instance 1:\n%s\n---\n%s", i+1, blocks[i], blocks[0])
		}
	}

	// 2. forced refreshes on each instance in turn: one fetch each, and
	// every instance serves what the refreshing one made
	for round := range 3 {
		maker := fleet[round]
		st := maker.c.staples("POST", "/ocsp/reload")
		for _, s := range st {
			if s.Status != "good" {
				t.Fatalf("round %d: a staple is not good after the refresh: %+v", round+1, st)
			}
		}
		if got, want := counts(), [2]int{2 + round, 2 + round}; got != want {
			t.Fatalf("round %d: responder requests per certificate %v, want %v (one per fleet refresh)", round+1, got, want)
		}
		now := waitSame(fmt.Sprintf("round %d", round+1))
		for sni, b := range now {
			if bytes.Equal(b, before[sni]) {
				t.Fatalf("round %d: the staple of %s did not change", round+1, sni)
			}
		}
		before = now
		// who made it: GET /ocsp/ on every instance
		for i, in := range fleet {
			var list []fleetStatus
			if err := json.Unmarshal(in.c.api("GET", "/ocsp/"), &list); err != nil {
				t.Fatal(err)
			}
			for _, s := range list {
				if s.MadeBy == nil || s.MadeBy.Instance != maker.id || s.MadeBy.Here != (i == round) {
					t.Fatalf("round %d: instance %d reports %s made by %+v, want instance %s (here=%v)", round+1, i+1, s.Certificate, s.MadeBy, maker.id, i == round)
				}
			}
		}
	}

	// 3. all three refreshed at once: one of them fetches, under the
	// fleet's lock, and the others take what it stored
	var wg sync.WaitGroup
	for _, in := range fleet {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, "http://"+in.c.Admin+"/ocsp/reload", nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if got, want := counts(), [2]int{5, 5}; got != want {
		t.Fatalf("three refreshes at once: responder requests per certificate %v, want %v (one for the fleet)", got, want)
	}
	before = waitSame("after three refreshes at once")
	var list []fleetStatus
	if err := json.Unmarshal(fleet[0].c.api("GET", "/ocsp/"), &list); err != nil || list[0].MadeBy == nil {
		t.Fatalf("GET /ocsp/: %v %+v", err, list)
	}
	maker := list[0].MadeBy.Instance

	// 4. caddy ocsp status reads the shared storage without a server
	out, _ := run(t, false, caddyBin, "ocsp", "status", "--config", fleet[0].c.config, "--adapter", "caddyfile")
	if !strings.Contains(out, "3 staple(s) in storage "+shared) {
		t.Fatalf("caddy ocsp status: want 3 staples in %s:\n%s", shared, out)
	}
	for _, c := range certs {
		line := lineWith(out, c.name)
		if !strings.Contains(line, "good") || !strings.Contains(line, maker) {
			t.Fatalf("caddy ocsp status: %s not shown good and made by %s:\n%s", c.name, maker, out)
		}
	}

	// 5. a bad staple put in storage by hand (another certificate's) is
	// refused by every instance, which keep serving the last good one
	key := filepath.Join(shared, "dnsfront", "ocsp", certs[0].sum+".der")
	other, err := os.ReadFile(filepath.Join(shared, "dnsfront", "ocsp", certs[1].sum+".der"))
	if err != nil {
		t.Fatal(err)
	}
	testpki.WriteFile(t, key, other)
	for _, in := range fleet {
		in.c.waitLog(`ocsp staple in storage refused.*a.example.test.*`+certs[0].sum, 30*time.Second)
	}
	if now := sameStaples("after a bad staple in storage"); !bytes.Equal(now["a.example.test"], before["a.example.test"]) {
		t.Fatal("an instance served the bad staple from storage")
	}

	// 6. an instance dies while it holds the lock (its fetch hangs): the
	// others wait only until its lease expires, then refresh
	counter.holdRequests()
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+fleet[0].c.Admin+"/ocsp/reload", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-counter.held
	lock := filepath.Join(shared, "dnsfront", "locks", "dnsfront_ocsp_"+certs[0].sum+".json")
	if b, err := os.ReadFile(lock); err != nil || !strings.Contains(string(b), `"owner":"`+fleet[0].id+"/") {
		t.Fatalf("instance 1 fetches without holding the fleet's lock: %s %v", b, err)
	}
	_ = fleet[0].c.cmd.Process.Kill()
	<-fleet[0].c.done
	fleet[0] = nil
	counter.release()
	held := counts()
	st := fleet[1].c.staples("POST", "/ocsp/reload")
	for _, s := range st {
		if s.Status != "good" || s.LastResult != "updated" {
			t.Fatalf("after the lock holder died, instance 2's refresh: %+v", st)
		}
	}
	if got, want := counts(), [2]int{held[0] + 1, held[1] + 1}; got != want {
		t.Fatalf("after the lock holder died: requests %v, want %v", got, want)
	}
	if _, err := os.Stat(lock); err == nil {
		t.Fatal("the dead instance's lock is still there after instance 2 refreshed")
	}
	waitSame("after the lock holder died")
}

// ocspBlock is the OCSP response openssl s_client -status printed.
func ocspBlock(out string) string {
	i := strings.Index(out, "OCSP Response Data:")
	if i < 0 {
		return ""
	}
	rest := out[i:]
	if j := strings.Index(rest, "\n---"); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

func lineWith(out, sub string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
