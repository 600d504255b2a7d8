package ocspfile

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

// A fleet is every Caddy instance configured with one storage (a shared
// volume, or a storage module such as Redis or S3). What they share,
// beyond what Caddy shares itself (the pki app's CAs, certificates):
//
//   - the staples the app makes (generated or fetched), at
//     dnsfront/ocsp/<sha256 of the leaf>.der, each with a record of who
//     made it and when (.json next to it);
//   - the certificates it issues, at dnsfront/issued/<ca>/<name>.pem.
//
// A staple is made once per fleet per refresh: the instance that makes
// it holds a storage lock named after the certificate, and an instance
// that waited for that lock takes what the holder stored instead of
// asking the source again. The others pick a new staple up from storage
// within storage_poll. A staple in storage is validated like any other
// before it is served.

// DefaultStoragePoll is how often each instance looks in storage for a
// staple another instance of its fleet has made.
const DefaultStoragePoll = time.Minute

// stapleRecord is kept in storage next to each staple: which instance
// made it, when, and for which certificate (`caddy ocsp status` prints
// it). It describes the staple whose SHA-256 it holds, and no other.
type stapleRecord struct {
	Certificate string    `json:"certificate"`
	Subjects    []string  `json:"subjects"`
	Serial      string    `json:"serial"`
	Source      string    `json:"source"`
	SHA256      string    `json:"sha256"`
	Instance    string    `json:"instance_id"`
	Host        string    `json:"host"`
	MadeAt      time.Time `json:"made_at"`
}

// describes reports whether the record is about der.
func (r *stapleRecord) describes(der []byte) bool {
	if r == nil {
		return false
	}
	sum := sha256.Sum256(der)
	return r.SHA256 == hex.EncodeToString(sum[:])
}

// Maker is who made a staple, as GET /ocsp/ reports it.
type Maker struct {
	Instance string    `json:"instance_id"`
	Host     string    `json:"host"`
	At       time.Time `json:"at"`
	// Here is set when the instance answering made it.
	Here bool `json:"here"`
}

// storagePrefix is where the app keeps its staples in Caddy's storage.
const storagePrefix = "dnsfront/ocsp"

// storageKey is where a generated or fetched staple is kept.
func (e *entry) storageKey() string { return path.Join(storagePrefix, e.slot.key+".der") }

// recordKey is where the record of that staple is kept.
func (e *entry) recordKey() string { return path.Join(storagePrefix, e.slot.key+".json") }

// lockName is the storage lock held while the staple is made.
func (e *entry) lockName() string { return "dnsfront_ocsp_" + e.slot.key }

var (
	selfOnce sync.Once
	self     struct{ id, host string }
)

// thisInstance names the instance: Caddy's instance ID (kept in its data
// directory) and the host name.
func thisInstance() (id, host string) {
	selfOnce.Do(func() {
		if u, err := caddy.InstanceID(); err == nil {
			self.id = u.String()
		}
		self.host, _ = os.Hostname()
	})
	return self.id, self.host
}

// The fleet's locks are leases kept in storage (dnsfront/locks/<name>.json:
// owner and expiry), renewed while held and taken over once expired.
// certmagic's own locks guard only the few milliseconds it takes to read
// and write a lease. They are not held any longer because certmagic's
// file_system locks cannot bound a dead holder: the goroutine that keeps
// a lock file fresh outlives its Unlock by up to 5 seconds and refreshes
// whatever file then has the name, so a lock taken soon after by another
// instance is kept fresh by the first one forever when its holder dies.
const (
	// leaseTTL bounds how long an instance that died holding a lease
	// delays the rest of the fleet
	leaseTTL = 15 * time.Second
	// leasePoll is how often a waiting instance tries again
	leasePoll = 250 * time.Millisecond
)

type lease struct {
	Owner   string    `json:"owner"`
	Host    string    `json:"host"`
	Expires time.Time `json:"expires"`
}

func leaseKey(name string) string { return path.Join("dnsfront", "locks", name+".json") }

