package wire

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Video jobs the router holds (package heldjobs): a video create that
// finds no free slot is answered by the control plane, which keeps the
// job until the queue grants it a worker and then sends it through an
// Envoy.
const (
	// HeaderHeld sends a request to the control plane's held jobs (a
	// route of its own to ClusterRegistry). Only the filter sets it (a
	// client's is removed): on a video create that finds no free slot,
	// on a call about a held job's id, and on a plain job list.
	HeaderHeld = "x-diffusion-held"
	// HeaderForward marks a request the control plane sends through an
	// Envoy (ForwardToken): a held job's create, granted the worker it
	// names, or a job list the control plane merges. The filter takes
	// it only when the signature checks out.
	HeaderForward = "x-diffusion-forward"
	// HeaderHeldAsk carries a held create's QueueRequest (base64url
	// JSON), signed as queue calls are (HeaderSyncTime,
	// HeaderSyncSignature over the JSON).
	HeaderHeldAsk = "x-diffusion-held-ask"
	// HeaderNode is the answer's header naming the Envoy (its node id)
	// that sent a forwarded create, whose reports then count the job.
	HeaderNode = "x-diffusion-node"

	// HeldWorker is the worker key of a held job's id (jobid): a
	// job-id key is 16 characters, and no worker's key (hex) is this.
	HeldWorker = "router-held-jobs"
	// HeldDefaultMaxBytes bounds the bytes of held jobs' bodies on disk
	// (--max-held-bytes).
	HeldDefaultMaxBytes = 1 << 30
)

// forwardLabel keeps forward tokens apart from other signatures made with
// the same secret.
const forwardLabel = "diffusion-router forward\n"

// Forward is what a forward token carries: the worker a held job was
// granted ("" for a list) and how long the job waited in the router (its
// span shows it, as a queued request's does).
type Forward struct {
	Worker   string
	WaitedMs int64
}

// ForwardToken is HeaderForward's value: the signing time (Unix ms), the
// worker, the wait and a signature over them.
func ForwardToken(secret []byte, unixMs int64, f Forward) string {
	signed := f.Worker + " " + strconv.FormatInt(f.WaitedMs, 10)
	return strconv.FormatInt(unixMs, 10) + " " + signed + " " + SyncSignature(secret, unixMs, []byte(forwardLabel+signed))
}

// CheckForward verifies a HeaderForward value. A token is good for
// SyncClockSkew, which bounds how long a copied one could steer a request
// past the queue.
func CheckForward(secret []byte, value string, now time.Time) (Forward, error) {
	parts := strings.Split(value, " ")
	if len(parts) != 4 {
		return Forward{}, fmt.Errorf("%s: want \"<unix ms> <worker> <waited ms> <signature>\"", HeaderForward)
	}
	waited, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || waited < 0 {
		return Forward{}, fmt.Errorf("%s: the wait must be milliseconds", HeaderForward)
	}
	if err := CheckSyncSignature(secret, parts[0], parts[3], []byte(forwardLabel+parts[1]+" "+parts[2]), now); err != nil {
		return Forward{}, fmt.Errorf("%s: %w", HeaderForward, err)
	}
	return Forward{Worker: parts[1], WaitedMs: waited}, nil
}
