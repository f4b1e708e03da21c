package tagger

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/diffrouter/diffusion-router/wire"
)

// Task is the class of a request, set as x-diffusion-task.
type Task string

const (
	TaskImage     Task = "image"
	TaskImageEdit Task = "image-edit"
	TaskVideo     Task = "video"
	TaskVideoPoll Task = "video-poll"
	TaskNative    Task = "native"
	TaskControl   Task = "control"
	TaskOther     Task = "other"
)

// Tasks lists every class, for per-class metrics.
var Tasks = []Task{TaskImage, TaskImageEdit, TaskVideo, TaskVideoPoll, TaskNative, TaskControl, TaskOther}

// Classify names the task of a request from its method and path.
func Classify(method, path string) Task {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	switch {
	// /generate and /generate_video are the seed (Miles) router's names for
	// the same two calls; Envoy rewrites them to the worker's paths.
	case method == "POST" && (path == wire.PathImages || path == wire.PathSeedImage):
		return TaskImage
	case method == "POST" && path == wire.PathImageEdits:
		return TaskImageEdit
	case method == "POST" && (path == wire.PathVideos || path == wire.PathSeedVideo):
		return TaskVideo
	case path == wire.PathVideos || strings.HasPrefix(path, wire.PathVideos+"/"):
		return TaskVideoPoll
	case method == "POST" && (path == wire.PathNative || path == wire.PathNativeRoll):
		return TaskNative
	}
	switch wire.ClassOf(path) {
	case wire.ClassRegistry, wire.ClassFleetCall:
		return TaskControl
	}
	return TaskOther
}

// ParsesBody reports whether the task's JSON body is read for the model and
// the cost estimate.
func (t Task) ParsesBody() bool { return t == TaskImage || t == TaskVideo || t == TaskNative }

// BodyFacts is what the filter learns from a generation body.
type BodyFacts struct {
	Model string
	// ResponseFormat is the image answer's form ("url" or "b64_json"),
	// empty when the request leaves it to the server.
	ResponseFormat string
	// Cost is the estimated GPU work in megapixel-steps:
	// n x steps x W x H x frames / 2^20.
	Cost int64
	// User is the body's "user" (OpenAI's end-user id): the default
	// tenant of the router-owned queue.
	User string
}

// generationRequest is what the filter reads of a generation body.
type generationRequest struct {
	Model  string      `json:"model"`
	Format string      `json:"response_format"`
	N      json.Number `json:"n"`
	Steps  json.Number `json:"num_inference_steps"`
	Size   string      `json:"size"`
	Width  json.Number `json:"width"`
	Height json.Number `json:"height"`
	Frames json.Number `json:"num_frames"`
	User   string      `json:"user"`
}

// ParseBody reads a JSON generation body.
func ParseBody(t Task, body []byte, d wire.Defaults) (BodyFacts, error) {
	req, ok := scanRequest(body)
	if !ok {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		if err := dec.Decode(&req); err != nil {
			return BodyFacts{}, fmt.Errorf("body is not a JSON object: %w", err)
		}
	}
	n := intOr(req.N, 1)
	steps := intOr(req.Steps, d.Steps)
	w, h := intOr(req.Width, d.Width), intOr(req.Height, d.Height)
	if req.Size != "" {
		ws, hs, ok := strings.Cut(strings.ToLower(req.Size), "x")
		wi, err1 := strconv.Atoi(ws)
		hi, err2 := strconv.Atoi(hs)
		if !ok || err1 != nil || err2 != nil {
			return BodyFacts{}, fmt.Errorf("size %q is not WxH", req.Size)
		}
		w, h = wi, hi
	}
	frames := 1
	if t == TaskVideo {
		frames = intOr(req.Frames, d.VideoFrames)
	}
	for _, v := range []int{n, steps, w, h, frames} {
		if v <= 0 || v > 1<<20 {
			return BodyFacts{}, fmt.Errorf("field out of range: %d", v)
		}
	}
	// In float: the product of five client-chosen numbers can overflow int64.
	cost := float64(n) * float64(steps) * float64(w) * float64(h) * float64(frames) / (1 << 20)
	return BodyFacts{Model: req.Model, ResponseFormat: req.Format, Cost: int64(min(max(cost, 1), 1e15)), User: req.User}, nil
}

// videoJob is what the filter reads of a video job object.
type videoJob struct {
	ID     string `json:"id"`
	Object string `json:"object"`
	Status string `json:"status"`
	// InferenceTime is the job's GPU time in seconds, once completed
	// (sglang-diffusion sets it).
	InferenceTime float64 `json:"inference_time_s"`
}

// jobState reads a video job object; ok is false for a body that is not
// one.
func jobState(body []byte) (videoJob, bool) {
	var v videoJob
	if json.Unmarshal(body, &v) != nil || v.Object != "video" || v.ID == "" {
		return videoJob{}, false
	}
	return v, true
}

// jobEnded reports whether a job status is final: the worker's GPU is done
// with it.
func jobEnded(status string) bool {
	switch status {
	case "completed", "failed", "cancelled", "canceled", "expired":
		return true
	}
	return false
}

func intOr(n json.Number, def int) int {
	if n == "" {
		return def
	}
	i, err := strconv.Atoi(string(n))
	if err != nil {
		return -1
	}
	return i
}

// jobPath splits a path under a job prefix (/v1/videos/, /v1/images/) into
// the prefix, the job id (the first segment, possibly empty) and the rest
// (possibly empty, with its leading slash). Every such path names a job and
// must carry an id the router signed; only the creation paths
// /v1/images/generations and /v1/images/edits are not job paths.
func jobPath(path string) (prefix, id, suffix string, ok bool) {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if !wire.IsJobPath(path) {
		return "", "", "", false
	}
	for _, p := range wire.JobPrefixes {
		rest, found := strings.CutPrefix(path, p)
		if !found {
			continue
		}
		id, suffix, _ = strings.Cut(rest, "/")
		if i := len(id); i < len(rest) {
			suffix = rest[i:]
		}
		return p, id, suffix, true
	}
	return "", "", "", false
}
