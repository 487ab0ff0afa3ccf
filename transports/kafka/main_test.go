package kafka

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/brokertest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := noLeaksWithin(10 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// noLeaksWithin waits up to d for every goroutine the tests started to
// end. goleak alone gives them about two seconds, and a transport closed
// while its broker was frozen leaves Sarama's goroutines to end once their
// connections fail (the fault tests heal the broker, then close its
// cluster), which took up to 2 s when measured: the fault tests run last,
// so a run of them alone would fail on time, not on a leak.
func noLeaksWithin(d time.Duration) error {
	opts := []goleak.Option{
		// Sarama's metrics (rcrowley/go-metrics) start one process-wide
		// ticker goroutine for meters on first use and never stop it.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
	}
	deadline := time.Now().Add(d)
	for {
		err := goleak.Find(opts...)
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

func unique(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// testURL returns a kafka:// URL on the test broker (see brokertest) with a
// fresh topic prefix and the given extra query parameters.
func testURL(t testing.TB, params ...string) string {
	t.Helper()
	brokers, kind := brokertest.KafkaBrokers(t)
	prefix := unique("t")
	if kind != brokertest.KafkaInProcess {
		t.Cleanup(func() { deleteTopics(t, brokers, prefix+".") })
	}
	q := url.Values{}
	q.Set("prefix", prefix)
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	return "kafka://" + strings.Join(brokers, ",") + "/?" + q.Encode()
}

// deleteTopics deletes the topics and consumer groups whose names start
// with prefix, so tests on a shared cluster leave nothing behind.
func deleteTopics(t testing.TB, brokers []string, prefix string) {
	cfg := sarama.NewConfig()
	cfg.Version = DefaultVersion
	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer admin.Close()
	topics, err := admin.ListTopics()
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	for name := range topics {
		if strings.HasPrefix(name, prefix) {
			if err := admin.DeleteTopic(name); err != nil {
				t.Logf("cleanup: deleting topic %s: %v", name, err)
			}
		}
	}
	groups, err := admin.ListConsumerGroups()
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	for name := range groups {
		if strings.HasPrefix(name, prefix) {
			if err := admin.DeleteConsumerGroup(name); err != nil {
				t.Logf("cleanup: deleting group %s: %v", name, err)
			}
		}
	}
}
