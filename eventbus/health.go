package eventbus

import (
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"time"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Health is the bus's state as a readiness probe needs it: whether the
// transport reaches the broker and whether every subscription consumes.
// See [Bus.Health]. Its JSON form is what [Bus.HealthHandler] serves.
type Health struct {
	// Ready is true when the bus is open, the transport is connected and
	// every subscription consumes (a bus with subscriptions is not ready
	// before Start).
	Ready bool `json:"ready"`
	// Service is the service name; System the transport's messaging
	// system ("rabbitmq", "kafka", "memory", ...).
	Service string `json:"service"`
	System  string `json:"system"`
	// Connected reports whether the transport reaches the broker, as far
	// as it knows; Since is when that last changed: connected since, or
	// reconnecting since. A transport that does not track its connection
	// is reported connected, with no time.
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since,omitzero"`
	// LastError is the transport's last connection error, with passwords
	// redacted, and LastErrorTime when it happened; they stay set after a
	// reconnection.
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	// Closed is true once Close was called.
	Closed bool `json:"closed,omitempty"`
	// Subscriptions are the bus's subscriptions, by name.
	Subscriptions []SubscriptionHealth `json:"subscriptions"`
}

// SubscriptionHealth is one subscription's part of [Health].
type SubscriptionHealth struct {
	Name    string `json:"name"`
	Pattern string `json:"pattern"`
	// Consuming is true from Start (or from Subscribe, after Start) until
	// Close or the transport's end of the subscription.
	Consuming bool `json:"consuming"`
	// InFlight is the number of events being handled, including those
	// waiting to be retried.
	InFlight int `json:"in_flight"`
	// LastDelivery is when the last event was delivered to the
	// subscription; zero if none was.
	LastDelivery time.Time `json:"last_delivery,omitzero"`
	// PoisonStoreError is set while the poison queue refuses this
	// subscription's records: the error of the last attempt (passwords of
	// the broker URL redacted), and PoisonStoreErrorTime when it failed.
	// An event that cannot be poisoned is given back to the broker and
	// tried again after a pause that doubles up to a minute, so nothing is
	// lost, but the subscription spends its time on that event. Both are
	// cleared once a record is stored. The bus stays Ready: it still
	// consumes, and restarting the service would not mend the poison
	// queue; alert on this field or on the eventbus.poison.store_failures
	// metric.
	PoisonStoreError     string    `json:"poison_store_error,omitempty"`
	PoisonStoreErrorTime time.Time `json:"poison_store_error_time,omitzero"`
}

// storeFailure is a subscription's last failure to store a poison record.
type storeFailure struct {
	text string
	at   time.Time
}

// poisonHooks returns the Poison middleware's hooks for s: they keep what
// Health reports about the poison store, and call the telemetry's hooks
// when it is on.
func (b *Bus) poisonHooks(s *subscription) (stored func(reason string), failed func(error)) {
	var telStored func(string)
	var telFailed func(error)
	if s.tel != nil {
		telStored, telFailed = s.tel.poisonHooks()
	}
	return func(reason string) {
			if s.poisonFailure.Load() != nil {
				s.poisonFailure.Store(nil)
			}
			if telStored != nil {
				telStored(reason)
			}
		}, func(err error) {
			text := err.Error()
			if b.redact != nil {
				text = b.redact.Replace(text)
			}
			s.poisonFailure.Store(&storeFailure{text: text, at: time.Now()})
			if telFailed != nil {
				telFailed(err)
			}
		}
}

// Health reports the bus's state. It does not talk to the broker: it
// returns what the bus and the transport already know, at once, also
// while the broker is down or frozen, so a probe may call it as often as
// it likes.
func (b *Bus) Health() Health {
	h := Health{Service: b.cfg.ServiceName, System: b.desc.System, Connected: true}
	if cr, ok := b.transport.(driver.ConnectivityReporter); ok {
		c := cr.Connectivity()
		h.Connected, h.Since, h.LastError, h.LastErrorTime = c.Connected, c.Since, c.LastError, c.LastErrorTime
	}
	b.mu.Lock()
	h.Closed = b.closing
	started := b.started
	h.Subscriptions = make([]SubscriptionHealth, 0, len(b.subs))
	consuming := true
	for _, s := range b.subs {
		sh := SubscriptionHealth{Name: s.name, Pattern: s.pattern.String(), InFlight: int(s.inFlight.Load())}
		if ns := s.lastDelivery.Load(); ns != 0 {
			sh.LastDelivery = time.Unix(0, ns)
		}
		if f := s.poisonFailure.Load(); f != nil {
			sh.PoisonStoreError, sh.PoisonStoreErrorTime = f.text, f.at
		}
		if started && !b.closing && s.running != nil && s.subscriber != nil {
			select {
			case <-s.running.Stopped():
			default:
				sh.Consuming = true
			}
		}
		consuming = consuming && sh.Consuming
		h.Subscriptions = append(h.Subscriptions, sh)
	}
	b.mu.Unlock()
	sort.Slice(h.Subscriptions, func(i, j int) bool { return h.Subscriptions[i].Name < h.Subscriptions[j].Name })
	h.Ready = !h.Closed && h.Connected && consuming
	return h
}

// HealthHandler returns an http.Handler that serves [Bus.Health] as JSON,
// with status 200 when the bus is ready and 503 when it is not: mount it
// where the platform's readiness probe looks (say /healthz).
func (b *Bus) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := b.Health()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if h.Ready {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if r.Method != http.MethodHead {
			_ = json.NewEncoder(w).Encode(h)
		}
	})
}

// describe returns what the transport states about itself; without a
// Describer, the URL scheme names the system.
func describe(t driver.Transport, rawURL string) driver.Description {
	var d driver.Description
	if ds, ok := t.(driver.Describer); ok {
		d = ds.Describe()
	}
	if d.System == "" {
		if u, err := url.Parse(rawURL); err == nil {
			d.System = u.Scheme
		}
	}
	return d
}
