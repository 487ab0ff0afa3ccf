package kafka

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Mapping names how event names map to Kafka topics; see the package
// documentation.
type Mapping string

const (
	// MappingSingle puts every event of the namespace in one topic,
	// "<prefix>.events"; every subscription reads it all and filters in Go,
	// so every pattern works. It is the default.
	MappingSingle Mapping = "single"
	// MappingSegment puts each event in the topic of its first name
	// segment, "<prefix>.events.<segment>", so a subscription reads only
	// the topic its pattern's literal first segment names. Patterns whose
	// first segment is a wildcard are rejected at Subscribe.
	MappingSegment Mapping = "segment"
)

// Defaults of the URL parameters.
const (
	// DefaultPartitions is the partition count of event topics the
	// transport creates.
	DefaultPartitions = 8
	// DefaultMaxMessageBytes is the largest event record the producer
	// sends, counted as Kafka does (see the package documentation), and
	// the max.message.bytes of the event and replay topics the transport
	// creates (4 MiB); poison topics get PoisonHeadroom more.
	DefaultMaxMessageBytes = 4 << 20
	// DefaultJoinTimeout bounds how long Subscribe waits for the consumer
	// to join its group before returning anyway.
	DefaultJoinTimeout = 30 * time.Second
	// DefaultPort is used for broker addresses without a port.
	DefaultPort = "9092"
)

// Bounds of max_message_bytes. The upper bound leaves room for the poison
// headroom within Sarama's 100 MiB request limit (sarama.MaxRequestSize).
const (
	// MinMaxMessageBytes is the smallest max_message_bytes accepted.
	MinMaxMessageBytes = 1024
	// MaxMaxMessageBytes is the largest max_message_bytes accepted
	// (64 MiB).
	MaxMaxMessageBytes = 64 << 20
)

// PoisonHeadroom is what the poison topic allows beyond max_message_bytes:
// a poison record is the event plus the poison headers, which the bus
// bounds to a few KiB, so an event at the limit can still be poisoned. The
// poison topic's max.message.bytes, and the limit of the producer that
// writes it, are max_message_bytes + PoisonHeadroom.
const PoisonHeadroom = 1 << 20

// urlForm is how a Kafka URL is written, for errors about unreadable ones.
const urlForm = "kafka://[user:password@]host[:port][,host[:port]...][/?param=value&...]"

// DefaultVersion is the Kafka protocol version the transport speaks unless
// the URL sets ?version=. 2.1 is the oldest protocol Kafka 4 still accepts
// and recent enough for headers, idempotence and DeleteRecords.
var DefaultVersion = sarama.V2_1_0_0

// options are the transport's settings, read from the URL.
type options struct {
	brokers         []string
	prefix          string
	mapping         Mapping
	partitions      int32
	replication     int16 // 0: min(3, brokers in the cluster)
	clientID        string
	version         sarama.KafkaVersion
	tls             bool
	saslMechanism   string
	user, password  string
	idempotent      string // "auto", "true", "false"
	initialOffset   int64
	maxMessageBytes int
	joinTimeout     time.Duration
}

const knownParams = "prefix, mapping, partitions, replication, client_id, version, tls, sasl_mechanism, idempotent, initial_offset, max_message_bytes, join_timeout"

func parseOptions(u *url.URL) (options, error) {
	o := options{
		mapping:         MappingSingle,
		partitions:      DefaultPartitions,
		clientID:        "go-eventbus",
		version:         DefaultVersion,
		idempotent:      "auto",
		initialOffset:   sarama.OffsetOldest,
		maxMessageBytes: DefaultMaxMessageBytes,
		joinTimeout:     DefaultJoinTimeout,
	}
	if u.Scheme != "kafka" {
		return o, fmt.Errorf("kafka transport: URL scheme %q, want kafka", u.Scheme)
	}
	// A URL the transport cannot read is an error, never a guess: with
	// "kafka:host:9092" (no "//") url.Parse puts everything in Opaque and
	// the broker list would be empty or, worse, a default.
	unreadable := func(why string) error {
		return fmt.Errorf("kafka transport: cannot read URL %s: %s; write %s", driver.RedactURL(u.String()), why, urlForm)
	}
	if u.Opaque != "" {
		return o, unreadable("no \"//\" after \"kafka:\"")
	}
	if u.Path != "" && u.Path != "/" {
		return o, unreadable(fmt.Sprintf("unexpected path %q (topics are derived from event names; the namespace is ?prefix=)", u.Path))
	}
	if u.Fragment != "" {
		return o, unreadable("unexpected fragment")
	}
	if u.Host == "" {
		return o, unreadable("the URL names no broker")
	}
	for _, h := range strings.Split(u.Host, ",") {
		addr, err := brokerAddr(h)
		if err != nil {
			return o, unreadable(err.Error())
		}
		o.brokers = append(o.brokers, addr)
	}
	if u.User != nil {
		o.user = u.User.Username()
		o.password, _ = u.User.Password()
	}
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		bad := func(want string) error {
			return fmt.Errorf("kafka transport: URL parameter %s=%q: %s", k, v, want)
		}
		switch k {
		case "prefix":
			if v != "" && !validTopic(v) {
				return o, bad("use letters, digits, '.', '_' and '-' (at most 100)")
			}
			o.prefix = v
		case "mapping":
			switch Mapping(v) {
			case MappingSingle, MappingSegment:
				o.mapping = Mapping(v)
			default:
				return o, bad("must be single or segment")
			}
		case "partitions":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 10000 {
				return o, bad("must be an integer from 1 to 10000")
			}
			o.partitions = int32(n)
		case "replication":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				return o, bad("must be an integer from 1 to 100")
			}
			o.replication = int16(n)
		case "client_id":
			if v == "" {
				return o, bad("must not be empty")
			}
			o.clientID = v
		case "version":
			ver, err := sarama.ParseKafkaVersion(v)
			if err != nil {
				return o, bad("must be a Kafka version such as 2.1.0")
			}
			o.version = ver
		case "tls":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, bad("must be true or false")
			}
			o.tls = b
		case "sasl_mechanism":
			switch strings.ToUpper(v) {
			case sarama.SASLTypePlaintext:
				o.saslMechanism = sarama.SASLTypePlaintext
			default:
				return o, bad("only PLAIN is supported (with the user and password of the URL)")
			}
		case "idempotent":
			switch v {
			case "auto", "true", "false":
				o.idempotent = v
			default:
				return o, bad("must be auto, true or false")
			}
		case "initial_offset":
			switch v {
			case "oldest":
				o.initialOffset = sarama.OffsetOldest
			case "newest":
				o.initialOffset = sarama.OffsetNewest
			default:
				return o, bad("must be oldest or newest")
			}
		case "max_message_bytes":
			n, err := strconv.Atoi(v)
			if err != nil || n < MinMaxMessageBytes || n > MaxMaxMessageBytes {
				return o, bad(fmt.Sprintf("must be an integer from %d to %d", MinMaxMessageBytes, MaxMaxMessageBytes))
			}
			o.maxMessageBytes = n
		case "join_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return o, bad("must be a duration such as 30s")
			}
			o.joinTimeout = d
		default:
			return o, fmt.Errorf("kafka transport: unknown URL parameter %q (known: %s)", k, knownParams)
		}
	}
	if o.saslMechanism == "" && o.user != "" {
		o.saslMechanism = sarama.SASLTypePlaintext
	}
	if o.saslMechanism != "" && o.user == "" {
		return o, fmt.Errorf("kafka transport: sasl_mechanism=%s needs a user and password in the URL (kafka://user:pass@host:port)", o.saslMechanism)
	}
	return o, nil
}

