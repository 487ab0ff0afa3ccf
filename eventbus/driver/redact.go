package driver

import (
	"net/url"
	"slices"
	"strings"
)

// RedactURL returns rawURL with any password, and any query parameter whose
// name mentions a password, secret, token or key, replaced by "xxxxx", for
// logs and errors. A user name without a password is replaced too: some
// brokers (NATS, Redis) take a bare token in that place. Text that does not parse as a URL, or parses as an
// opaque URL (no "//" after the scheme), is hidden entirely after its
// scheme, since it may still hold a secret. Transports use it for every log
// line and error that shows a URL.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		if i := strings.Index(rawURL, "://"); i >= 0 {
			return rawURL[:i+3] + "(unparsable URL hidden)"
		}
		return "(unparsable URL hidden)"
	}
	if u.Opaque != "" {
		// "amqp:user:pass@host" or "user:pass@host:5672" (no "//") parse
		// with the password in the opaque part, which Redacted keeps.
		return u.Scheme + ":(opaque URL hidden)"
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			if secretParam(k) {
				q.Set(k, "xxxxx")
			}
		}
		u.RawQuery = q.Encode()
	}
	if u.User != nil {
		if _, hasPassword := u.User.Password(); !hasPassword && u.User.Username() != "" {
			u.User = url.User("xxxxx")
		}
	}
	return u.Redacted()
}

// URLSecrets returns the parts of a broker URL that RedactURL hides: its
// password, a user name without a password, and the values of query
// parameters whose names mention a password, secret, token or key. Code
// that shows a broker's error texts, which may quote them, replaces each
// with "xxxxx" (as [ConnectivityState] does).
func URLSecrets(rawURL string) []string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil
	}
	var out []string
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			out = append(out, pw)
		} else {
			out = append(out, u.User.Username())
		}
	}
	for k, vs := range u.Query() {
		if secretParam(k) {
			out = append(out, vs...)
		}
	}
	return slices.DeleteFunc(out, func(v string) bool { return v == "" })
}

// secretParam reports whether a URL query parameter's name says it holds
// a secret.
func secretParam(name string) bool {
	name = strings.ToLower(name)
	for _, secret := range []string{"pass", "secret", "token", "key"} {
		if strings.Contains(name, secret) {
			return true
		}
	}
	return false
}
