package registry

import (
	"errors"
	"testing"
)

func TestParseWorkerURL(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "http://h:1", want: "http://h:1"},
		{in: "http://h:1/", want: "http://h:1"},
		{in: "  HTTP://Worker-1.Example.com:8000/  ", want: "http://worker-1.example.com:8000"},
		{in: "http://localhost", want: "http://localhost:80"},
		{in: "https://gpu", want: "https://gpu:443"},
		{in: "http://[::1]:30000", want: "http://[::1]:30000"},
		{in: "http://127.0.0.1:30000", want: "http://127.0.0.1:30000"},
		{in: "http://[::ffff:10.0.0.1]:5", want: "http://10.0.0.1:5"},
		{in: "", wantErr: true},
		{in: "   ", wantErr: true},
		{in: "ftp://h:1", wantErr: true},
		{in: "file:///etc/passwd", wantErr: true},
		{in: "h:1", wantErr: true},
		{in: "//h:1", wantErr: true},
		{in: "http://", wantErr: true},
		{in: "http://u:p@h:1", wantErr: true},
		{in: "http://h:1/v1", wantErr: true},
		{in: "http://h:1?x=1", wantErr: true},
		{in: "http://h:1#f", wantErr: true},
		{in: "http://h:0", wantErr: true},
		{in: "http://h:70000", wantErr: true},
		{in: "http://169.254.169.254", wantErr: true},
		{in: "http://169.254.1.2:80", wantErr: true},
		{in: "http://168.63.129.16", wantErr: true},
		{in: "http://192.0.0.192", wantErr: true},
		{in: "http://[64:ff9b::a9fe:a9fe]", wantErr: true},
		{in: "http://[2002:a9fe:a9fe::]", wantErr: true},
		{in: "http://[::169.254.169.254]", wantErr: true},
		{in: "http://[::ffff:0:a9fe:a9fe]", wantErr: true},
		{in: "http://[::ffff:169.254.169.254]", wantErr: true},
		{in: "http://[64:ff9b::a00:1]:9", want: "http://[64:ff9b::a00:1]:9"},
		{in: "http://[::1]:9", want: "http://[::1]:9"},
		{in: "http://[fe80::1]:80", wantErr: true},
		{in: "http://[fd00:ec2::254]:80", wantErr: true},
		{in: "http://metadata.google.internal", wantErr: true},
		{in: "http://metadata.google.internal.", wantErr: true},
		{in: "http://0.0.0.0:1", wantErr: true},
		{in: "http://224.0.0.1:1", wantErr: true},
		{in: "http://bad_host!:1", wantErr: true},
		{in: "http://-bad:1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseWorkerURL(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseWorkerURL(%q) = %v, want error", tt.in, got)
				}
				if !errors.Is(err, ErrInvalidURL) {
					t.Fatalf("error %v does not wrap ErrInvalidURL", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseWorkerURL(%q): %v", tt.in, err)
			}
			if got.String() != tt.want {
				t.Fatalf("ParseWorkerURL(%q) = %q, want %q", tt.in, got.String(), tt.want)
			}
		})
	}
}

func TestWorkerIDRoundTrip(t *testing.T) {
	tests := []struct {
		url    string
		wantID string
	}{
		{"http://localhost:30000", "http%3A%2F%2Flocalhost%3A30000"},
		{"http://[::1]:1", "http%3A%2F%2F%5B%3A%3A1%5D%3A1"},
	}
	for _, tt := range tests {
		id := EncodeID(tt.url)
		if id != tt.wantID {
			t.Errorf("EncodeID(%q) = %q, want %q", tt.url, id, tt.wantID)
		}
		for _, in := range []string{id, tt.url, "http%253A%252F%252F" + tt.url[len("http://"):]} {
			u, err := DecodeID(in)
			if err != nil {
				t.Errorf("DecodeID(%q): %v", in, err)
				continue
			}
			if u.String() != tt.url {
				t.Errorf("DecodeID(%q) = %q, want %q", in, u.String(), tt.url)
			}
		}
	}
	if _, err := DecodeID("%zz"); err == nil {
		t.Error("DecodeID of bad escape succeeded")
	}
}
