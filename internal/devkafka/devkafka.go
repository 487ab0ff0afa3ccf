// Package devkafka starts franz-go's kfake, an in-process Kafka-protocol
// cluster, in the one way the project uses it: the `eventbus dev kafka`
// command, brokertest's in-process fallback and cmd/reliability's private
// broker all start it through Start.
package devkafka

import (
	"fmt"
	"net"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Start starts a single-broker cluster listening on addr, a loopback
// host:port ("127.0.0.1:0" takes a free port), with the extra options
// (kfake.DataDir to keep its state, ...). The broker advertises the
// address it listens on, so clients must reach it by that address. Close
// the cluster when done.
func Start(addr string, opts ...kfake.Opt) (*kfake.Cluster, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("devkafka: listen address %q is not host:port: %w", addr, err)
	}
	base := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
	}
	c, err := kfake.NewCluster(append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("devkafka: starting a Kafka-protocol broker on %s: %w", addr, err)
	}
	return c, nil
}
