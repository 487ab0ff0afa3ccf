package nats

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Defaults of the URL parameters.
const (
	// DefaultStream is the namespace used when the URL sets no ?stream=:
	// the name of the event stream and the first token of its subjects.
	DefaultStream = "events"
	// DefaultMaxAge is how long the event stream keeps an event when the
	// transport creates it and the URL sets no ?max_age=: seven days,
	// Kafka's default log retention. Events are kept whether or not every
	// subscription has handled them (see the package documentation).
	DefaultMaxAge = 7 * 24 * time.Hour
	// DefaultAckWait is how long the server waits for the acknowledgement
	// of a delivered event before it delivers it again, unless the URL
	// sets ?ack_wait=. It is also how long events the server sent into a
	// connection that broke (and a crashed instance's events) wait before
	// they are delivered again: 10 s rather than JetStream's 30 s, as
	// Kafka's session timeout here. A handler that runs longer does not
	// cause a redelivery: the subscriber tells the server the event is
	// still in progress every third of AckWait.
	DefaultAckWait = 10 * time.Second
	// DefaultMaxMessageBytes is the largest event the transport publishes
	// (headers and body, as NATS counts them) unless the URL sets
	// ?max_message_bytes=. Events larger than the server's max_payload
	// (1 MiB by default) travel in chunks; see the package documentation.
	DefaultMaxMessageBytes = 4 << 20
	// DefaultPort is used for servers without a port.
	DefaultPort = "4222"
)

// MaxPrefetch is the largest ?prefetch= accepted.
const MaxPrefetch = 10000

// Bounds of max_message_bytes.
const (
	// MinMaxMessageBytes is the smallest max_message_bytes accepted.
	MinMaxMessageBytes = 1024
	// MaxMaxMessageBytes is the largest max_message_bytes accepted
	// (64 MiB).
	MaxMaxMessageBytes = 64 << 20
)

// PoisonHeadroom is what a poison record may have beyond
// max_message_bytes: the poison headers, which the bus bounds to a few KiB,
// so that an event at the limit can still be poisoned.
const PoisonHeadroom = 1 << 20

// urlForm is how a URL of the transport is written, for errors about
// unreadable ones.
const urlForm = "nats://[user:password@]host[:port][,host[:port]...][/?param=value&...] (tls:// for TLS)"

const knownParams = "stream, replicas, storage, max_age, deliver, ack_wait, max_message_bytes, prefetch, dedup, token, creds, tls, tls_ca, tls_cert, tls_key"

// options are the transport's settings, read from the URL.
type options struct {
	servers         []string // host:port
	stream          string
	replicas        int
	storage         jetstream.StorageType
	maxAge          time.Duration
	deliverNew      bool
	ackWait         time.Duration
	maxMessageBytes int
	prefetch        int // -1: adaptive (puller.prefetch)
	dedup           bool
	user, password  string
	token           string
	creds           string
	tls             bool
	tlsCA           string
	tlsCert         string
	tlsKey          string
}

// redact returns u for errors and logs: driver.RedactURL hides the
// password, query parameters that name secrets, and a user part without a
// password, which NATS reads as a token.
func redact(u *url.URL) string { return driver.RedactURL(u.String()) }

