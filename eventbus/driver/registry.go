package driver

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"sync"
)

var (
	driversMu sync.RWMutex
	drivers   = map[string]Driver{}
)

// knownImports names the package that registers each built-in scheme, for
// the error a program gets when it forgot the import.
var knownImports = map[string]string{
	"mem":   "github.com/paissive/go-eventbus/transports/memory",
	"amqp":  "github.com/paissive/go-eventbus/transports/amqp",
	"amqps": "github.com/paissive/go-eventbus/transports/amqp",
	"kafka": "github.com/paissive/go-eventbus/transports/kafka",
	"nats":  "github.com/paissive/go-eventbus/transports/nats",
	"tls":   "github.com/paissive/go-eventbus/transports/nats",
}

// Register makes a driver available for a URL scheme, the way database/sql
// drivers register: call it from the transport package's init. It panics
// if the scheme is registered twice or the driver is nil.
func Register(scheme string, d Driver) {
	driversMu.Lock()
	defer driversMu.Unlock()
	if d == nil {
		panic("eventbus/driver: Register driver is nil")
	}
	if _, dup := drivers[scheme]; dup {
		panic("eventbus/driver: Register called twice for scheme " + scheme)
	}
	drivers[scheme] = d
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	driversMu.RLock()
	defer driversMu.RUnlock()
	s := make([]string, 0, len(drivers))
	for k := range drivers {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens the transport rawURL names with the driver registered for its
// scheme; cfg.URL is set from rawURL. The bus opens its transport with it;
// so do tools and tests that need a transport without a bus. Errors never
// show the URL's password.
func Open(ctx context.Context, rawURL string, cfg Config) (Transport, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error repeats the URL, password included.
		return nil, fmt.Errorf("eventbus: cannot parse URL %s", RedactURL(rawURL))
	}
	if u.Opaque != "" || u.Scheme == "" {
		// "amqp:user:pass@host:5679" parses with everything in the opaque
		// part; a transport reading Host would connect to its default.
		return nil, fmt.Errorf("eventbus: URL %s is not of the form scheme://[user:password@]host[:port][/path]; write it with \"//\" after the scheme, as in amqp://user:password@host:5672/", RedactURL(rawURL))
	}
	driversMu.RLock()
	d, ok := drivers[u.Scheme]
	driversMu.RUnlock()
	if !ok {
		if imp, known := knownImports[u.Scheme]; known {
			return nil, fmt.Errorf("eventbus: no transport registered for %q URLs (%s); add `import _ %q` to the program", u.Scheme, RedactURL(rawURL), imp)
		}
		return nil, fmt.Errorf("eventbus: no transport registered for %q URLs (%s); registered schemes: %v", u.Scheme, RedactURL(rawURL), Schemes())
	}
	cfg.URL = u
	t, err := d.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("eventbus: opening %s: %w", RedactURL(rawURL), err)
	}
	return t, nil
}
