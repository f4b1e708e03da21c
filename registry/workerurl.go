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
	netip.MustParseAddr("168.63.129.16"),   // Azure WireServer
	netip.MustParseAddr("192.0.0.192"),     // Oracle Cloud
}

// embeddedIPv4 returns the IPv4 address an IPv6 address carries by one of
// the standard embeddings (IPv4-mapped, -compatible, -translated, NAT64,
// 6to4), which some stacks route to that IPv4 address.
func embeddedIPv4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{b[i], b[i+1], b[i+2], b[i+3]}) }
	zero := func(from, to int) bool {
		for _, x := range b[from:to] {
			if x != 0 {
				return false
			}
		}
		return true
	}
	switch {
	case a.Is4In6():
		return v4(12), true // ::ffff:a.b.c.d
	case zero(0, 12) && !zero(12, 14):
		return v4(12), true // ::a.b.c.d (deprecated IPv4-compatible; not ::1)
	case zero(0, 8) && b[8] == 0xff && b[9] == 0xff && zero(10, 12):
		return v4(12), true // ::ffff:0:a.b.c.d (IPv4-translated)
	case netip.MustParsePrefix("64:ff9b::/96").Contains(a), netip.MustParsePrefix("64:ff9b:1::/48").Contains(a):
		return v4(12), true // NAT64
	case b[0] == 0x20 && b[1] == 0x02:
		return v4(2), true // 6to4: 2002:a.b.c.d::/48
	}
	return netip.Addr{}, false
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
	if v4, ok := embeddedIPv4(addr); ok {
		if err := CheckWorkerAddr(v4); err != nil {
			return fmt.Errorf("%s carries the IPv4 address %s: %w", addr, v4, err)
		}
	}
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