func parseOptions(u *url.URL) (options, error) {
	o := options{
		stream:          DefaultStream,
		replicas:        1,
		storage:         jetstream.FileStorage,
		maxAge:          DefaultMaxAge,
		ackWait:         DefaultAckWait,
		maxMessageBytes: DefaultMaxMessageBytes,
		prefetch:        -1,
		dedup:           true,
	}
	unreadable := func(why string) error {
		return fmt.Errorf("nats transport: cannot read URL %s: %s; write %s", redact(u), why, urlForm)
	}
	switch u.Scheme {
	case "nats":
	case "tls":
		o.tls = true
	default:
		return o, unreadable(fmt.Sprintf("the scheme %q is neither nats nor tls", u.Scheme))
	}
	if u.Opaque != "" {
		return o, unreadable(fmt.Sprintf("no \"//\" after %q", u.Scheme+":"))
	}
	if u.Path != "" && u.Path != "/" {
		return o, unreadable(fmt.Sprintf("unexpected path %q (subjects are derived from event names; the namespace is ?stream=)", u.Path))
	}
	if u.Fragment != "" {
		return o, unreadable("it has a fragment (#...); a '#' in a password must be written %23")
	}
	if u.Host == "" {
		return o, unreadable("it names no server")
	}
	for _, h := range strings.Split(u.Host, ",") {
		addr, err := serverAddr(h)
		if err != nil {
			return o, unreadable(err.Error())
		}
		o.servers = append(o.servers, addr)
	}
	if u.User != nil {
		pw, ok := u.User.Password()
		if !ok {
			// nats.go would take a lone user name for a token; logs and
			// errors would then show it, so tokens go in ?token=.
			return o, unreadable("it has a user without a password; put a token in ?token= (logs and errors hide it), or write user:password@")
		}
		o.user, o.password = u.User.Username(), pw
		if o.user == "" {
			return o, unreadable("it has a password without a user")
		}
	}
	tlsSet := false
	for k, vs := range u.Query() {
		if len(vs) > 1 {
			return o, fmt.Errorf("nats transport: URL parameter %s is given %d times; give it once", k, len(vs))
		}
		v := vs[0]
		bad := func(want string) error {
			shown := v
			if k == "token" {
				shown = "xxxxx"
			}
			return fmt.Errorf("nats transport: URL parameter %s=%q: %s", k, shown, want)
		}
		switch k {
		case "stream":
			if !validNamespace(v) {
				return o, bad("use 1 to 64 letters, digits and '-' (it names the stream and the first subject token; '_' separates the names derived from it)")
			}
			o.stream = v
		case "replicas":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 5 {
				return o, bad("must be an integer from 1 to 5")
			}
			o.replicas = n
		case "storage":
			switch v {
			case "file":
				o.storage = jetstream.FileStorage
			case "memory":
				o.storage = jetstream.MemoryStorage
			default:
				return o, bad("must be file or memory")
			}
		case "max_age":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return o, bad("must be a duration such as 168h, or 0 to keep events until the stream's other limits remove them")
			}
			o.maxAge = d
		case "deliver":
			switch v {
			case "all":
				o.deliverNew = false
			case "new":
				o.deliverNew = true
			default:
				return o, bad("must be all or new")
			}
		case "ack_wait":
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > 12*time.Hour {
				return o, bad("must be a duration from 1s to 12h")
			}
			o.ackWait = d
		case "max_message_bytes":
			n, err := strconv.Atoi(v)
			if err != nil || n < MinMaxMessageBytes || n > MaxMaxMessageBytes {
				return o, bad(fmt.Sprintf("must be an integer from %d to %d", MinMaxMessageBytes, MaxMaxMessageBytes))
			}
			o.maxMessageBytes = n
		case "prefetch":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > MaxPrefetch {
				return o, bad(fmt.Sprintf("must be an integer from 0 to %d", MaxPrefetch))
			}
			o.prefetch = n
		case "dedup":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, bad("must be true or false")
			}
			o.dedup = b
		case "token":
			if v == "" {
				return o, bad("must not be empty")
			}
			o.token = v
		case "creds":
			if v == "" {
				return o, bad("must be the path of a credentials file")
			}
			o.creds = v
		case "tls":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, bad("must be true or false")
			}
			if !b && u.Scheme == "tls" {
				return o, bad("contradicts the tls:// scheme")
			}
			o.tls, tlsSet = b, true
		case "tls_ca":
			o.tlsCA = v
		case "tls_cert":
			o.tlsCert = v
		case "tls_key":
			o.tlsKey = v
		default:
			return o, fmt.Errorf("nats transport: unknown URL parameter %q (known: %s)", k, knownParams)
		}
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return o, fmt.Errorf("nats transport: URL parameters tls_cert and tls_key go together (a client certificate and its key)")
	}
	if o.tlsCA != "" || o.tlsCert != "" {
		if tlsSet && !o.tls {
			return o, fmt.Errorf("nats transport: URL parameters tls_ca, tls_cert and tls_key contradict tls=false")
		}
		o.tls = true
	}
	n := 0
	for _, set := range []bool{o.user != "", o.token != "", o.creds != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		return o, fmt.Errorf("nats transport: the URL gives more than one of user:password, token and creds; give one")
	}
	return o, nil
}

// serverAddr checks one host[:port] of the URL's server list and adds the
// default port when there is none.
func serverAddr(h string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("empty entry in the server list")
	}
	if strings.TrimSpace(h) != h || strings.ContainsAny(h, " \t/") {
		return "", fmt.Errorf("server %q contains a space or '/'", h)
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port: "host", "[::1]".
		host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), DefaultPort
		if strings.Contains(host, ":") && !strings.HasPrefix(h, "[") || strings.ContainsAny(host, "[]") {
			return "", fmt.Errorf("server %q is not host or host:port (IPv6 addresses go in brackets: [::1]:4222)", h)
		}
	}
	if host == "" {
		return "", fmt.Errorf("server %q has no host", h)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("server %q: port %q is not a number from 1 to 65535", h, port)
	}
	return net.JoinHostPort(host, port), nil
}

// validNamespace reports whether s may name the stream: letters, digits
// and '-', so that the names derived with '_' ("<stream>_poison",
// "<stream>_large") never collide with another namespace's.
func validNamespace(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// poisonMaxBytes is the largest poison record.
func (o options) poisonMaxBytes() int { return o.maxMessageBytes + PoisonHeadroom }
