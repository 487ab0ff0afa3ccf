package brokertest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestNATSURLFromEnv(t *testing.T) {
	t.Setenv(NATSURLEnv, "nats://nats.example:4222")
	if url, kind := NATSURL(t); url != "nats://nats.example:4222" || kind != NATSFromEnv {
		t.Errorf("NATSURL = %q, %q; want the environment's URL", url, kind)
	}
}

// TestNATSURLHasJetStream: whatever server NATSURL finds, and the
// in-process one asked for by name, answers JetStream requests.
func TestNATSURLHasJetStream(t *testing.T) {
	for _, env := range []string{"", NATSEmbedded} {
		t.Run("env="+env, func(t *testing.T) {
			t.Setenv(NATSURLEnv, env)
			url, kind := NATSURL(t)
			if env == NATSEmbedded && kind != NATSEmbedded {
				t.Errorf("kind %q, want embedded", kind)
			}
			if _, err := pingJetStream(url); err != nil {
				t.Errorf("%s server %s: %v", kind, url, err)
			}
		})
	}
}

// TestNATSServerRestartKeepsStreams: a server restarted on its store keeps
// its streams and their messages.
func TestNATSServerRestartKeepsStreams(t *testing.T) {
	s := StartNATSServer(t, NATSServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "kept", Subjects: []string{"kept.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "kept.one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	var info *jetstream.StreamInfo
	for {
		st, err := js.Stream(ctx, "kept")
		if err == nil {
			info, err = st.Info(ctx)
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("stream after the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if info.State.Msgs != 1 {
		t.Errorf("stream holds %d messages after the restart, want 1", info.State.Msgs)
	}
}