// lockStorage takes the fleet's lease name, waiting while another live
// instance holds it. The returned function releases it.
func lockStorage(ctx context.Context, stor certmagic.Storage, name string) (func(), error) {
	id, host := thisInstance()
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	me := lease{Owner: id + "/" + hex.EncodeToString(nonce), Host: host}
	for {
		ok, err := me.claim(ctx, stor, name, false)
		if err != nil {
			return nil, fmt.Errorf("taking storage lock %s: %w", name, err)
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("taking storage lock %s: %w", name, ctx.Err())
		case <-time.After(leasePoll):
		}
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(leaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if ok, err := me.claim(context.WithoutCancel(ctx), stor, name, true); !ok || err != nil {
					caddy.Log().Named("ocsp").Error("storage lock lost while held", zap.String("lock", name), zap.Error(err))
					return
				}
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		if err := me.release(context.WithoutCancel(ctx), stor, name); err != nil {
			caddy.Log().Named("ocsp").Error("releasing storage lock", zap.String("lock", name), zap.Error(err))
		}
	}, nil
}

// claim writes the lease for l's owner when it is free, expired or
// already l's; with renew, only when it is l's.
func (l *lease) claim(ctx context.Context, stor certmagic.Storage, name string, renew bool) (bool, error) {
	if err := stor.Lock(ctx, name); err != nil {
		return false, err
	}
	defer func() { _ = stor.Unlock(context.WithoutCancel(ctx), name) }()
	now := time.Now()
	if b, err := stor.Load(ctx, leaseKey(name)); err == nil {
		var cur lease
		held := json.Unmarshal(b, &cur) == nil && cur.Owner != l.Owner && now.Before(cur.Expires)
		if held || (renew && cur.Owner != l.Owner) {
			return false, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	} else if renew {
		return false, nil
	}
	l.Expires = now.Add(leaseTTL)
	b, _ := json.Marshal(l)
	return true, stor.Store(ctx, leaseKey(name), b)
}

// release deletes the lease if it is still l's.
func (l *lease) release(ctx context.Context, stor certmagic.Storage, name string) error {
	if err := stor.Lock(ctx, name); err != nil {
		return err
	}
	defer func() { _ = stor.Unlock(context.WithoutCancel(ctx), name) }()
	b, err := stor.Load(ctx, leaseKey(name))
	if err != nil {
		return nil
	}
	var cur lease
	if json.Unmarshal(b, &cur) == nil && cur.Owner == l.Owner {
		return stor.Delete(ctx, leaseKey(name))
	}
	return nil
}

// lockStaple takes e's lock when its staple is kept in storage; the
// returned function (never nil) releases it. A storage that cannot lock
// is logged and the staple made all the same: serving one matters more
// than making it once.
func (a *App) lockStaple(ctx context.Context, e *entry) func() {
	stor := a.ctx.Storage()
	if stor == nil {
		return func() {}
	}
	unlock, err := lockStorage(ctx, stor, e.lockName())
	if err != nil {
		if ctx.Err() == nil {
			a.logger.Warn("making ocsp staple without the fleet's lock", zap.String("certificate", e.name), zap.Error(err))
		}
		return func() {}
	}
	return unlock
}

// stored is a staple read from storage and validated, with its record.
type stored struct {
	st  *staple.Staple
	rec *stapleRecord // nil when missing or not about st
}

// freshUntil is when a stored staple stops being worth taking instead of
// making a new one: the middle of the life it had left when it was made
// (as a staple made here is refreshed), and never before its HalfLife.
func (s stored) freshUntil() time.Time {
	h := s.st.HalfLife()
	if s.rec == nil {
		return h
	}
	if t := s.rec.MadeAt.Add(s.st.NextUpdate().Sub(s.rec.MadeAt) / 2); t.After(h) {
		return t
	}
	return h
}

// loadStored reads e's staple from storage and validates it against e's
// certificate. It returns nothing when storage holds none or holds the
// one served. A response that fails validation, or one older than the
// newest seen (a replay), is refused, logged once for those bytes, and
// the staple served stays. A revoked response is taken as the source's
// would be: the staple is dropped. e.slot.mu is held.
func (a *App) loadStored(ctx context.Context, e *entry, now time.Time) (stored, bool) {
	stor := a.ctx.Storage()
	if stor == nil {
		return stored{}, false
	}
	s := e.slot
	raw, err := stor.Load(ctx, e.storageKey())
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) && ctx.Err() == nil {
			// every storage_poll while storage is unreachable: logged once
			// per change of reason
			level := zapcore.DebugLevel
			if err.Error() != s.loadErr {
				level = zapcore.WarnLevel
			}
			s.loadErr = err.Error()
			if c := a.logger.Check(level, "loading ocsp staple from storage"); c != nil {
				c.Write(zap.String("certificate", e.name), zap.String("key", e.storageKey()), zap.Error(err))
			}
		}
		return stored{}, false
	}
	s.loadErr = ""
	if cur := s.staple.Load(); cur != nil && bytes.Equal(cur.DER, raw) {
		return stored{}, false
	}
	if bytes.Equal(raw, s.storedSeen) {
		return stored{}, false // refused before
	}
	st, err := staple.Validate(raw, e.leaf, e.issuer, now)
	var rev *staple.RevokedError
	switch {
	case err == nil:
		err = s.admit(st.ThisUpdate(), false)
	case errors.As(err, &rev):
		aerr := s.admit(rev.ThisUpdate, true)
		if aerr == nil {
			s.storedSeen = raw
			s.accepted(rev.ThisUpdate, true)
			a.refreshFailed(ctx, e, s.staple.Load(), fmt.Errorf("%w (stored by the fleet in %s)", err, e.storageKey()), now)
			return stored{}, false
		}
		err = aerr // an older revoked response: a replay
	}
	if errors.Is(err, staple.ErrRollback) {
		// older than the one served: this instance made a newer one (whose
		// store may have failed), not a bad staple
		s.storedSeen = raw
		a.logger.Debug("ocsp staple in storage is older than the one served", zap.String("certificate", e.name),
			zap.String("key", e.storageKey()), zap.Error(err))
		return stored{}, false
	}
	if err != nil {
		s.storedSeen = raw
		refreshes.WithLabelValues(e.labels[0], e.labels[1], resultRefusedStored).Inc()
		a.logger.Error("ocsp staple in storage refused: serving the last good one", zap.String("certificate", e.name),
			zap.String("key", e.storageKey()), zap.Error(err), zap.Bool("serving_previous", s.staple.Load().ValidAt(now)))
		return stored{}, false
	}
	out := stored{st: st}
	if b, err := stor.Load(ctx, e.recordKey()); err == nil {
		var rec stapleRecord
		if json.Unmarshal(b, &rec) == nil && rec.describes(raw) {
			out.rec = &rec
		}
	}
	return out, true
}

