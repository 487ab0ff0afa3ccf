package driver

import (
	"net/url"
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
			lk := strings.ToLower(k)
			for _, secret := range []string{"pass", "secret", "token", "key"} {
				if strings.Contains(lk, secret) {
					q.Set(k, "xxxxx")
				}
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
