package kafka

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"

	"github.com/IBM/sarama"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/brokertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Sarama's metrics (rcrowley/go-metrics) start one process-wide
		// ticker goroutine for meters on first use and never stop it.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
	)
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
