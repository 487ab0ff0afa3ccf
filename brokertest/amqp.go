package brokertest

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"
	"github.com/ory/dockertest/v3/docker"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// AMQPURLEnv names the environment variable that sets the RabbitMQ broker
// tests use, for example "amqp://guest:guest@rabbit.internal:5672/".
const AMQPURLEnv = "EVENTBUS_TEST_AMQP_URL"

// LocalAMQPURL is the broker tried when AMQPURLEnv is not set: RabbitMQ on
// its default port with its default credentials.
const LocalAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// AMQPImage is the container image started when no broker answers.
const AMQPImage = "rabbitmq:3-management"

// amqpFound caches the discovery of a local broker or container.
var amqpFound struct {
	sync.Mutex
	url    string // the broker found
	reason string // why none was found
	done   bool
}

// AMQPURL returns the URL of a RabbitMQ broker for t: the one in
// EVENTBUS_TEST_AMQP_URL, else one answering on 127.0.0.1:5672 with
// guest/guest, else a rabbitmq:3-management container started with
// dockertest when a Docker engine answers. Otherwise it skips t, saying how
// to provide a broker, or fails it when CI=true. The lookup runs once per
// process; a container it starts is shared by every test of the process
// and removed by Docker after 30 minutes at the latest.
//
// Tests share the broker, so they should isolate themselves with unique
// names (the amqp transport's ?exchange= parameter and unique service
// names) and delete what they declared.
func AMQPURL(t testing.TB) string {
	t.Helper()
	// An explicit URL is used as given: a broker that does not answer
	// shows up as a test failure, not as a silent skip.
	if u := os.Getenv(AMQPURLEnv); u != "" {
		return u
	}
	amqpFound.Lock()
	if !amqpFound.done {
		amqpFound.url, amqpFound.reason = findAMQP()
		amqpFound.done = true
	}
	url, reason := amqpFound.url, amqpFound.reason
	amqpFound.Unlock()
	return decide(t, url, reason)
}

// decide returns url, or skips or fails t (under CI=true) with reason.
func decide(t testing.TB, url, reason string) string {
	t.Helper()
	if url != "" {
		return url
	}
	msg := "no RabbitMQ broker for this test: " + reason +
		"; set " + AMQPURLEnv + "=amqp://user:pass@host:5672/, start RabbitMQ on 127.0.0.1:5672 (guest/guest), or start Docker"
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatal(msg + " (CI=true: a missing broker is a failure, not a skip)")
		return ""
	}
	t.Skip(msg)
	return ""
}

func findAMQP() (url, reason string) {
	localErr := pingAMQP(LocalAMQPURL)
	if localErr == nil {
		return LocalAMQPURL, ""
	}
	u, dockerErr := startAMQPContainer()
	if dockerErr == nil {
		return u, ""
	}
	return "", fmt.Sprintf("%s is unset, 127.0.0.1:5672 does not answer (%v) and no container could be started (%v)", AMQPURLEnv, localErr, dockerErr)
}

func pingAMQP(url string) error {
	conn, err := amqp091.DialConfig(url, amqp091.Config{Dial: amqp091.DefaultDial(2 * time.Second)})
	if err != nil {
		return err
	}
	return conn.Close()
}

func startAMQPContainer() (string, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return "", err
	}
	// NewPool succeeds without an engine; Ping is the honest check.
	if err := pool.Client.Ping(); err != nil {
		return "", fmt.Errorf("docker does not answer: %w", err)
	}
	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Repository: "rabbitmq",
		Tag:        "3-management",
	}, func(hc *docker.HostConfig) {
		hc.AutoRemove = true
		hc.RestartPolicy = docker.RestartPolicy{Name: "no"}
	})
	if err != nil {
		return "", fmt.Errorf("starting %s: %w", AMQPImage, err)
	}
	_ = res.Expire(30 * 60)
	url := fmt.Sprintf("amqp://guest:guest@%s/", res.GetHostPort("5672/tcp"))
	pool.MaxWait = 2 * time.Minute
	if err := pool.Retry(func() error { return pingAMQP(url) }); err != nil {
		_ = pool.Purge(res)
		return "", fmt.Errorf("%s did not accept connections: %w", AMQPImage, err)
	}
	return url, nil
}
