package registry

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// ErrInvalidURL marks every rejection of a worker URL, so callers can map it
// to a 400 without string matching.
var ErrInvalidURL = errors.New("invalid worker url")

// Hostnames that resolve to cloud instance-metadata services. Letting a client
// register one would turn the router into a proxy to credentials.
var metadataHosts = map[string]bool{
	"metadata":                   true,
	"metadata.google.internal":   true,
	"metadata.goog":              true,
	"instance-data":              true,
	"instance-data.ec2.internal": true,
}

// metadataAddrs are metadata-service addresses outside the link-local ranges.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
}

// WorkerURL is a parsed, normalised worker address.
type WorkerURL struct {
	Scheme string // "http" or "https"
	Host   string // lower-case hostname or IP literal, without brackets
	Port   uint32
}

// String renders the canonical form: scheme://host:port, brackets for IPv6,
// no trailing slash. Two spellings of one worker render identically.
func (u WorkerURL) String() string {
	return u.Scheme + "://" + net.JoinHostPort(u.Host, strconv.Itoa(int(u.Port)))
}

// TLS reports whether the worker is reached over HTTPS.
func (u WorkerURL) TLS() bool { return u.Scheme == "https" }

// ParseWorkerURL validates and normalises a worker URL as a client sent it.
func ParseWorkerURL(raw string) (WorkerURL, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return WorkerURL{}, fmt.Errorf("%w: url is empty", ErrInvalidURL)
	}
	if len(s) > 2048 {
		return WorkerURL{}, fmt.Errorf("%w: url longer than 2048 characters", ErrInvalidURL)
	}
	u, err := url.Parse(s)
	if err != nil {
		return WorkerURL{}, fmt.Errorf("%w: %q does not parse: %v", ErrInvalidURL, s, err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return WorkerURL{}, fmt.Errorf("%w: %q: scheme must be http or https", ErrInvalidURL, s)
	}
	if u.User != nil {
		return WorkerURL{}, fmt.Errorf("%w: %q: credentials in the url are not allowed", ErrInvalidURL, s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return WorkerURL{}, fmt.Errorf("%w: %q: query and fragment are not allowed", ErrInvalidURL, s)
	}
	if u.Path != "" && u.Path != "/" {
		return WorkerURL{}, fmt.Errorf("%w: %q: a path is not allowed, give scheme://host:port", ErrInvalidURL, s)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return WorkerURL{}, fmt.Errorf("%w: %q: host is missing", ErrInvalidURL, s)
	}
	port := uint32(80)
	if scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return WorkerURL{}, fmt.Errorf("%w: %q: port must be 1-65535", ErrInvalidURL, s)
		}
		port = uint32(n)
	}
	host = strings.TrimSuffix(host, ".")
	if metadataHosts[host] {
		return WorkerURL{}, fmt.Errorf("%w: %q: cloud metadata hosts are blocked", ErrInvalidURL, s)
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		if err := CheckWorkerAddr(addr); err != nil {
			return WorkerURL{}, fmt.Errorf("%w: %q: %v", ErrInvalidURL, s, err)
		}
		host = addr.Unmap().String()
	} else if !validHostname(host) {
		return WorkerURL{}, fmt.Errorf("%w: %q: host is not a valid hostname or IP address", ErrInvalidURL, s)
	}
	return WorkerURL{Scheme: scheme, Host: host, Port: port}, nil
}

// CheckWorkerAddr rejects addresses a worker can never legitimately have:
// link-local (which holds the cloud metadata services), metadata addresses,
// unspecified, multicast and broadcast. It also applies to what a hostname
// resolves to, so DNS cannot be used to smuggle a blocked address in.
func CheckWorkerAddr(addr netip.Addr) error {
	addr = addr.Unmap()
	switch {
	case addr.IsLinkLocalUnicast(), addr.IsLinkLocalMulticast():
		return errors.New("link-local addresses (including 169.254.169.254) are blocked")
	case addr.IsUnspecified():
		return errors.New("the unspecified address cannot be a worker")
	case addr.IsMulticast(), addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("multicast and broadcast addresses cannot be workers")
	}
	for _, m := range metadataAddrs {
		if addr == m {
			return errors.New("cloud metadata addresses are blocked")
		}
	}
	return nil
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// EncodeID turns a canonical worker URL into the path-safe worker_id that the
// Python routers use: the URL with every reserved character escaped.
func EncodeID(canonicalURL string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(canonicalURL); i++ {
		c := canonicalURL[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// DecodeID accepts a worker_id (escaped once or not at all) and returns the
// normalised worker URL it names.
func DecodeID(id string) (WorkerURL, error) {
	s, err := url.PathUnescape(id)
	if err != nil {
		return WorkerURL{}, fmt.Errorf("%w: worker id %q is not valid URL encoding", ErrInvalidURL, id)
	}
	if strings.Contains(s, "%") {
		// Encoded twice by some clients; one more pass is harmless.
		if again, err := url.PathUnescape(s); err == nil {
			s = again
		}
	}
	return ParseWorkerURL(s)
}
