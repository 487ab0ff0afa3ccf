package kafka

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/eventbus"
)

// TestSASLPlain: the URL's user and password authenticate with SASL/PLAIN,
// and a wrong one fails Open without showing the password. (Kafka answers
// a wrong password with SASL_AUTHENTICATION_FAILED, which Open does not
// retry; kfake drops the connection instead, which looks like a broker
// that is down, so here Open retries until its ctx ends.) It needs a
// cluster with SASL, so it runs on its own in-process one.
func TestSASLPlain(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("PLAIN", "admin", "s3cret"),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, "127.0.0.1:0") }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := strings.Join(c.ListenAddrs(), ",")
	b := newBus(t, "kafka://admin:s3cret@"+addr+"/?prefix=sasl", "sasl")
	ev := events(t, 1, "sasl.ok", nil)
	if err := b.Publish(testCtx(t), ev...); err != nil {
		t.Fatalf("Publish with SASL/PLAIN: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = eventbus.New(ctx, eventbus.Config{ServiceName: "sasl", URL: "kafka://admin:wrong@" + addr + "/", Logger: quietLogger})
	if err == nil {
		t.Fatal("Open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Errorf("the error shows the password: %v", err)
	}
	t.Logf("wrong password: %v", err)
}
