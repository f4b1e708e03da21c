package wire

import (
	"strconv"
	"testing"
	"time"
)

func TestSyncSignature(t *testing.T) {
	secret := []byte("0123456789abcdef0123")
	now := time.UnixMilli(1_800_000_000_000)
	body := []byte(`{"node":"a","hosts":[]}`)
	at := strconv.FormatInt(now.UnixMilli(), 10)
	good := SyncSignature(secret, now.UnixMilli(), body)
	if err := CheckSyncSignature(secret, at, good, body, now.Add(SyncClockSkew)); err != nil {
		t.Fatalf("a good signature within the skew: %v", err)
	}
	tests := map[string]struct {
		secret    []byte
		at, sig   string
		body      []byte
		checkedAt time.Time
	}{
		"unsigned":          {secret, "", "", body, now},
		"no time":           {secret, "", good, body, now},
		"time not a number": {secret, "soon", good, body, now},
		"too old":           {secret, at, good, body, now.Add(SyncClockSkew + time.Millisecond)},
		"from the future":   {secret, at, good, body, now.Add(-SyncClockSkew - time.Millisecond)},
		"other secret":      {[]byte("another secret of 20c"), at, good, body, now},
		"body changed":      {secret, at, good, []byte(`{"node":"b","hosts":[]}`), now},
		"time changed":      {secret, strconv.FormatInt(now.UnixMilli()+1, 10), good, body, now},
		"another body's":    {secret, at, SyncSignature(secret, now.UnixMilli(), nil), body, now},
	}
	for name, tc := range tests {
		if err := CheckSyncSignature(tc.secret, tc.at, tc.sig, tc.body, tc.checkedAt); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
