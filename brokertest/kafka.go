package brokertest

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ory/dockertest/v3"
	"github.com/ory/dockertest/v3/docker"

	"github.com/paissive/go-eventbus/internal/devkafka"
)

// KafkaBrokersEnv names the environment variable that sets the Kafka
// brokers tests use, as a comma-separated list of host:port.
const KafkaBrokersEnv = "EVENTBUS_TEST_KAFKA_BROKERS"

// KafkaImage is the container image started when Docker answers and
// KafkaBrokersEnv is not set.
const KafkaImage = "apache/kafka:3.9.0"

// Kinds of Kafka broker KafkaBrokers returns.
const (
	KafkaFromEnv    = "env"
	KafkaFromDocker = "docker"
	KafkaInProcess  = "kfake"
)

var kafkaOnce struct {
	sync.Mutex
	done    bool
	brokers []string // from the environment or the container
	kind    string
	reason  string // why Docker was not used
	logged  bool
}

// KafkaBrokers returns the addresses of a Kafka cluster for t and which
// kind it is: the brokers in EVENTBUS_TEST_KAFKA_BROKERS ("env"), else a
// single-node apache/kafka container started through dockertest when a
// Docker engine answers ("docker"; shared by the whole test process and
// removed by Docker after 30 minutes at the latest), else a fresh
// in-process Kafka-protocol cluster from franz-go's kfake ("kfake"),
// closed when t ends. The first call of a process prints which one runs.
//
// Clusters from the environment or Docker are shared: tests isolate
// themselves with unique topic prefixes and group names.
func KafkaBrokers(t testing.TB) (brokers []string, kind string) {
	t.Helper()
	kafkaOnce.Lock()
	if !kafkaOnce.done {
		kafkaOnce.done = true
		if env := os.Getenv(KafkaBrokersEnv); env != "" {
			for _, b := range strings.Split(env, ",") {
				if b = strings.TrimSpace(b); b != "" {
					kafkaOnce.brokers = append(kafkaOnce.brokers, b)
				}
			}
			kafkaOnce.kind = KafkaFromEnv
		} else if bs, err := startKafkaContainer(); err == nil {
			kafkaOnce.brokers, kafkaOnce.kind = bs, KafkaFromDocker
		} else {
			kafkaOnce.kind, kafkaOnce.reason = KafkaInProcess, err.Error()
		}
	}
	brokers, kind = kafkaOnce.brokers, kafkaOnce.kind
	first := !kafkaOnce.logged
	kafkaOnce.logged = true
	reason := kafkaOnce.reason
	kafkaOnce.Unlock()

	if kind == KafkaInProcess {
		c, err := devkafka.Start("127.0.0.1:0")
		if err != nil {
			t.Fatalf("brokertest: starting an in-process Kafka cluster (kfake): %v", err)
		}
		t.Cleanup(c.Close)
		brokers = c.ListenAddrs()
	}
	if first {
		msg := fmt.Sprintf("brokertest: Kafka broker: %s %v", kind, brokers)
		if kind == KafkaInProcess {
			msg += " (in-process franz-go kfake, one cluster per test; " + reason + "; set " + KafkaBrokersEnv + " to test a real Kafka)"
		}
		fmt.Fprintln(os.Stderr, msg)
	}
	t.Logf("Kafka broker: %s %v", kind, brokers)
	return brokers, kind
}

func startKafkaContainer() ([]string, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return nil, err
	}
	// NewPool succeeds without an engine; Ping is the honest check.
	if err := pool.Client.Ping(); err != nil {
		return nil, fmt.Errorf("docker does not answer: %v", err)
	}
	// The broker advertises the address clients connect to, so the host
	// port must be known before the container starts: take a free one.
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ps := strconv.Itoa(port)
	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Repository: "apache/kafka",
		Tag:        "3.9.0",
		Env: []string{
			"KAFKA_NODE_ID=1",
			"KAFKA_PROCESS_ROLES=broker,controller",
			"KAFKA_LISTENERS=PLAINTEXT://:9092,CONTROLLER://:9093",
			"KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://127.0.0.1:" + ps,
			"KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER",
			"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
			"KAFKA_CONTROLLER_QUORUM_VOTERS=1@localhost:9093",
			"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1",
			"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1",
			"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR=1",
			"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=0",
		},
		PortBindings: map[docker.Port][]docker.PortBinding{
			"9092/tcp": {{HostIP: "127.0.0.1", HostPort: ps}},
		},
	}, func(hc *docker.HostConfig) {
		hc.AutoRemove = true
		hc.RestartPolicy = docker.RestartPolicy{Name: "no"}
	})
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", KafkaImage, err)
	}
	_ = res.Expire(30 * 60)
	brokers := []string{"127.0.0.1:" + ps}
	pool.MaxWait = 2 * time.Minute
	if err := pool.Retry(func() error { return pingKafka(brokers) }); err != nil {
		_ = pool.Purge(res)
		return nil, fmt.Errorf("%s did not accept connections: %w", KafkaImage, err)
	}
	return brokers, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func pingKafka(brokers []string) error {
	cfg := sarama.NewConfig()
	cfg.Net.DialTimeout = 2 * time.Second
	cfg.Metadata.Retry.Max = 0
	c, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if len(c.Brokers()) == 0 {
		return fmt.Errorf("no brokers in the metadata")
	}
	return nil
}