// take serves a staple from storage. e.slot.mu is held.
func (a *App) take(e *entry, in stored, now time.Time, why string) {
	s := e.slot
	s.storedSeen = nil
	s.accepted(in.st.ThisUpdate(), false)
	s.lastRefresh, s.lastResult, s.lastErr, s.backoff = now, resultUpdated, "", 0
	s.maker = nil
	if in.rec != nil {
		s.maker = &Maker{Instance: in.rec.Instance, Host: in.rec.Host, At: in.rec.MadeAt}
	}
	a.swapIn(e, in.st, resultUpdated, why)
}

// store keeps a made response (good, or revoked), and its record, in
// Caddy's storage. A failure is logged; the staple is served all the
// same. e.slot.mu is held.
func (a *App) store(ctx context.Context, e *entry, der []byte) {
	id, host := thisInstance()
	sum := sha256.Sum256(der)
	rec := stapleRecord{
		Certificate: e.name,
		Subjects:    subjects(e.leaf),
		Serial:      e.labels[1],
		Source:      e.source.String(),
		SHA256:      hex.EncodeToString(sum[:]),
		Instance:    id,
		Host:        host,
		MadeAt:      time.Now().UTC(),
	}
	e.slot.maker = &Maker{Instance: id, Host: host, At: rec.MadeAt}
	stor := a.ctx.Storage()
	if stor == nil {
		return
	}
	b, _ := json.Marshal(rec)
	if err := stor.Store(ctx, e.storageKey(), der); err != nil {
		a.logger.Error("storing ocsp staple", zap.String("certificate", e.name), zap.String("key", e.storageKey()), zap.Error(err))
		return
	}
	if err := stor.Store(ctx, e.recordKey(), b); err != nil {
		a.logger.Error("storing ocsp staple record", zap.String("certificate", e.name), zap.String("key", e.recordKey()), zap.Error(err))
	}
}

// pickUp serves a staple another instance of the fleet stored, when it is
// newer than the one served here, and reports whether it did; the refresh
// loop runs it every storage_poll.
func (a *App) pickUp(ctx context.Context, e *entry) bool {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	in, ok := a.loadStored(ctx, e, now)
	if !ok {
		return false
	}
	// loadStored returns only a response that differs from the one served
	// and is not older (rollback protection): storage holds one, so the
	// fleet converges on it, even when two share a thisUpdate
	a.take(e, in, now, "ocsp staple taken from storage (made by the fleet)")
	a.writeThrough(e)
	return true
}

// checkFleetCA makes sure the pki CA this instance signs with is the one
// in storage. Caddy creates a CA's root and intermediate when storage has
// none, without a lock: instances of a fleet that start together on an
// empty storage can each make their own, and all but one then sign with
// a CA that storage (and so every restarted instance) no longer has.
func checkFleetCA(ctx context.Context, stor certmagic.Storage, ca *caddypki.CA, id string) error {
	if stor == nil || ca.Root != nil {
		return nil // a root from files is the operator's
	}
	prefix := path.Join("pki", "authorities", certmagic.StorageKeys.Safe(id))
	root, err := stor.Load(ctx, path.Join(prefix, "root.crt"))
	if err != nil {
		return fmt.Errorf("pki CA %q: reading its root from storage: %w", id, err)
	}
	certs, err := staple.ParseCertificatesPEM(root)
	if err != nil || len(certs) == 0 {
		return fmt.Errorf("pki CA %q: the root certificate in storage (%s/root.crt) does not parse: %v", id, prefix, err)
	}
	if !bytes.Equal(certs[0].Raw, ca.RootCertificate().Raw) {
		return fmt.Errorf("pki CA %q: the root in storage (%s/root.crt) is not the one this instance loaded: "+
			"another instance sharing the storage created it at the same moment; restart this instance "+
			"(a fleet's first start on an empty storage: start one instance first, see docs/fleet.md)", id, prefix)
	}
	return nil
}
