package wire

import (
	"strings"
	"testing"
	"time"
)

func TestForwardToken(t *testing.T) {
	secret := []byte("0123456789abcdef0123")
	now := time.UnixMilli(1_800_000_000_000)
	for _, worker := range []string{"10.0.0.1:80", ""} {
		tok := ForwardToken(secret, now.UnixMilli(), Forward{Worker: worker, WaitedMs: 1500})
		got, err := CheckForward(secret, tok, now.Add(time.Second))
		if err != nil || got.Worker != worker || got.WaitedMs != 1500 {
			t.Fatalf("token for %q: %+v, %v", worker, got, err)
		}
	}
	good := ForwardToken(secret, now.UnixMilli(), Forward{Worker: "10.0.0.1:80", WaitedMs: 7})
	for name, tc := range map[string]struct {
		secret []byte
		value  string
		at     time.Time
	}{
		"empty":          {secret, "", now},
		"two parts":      {secret, "1 x", now},
		"other worker":   {secret, strings.Replace(good, "10.0.0.1", "10.0.0.2", 1), now},
		"other secret":   {[]byte("another secret of 20c"), good, now},
		"stale":          {secret, good, now.Add(SyncClockSkew + time.Second)},
		"a sync's":       {secret, strings.Join(strings.Fields(good)[:2], " ") + " " + SyncSignature(secret, now.UnixMilli(), []byte("10.0.0.1:80")), now},
		"worker emptied": {secret, strings.Replace(good, "10.0.0.1:80", "", 1), now},
	} {
		if f, err := CheckForward(tc.secret, tc.value, tc.at); err == nil {
			t.Errorf("%s: accepted (%+v)", name, f)
		}
	}
}
