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

// ForwardToken is HeaderForward's value for a request sent to worker
// ("" for a list): the signing time (Unix ms), the worker and a
// signature.
func ForwardToken(secret []byte, unixMs int64, worker string) string {
	return strconv.FormatInt(unixMs, 10) + " " + worker + " " + SyncSignature(secret, unixMs, []byte(forwardLabel+worker))
}

// CheckForward verifies a HeaderForward value and returns the worker it
// names ("" for none). A token is good for SyncClockSkew, which bounds how
// long a copied one could steer a request past the queue.
func CheckForward(secret []byte, value string, now time.Time) (string, error) {
	parts := strings.Split(value, " ")
	if len(parts) != 3 {
		return "", fmt.Errorf("%s: want \"<unix ms> <worker> <signature>\"", HeaderForward)
	}
	if err := CheckSyncSignature(secret, parts[0], parts[2], []byte(forwardLabel+parts[1]), now); err != nil {
		return "", fmt.Errorf("%s: %w", HeaderForward, err)
	}
	return parts[1], nil
}
