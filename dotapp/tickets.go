package dotapp

import (
	"crypto/rand"
	"crypto/tls"
	"sync"
	"time"
)

// TLS session tickets that outlive a reload. crypto/tls gives each
// tls.Config ticket keys of its own, and a reload makes new configs: every
// ticket a client holds stops working, and each client that comes back
// pays a full handshake (~0.65 ms of CPU here, against a fraction of that
// resumed), all at once after the reload. Caddy keeps keys across reloads
// only when the tls app has `session_tickets` (JSON only), whose keys
// then take precedence over these (crypto/tls prefers the keys of the
// config a connection policy chose). So the servers share one ring of
// keys for the life of the process, rotated as crypto/tls rotates its
// own: a new key every ticketRotation, each kept ticketKeys rotations
// (crypto/tls: a new one a day, each valid seven days). The keys live
// only in memory; they are never logged or written.
const (
	ticketRotation = 24 * time.Hour
	ticketKeys     = 8
)

var tickets = &ticketRing{configs: map[*tls.Config]struct{}{}, now: time.Now}

type ticketRing struct {
	mu      sync.Mutex
	keys    [][32]byte // newest first: it seals new tickets, all open them
	rotated time.Time  // when keys[0] was made
	configs map[*tls.Config]struct{}
	timer   *time.Timer
	now     func() time.Time
}

// register gives cfg the ring's keys, and keeps them current until
// unregister.
func (r *ticketRing) register(cfg *tls.Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.rotateDue(); err != nil {
		return err
	}
	cfg.SetSessionTicketKeys(r.keys)
	r.configs[cfg] = struct{}{}
	if r.timer == nil {
		r.timer = time.AfterFunc(r.rotated.Add(ticketRotation).Sub(r.now()), r.tick)
	}
	return nil
}

func (r *ticketRing) unregister(cfg *tls.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.configs, cfg)
	if len(r.configs) == 0 && r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// tick rotates the keys when due and hands them to every config.
func (r *ticketRing) tick() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.timer == nil {
		return // unregistered meanwhile
	}
	if err := r.rotateDue(); err != nil {
		r.timer.Reset(time.Minute) // no randomness now: the keys in use stay
		return
	}
	for cfg := range r.configs {
		cfg.SetSessionTicketKeys(r.keys)
	}
	r.timer.Reset(r.rotated.Add(ticketRotation).Sub(r.now()))
}

// rotateDue makes a new key when there is none or the newest is
// ticketRotation old, and drops the oldest past ticketKeys.
func (r *ticketRing) rotateDue() error {
	now := r.now()
	if len(r.keys) > 0 && now.Sub(r.rotated) < ticketRotation {
		return nil
	}
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return err
	}
	keys := make([][32]byte, 0, ticketKeys)
	keys = append(keys, k)
	keys = append(keys, r.keys[:min(len(r.keys), ticketKeys-1)]...)
	r.keys, r.rotated = keys, now
	return nil
}
