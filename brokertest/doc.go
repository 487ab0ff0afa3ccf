// Package brokertest finds real brokers for tests, so that the transports'
// own tests, the contract suite and users' integration tests run against
// the real thing when one is available and say clearly how to provide one
// when it is not.
//
// Each broker is looked up in the same order: an explicit URL in an
// environment variable, then a broker already answering on its default port
// on 127.0.0.1, then a throwaway container started through Docker (when a
// Docker engine answers), and otherwise the test is skipped with a message
// naming the variable to set. With CI=true a missing broker fails the test
// instead, so a CI job cannot pass by skipping everything.
package brokertest