// brokerAddr checks one host[:port] of the URL's broker list and adds the
// default port when there is none.
func brokerAddr(h string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("empty entry in the broker list")
	}
	if strings.TrimSpace(h) != h || strings.ContainsAny(h, " \t/") {
		return "", fmt.Errorf("broker %q contains a space or '/'", h)
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port: "host", "[::1]".
		host, port = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), DefaultPort
		if strings.Contains(host, ":") && !strings.HasPrefix(h, "[") || strings.ContainsAny(host, "[]") {
			return "", fmt.Errorf("broker %q is not host or host:port (IPv6 addresses go in brackets: [::1]:9092)", h)
		}
	}
	if host == "" {
		return "", fmt.Errorf("broker %q has no host", h)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("broker %q: port %q is not a number from 1 to 65535", h, port)
	}
	return net.JoinHostPort(host, port), nil
}

// poisonMaxBytes is the largest poison record: the poison topic's
// max.message.bytes and the poison producer's limit.
func (o options) poisonMaxBytes() int { return o.maxMessageBytes + PoisonHeadroom }

// validTopic reports whether s is a legal Kafka topic name part.
func validTopic(s string) bool {
	if s == "" || len(s) > 100 {
		return false
	}
	for _, r := range s {
		if !topicChar(r) {
			return false
		}
	}
	return true
}

func topicChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}

// saramaConfig returns the Sarama configuration every client of the
// transport starts from.
func (o options) saramaConfig(tlsCfg *tls.Config) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = o.clientID
	c.Version = o.version
	c.Net.DialTimeout = 10 * time.Second
	if tlsCfg != nil || o.tls {
		c.Net.TLS.Enable = true
		if tlsCfg != nil {
			c.Net.TLS.Config = tlsCfg.Clone()
		} else {
			c.Net.TLS.Config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	if o.saslMechanism != "" {
		c.Net.SASL.Enable = true
		c.Net.SASL.Mechanism = sarama.SASLMechanism(o.saslMechanism)
		c.Net.SASL.User = o.user
		c.Net.SASL.Password = o.password
	}
	// Topics are created by the transport with the configured partitions;
	// a metadata request must not create them with the broker's defaults.
	c.Metadata.AllowAutoTopicCreation = false
	c.Metadata.Retry.Backoff = 200 * time.Millisecond

	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.MaxMessageBytes = o.maxMessageBytes
	c.Producer.Retry.Max = 5
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	// One request in flight per broker keeps the records of a key in order
	// across retries; it is also what Sarama's idempotent producer needs.
	c.Net.MaxOpenRequests = 1

	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.Initial = o.initialOffset
	c.Consumer.Offsets.AutoCommit.Enable = true
	c.Consumer.Offsets.AutoCommit.Interval = time.Second
	c.Consumer.Group.Session.Timeout = 10 * time.Second
	// A rebalance starts when each member learns of it from a heartbeat.
	c.Consumer.Group.Heartbeat.Interval = time.Second
	c.Consumer.Fetch.Default = 1 << 20
	c.Consumer.MaxWaitTime = 250 * time.Millisecond
	return c
}

// topicConfig is the configuration of the topics the transport creates.
func (o options) topicConfig(replication int16, compact bool, maxBytes int) map[string]*string {
	s := func(v string) *string { return &v }
	cfg := map[string]*string{"max.message.bytes": s(strconv.Itoa(maxBytes))}
	if replication >= 3 {
		cfg["min.insync.replicas"] = s("2")
	}
	if compact {
		cfg["cleanup.policy"] = s("compact")
	}
	return cfg
}
