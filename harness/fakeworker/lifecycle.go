package fakeworker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Videos: creation answers at once with a queued job; the GPU runs it later;
// clients poll until completed or failed, then fetch the content.

func (s *Server) handleVideoCreate(w http.ResponseWriter, r *http.Request) {
	if !s.cfg.Video() {
		writeJSON(w, 400, map[string]any{"error": fmt.Sprintf("model %s (task type %s) does not generate videos", s.currentModel(), s.cfg.TaskType)})
		return
	}
	var body map[string]any
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
		if err := r.ParseMultipartForm(32 << 20); err != nil {
			validationError(w, "malformed multipart body: "+err.Error())
			return
		}
		body = map[string]any{}
		for k, v := range r.MultipartForm.Value {
			if len(v) > 0 {
				body[k] = v[0]
			}
		}
		if err := numericFields(body, "num_inference_steps", "num_frames", "seed", "width", "height", "guidance_scale"); err != nil {
			validationError(w, err.Error())
			return
		}
	} else {
		var err error
		if body, err = decodeJSONObject(r); err != nil {
			validationError(w, err.Error())
			return
		}
	}
	p, perr := s.parseGenParams(body, true)
	if perr != nil {
		validationError(w, perr.msg)
		return
	}
	if !s.admitGeneration(w) {
		return
	}
	fail, _ := s.outcome()
	v := &video{
		ID: newID("video_"), Object: "video", Status: "queued", CreatedAt: time.Now().Unix(),
		Model: s.currentModel(), Prompt: p.Prompt, Size: fmt.Sprintf("%dx%d", p.Width, p.Height),
		Seconds: strconv.FormatFloat(float64(p.Frames)/16, 'f', 2, 64), Quality: "standard", WorkerID: s.cfg.WorkerID,
		cost: s.cost(p),
	}
	s.mu.Lock()
	s.videoSeq++
	v.seq = s.videoSeq
	s.videos[v.ID] = v
	snapshot := *v
	s.mu.Unlock()

	j := &job{kind: "video", cost: v.cost}
	j.run = func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if fail {
			msg := "simulated generation failure"
			v.Status, v.Error = "failed", &msg
			s.failed++
			return
		}
		v.Status, v.Progress = "completed", 100
		v.Model = s.modelPath // the weights that produced it
		v.content = fakeMP4(v.ID)
		url, file, done := "/v1/videos/"+v.ID+"/content", "/tmp/sglang-fake/"+v.ID+".mp4", time.Now().Unix()
		took, peak := v.cost.Seconds(), 40960.0
		v.URL, v.FilePath, v.CompletedAt, v.NumOutputs = &url, &file, &done, 1
		v.InferenceTime, v.PeakMemoryMB = &took, &peak
		s.served["video"]++
	}
	s.gpu.submit(j)
	go func() {
		<-j.started
		s.mu.Lock()
		if v.Status == "queued" {
			v.Status, v.started = "in_progress", j.startedAt
		}
		s.mu.Unlock()
	}()
	writeJSON(w, 200, snapshot)
}

// fakeMP4 is a small blob that starts like an MP4 file.
func fakeMP4(id string) []byte {
	b := []byte("\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom")
	return append(b, []byte(id)...)
}

func (s *Server) videoView(v *video) video {
	out := *v
	if out.Status == "in_progress" && v.cost > 0 {
		out.Progress = min(99, int(100*time.Since(v.started)/v.cost))
	}
	return out
}

func (s *Server) handleVideoGet(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	v, ok := s.videos[r.PathValue("id")]
	var view video
	if ok {
		view = s.videoView(v)
	}
	s.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]any{"error": "video not found"})
		return
	}
	writeJSON(w, 200, view)
}

// handleVideoList pages as sglang does: newest first (order=desc, the
// default) or oldest first, ?after=<id> continues past that job (an id it
// does not hold gives an empty page), ?limit=1..100.
func (s *Server) handleVideoList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			validationError(w, "limit must be an integer in [1, 100]")
			return
		}
		limit = n
	}
	s.mu.Lock()
	out := make([]video, 0, len(s.videos))
	for _, v := range s.videos {
		out = append(out, s.videoView(v))
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	if strings.ToLower(q.Get("order")) != "asc" {
		slices.Reverse(out)
	}
	if after := q.Get("after"); after != "" {
		if i := slices.IndexFunc(out, func(v video) bool { return v.ID == after }); i >= 0 {
			out = out[i+1:]
		} else {
			out = out[:0] // an id it does not hold: an empty page
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	writeJSON(w, 200, map[string]any{"object": "list", "data": out})
}

func (s *Server) handleVideoDelete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	_, ok := s.videos[id]
	delete(s.videos, id)
	s.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]any{"error": "video not found"})
		return
	}
	writeJSON(w, 200, map[string]any{"id": id, "object": "video.deleted", "deleted": true})
}

func (s *Server) handleVideoContent(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	v, ok := s.videos[r.PathValue("id")]
	var status string
	var content []byte
	if ok {
		status, content = v.Status, v.content
	}
	s.mu.Unlock()
	switch {
	case !ok:
		writeJSON(w, 404, map[string]any{"error": "video not found"})
	case status != "completed":
		writeJSON(w, 400, map[string]any{"error": "video is " + status + ", not completed"})
	default:
		w.Header().Set("Content-Type", "video/mp4")
		_, _ = w.Write(content)
	}
}

// Weights and memory: the RL control calls.

func (s *Server) handleUpdateWeights(w http.ResponseWriter, r *http.Request) {
	body, err := decodeJSONObject(r)
	if err != nil {
		writeJSON(w, 400, map[string]any{"success": false, "message": err.Error()})
		return
	}
	path, ok := body["model_path"].(string)
	if !ok || path == "" {
		writeJSON(w, 400, map[string]any{"success": false, "message": "model_path is required"})
		return
	}
	if v, ok := body["flush_cache"]; ok && v != nil {
		if _, isBool := v.(bool); !isBool {
			writeJSON(w, 400, map[string]any{"success": false, "message": "flush_cache must be a boolean"})
			return
		}
	}
	if v, ok := body["target_modules"]; ok && v != nil {
		if _, isList := v.([]any); !isList {
			writeJSON(w, 400, map[string]any{"success": false, "message": "target_modules must be a list or null"})
			return
		}
	}
	s.mu.Lock()
	faults, sleeping := s.faults, s.sleeping
	s.mu.Unlock()
	if sleeping {
		writeJSON(w, 400, map[string]any{"success": false, "message": "cannot update weights while memory is released"})
		return
	}
	if faults.UpdateHang {
		<-r.Context().Done()
		return
	}
	// The update waits behind in-flight generations and blocks the queue
	// while it loads, as in sglang-diffusion.
	j := &job{kind: "update", cost: time.Duration(float64(s.cfg.UpdateTime) * s.cfg.TimeScale)}
	j.run = func() {
		if faults.UpdateFail {
			return
		}
		s.mu.Lock()
		s.modelPath = path
		s.updates++
		s.mu.Unlock()
	}
	s.gpu.submit(j)
	<-j.done
	if faults.UpdateFail {
		writeJSON(w, 400, map[string]any{"success": false, "message": "simulated failure loading weights from " + path})
		return
	}
	writeJSON(w, 200, map[string]any{"success": true, "message": "Updated model weights from disk: " + path, "worker_id": s.cfg.WorkerID})
}

func (s *Server) handleSleep(sleep bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.sleeping = sleep
		s.mu.Unlock()
		msg := "memory resumed"
		if sleep {
			msg = "memory released"
		}
		writeJSON(w, 200, map[string]any{"success": true, "message": msg, "worker_id": s.cfg.WorkerID})
	}
}

func (s *Server) handleChecksum(w http.ResponseWriter, _ *http.Request) {
	sum := sha256.Sum256([]byte(s.currentModel()))
	writeJSON(w, 200, map[string]any{"success": true, "checksum": hex.EncodeToString(sum[:]), "worker_id": s.cfg.WorkerID})
}

func (s *Server) handleSetLora(w http.ResponseWriter, r *http.Request) {
	body, err := decodeJSONObject(r)
	if err != nil {
		writeJSON(w, 400, map[string]any{"success": false, "message": err.Error()})
		return
	}
	name, _ := body["lora_nickname"].(string)
	path, _ := body["lora_path"].(string)
	if name == "" {
		writeJSON(w, 400, map[string]any{"success": false, "message": "lora_nickname is required"})
		return
	}
	s.mu.Lock()
	s.loras[name] = path
	s.mu.Unlock()
	writeJSON(w, 200, map[string]any{"success": true, "message": "LoRA " + name + " set"})
}

func (s *Server) handleMergeLora(merge bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		s.merged = merge
		s.mu.Unlock()
		writeJSON(w, 200, map[string]any{"success": true, "merged": merge})
	}
}

func (s *Server) handleListLoras(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	out := map[string]any{"loras": s.loras, "merged": s.merged}
	s.mu.Unlock()
	writeJSON(w, 200, out)
}

// Test hooks.

// Stats is what GET /stats answers.
type Stats struct {
	WorkerID      string         `json:"worker_id"`
	ModelPath     string         `json:"model_path"`
	Served        map[string]int `json:"served"`
	ServedTotal   int            `json:"served_total"`
	Failed        int            `json:"failed"`
	Hung          int            `json:"hung"`
	Resets        int            `json:"resets"`
	WeightUpdates int            `json:"weight_updates"`
	Sleeping      bool           `json:"sleeping"`
	// Traceparents are the W3C trace contexts of the latest requests that
	// came with one (at most maxTraces, oldest first).
	Traceparents []string `json:"traceparents"`
	gpuStats
}

// maxTraces bounds the traceparents a worker keeps.
const maxTraces = 64

func (s *Server) noteTrace(tp string) {
	if len(tp) > 128 {
		return // not a traceparent
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.traces) >= maxTraces {
		s.traces = s.traces[1:]
	}
	s.traces = append(s.traces, tp)
}

func (s *Server) handleStats(w http.ResponseWriter, _ *http.Request) {
	g := s.gpu.stats()
	s.mu.Lock()
	st := Stats{WorkerID: s.cfg.WorkerID, ModelPath: s.modelPath, Served: map[string]int{}, Failed: s.failed,
		Hung: s.hung, Resets: s.resets, WeightUpdates: s.updates, Sleeping: s.sleeping, gpuStats: g,
		Traceparents: append([]string{}, s.traces...)}
	for k, v := range s.served {
		st.Served[k] = v
		st.ServedTotal += v
	}
	s.mu.Unlock()
	writeJSON(w, 200, st)
}

func (s *Server) handleGetFaults(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	f := s.faults
	s.mu.Unlock()
	writeJSON(w, 200, f)
}

func (s *Server) handleSetFaults(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	f := s.faults
	s.mu.Unlock()
	if err := decodeStrict(r, &f); err != nil {
		writeJSON(w, 400, map[string]any{"error": err.Error()})
		return
	}
	rate := func(r float64) bool { return r >= 0 && r <= 1 }
	if !rate(f.FailRate) || !rate(f.HangRate) || !rate(f.ResetRate) || f.StreamChunkBytes < 0 || f.Slowdown < 0 || f.Slowdown > 1000 {
		writeJSON(w, 400, map[string]any{"error": "fail_rate, hang_rate and reset_rate must be in [0, 1], stream_chunk_bytes not negative, slowdown in [0, 1000]"})
		return
	}
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
	writeJSON(w, 200, f)
}

func decodeStrict(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %w", err)
	}
	return nil
}

// handleMetrics serves the scheduler gauges sglang-diffusion serves with
// --enable-metrics, under the same names, in Prometheus' text format.
func (s *Server) handleMetrics(w http.ResponseWriter, _ *http.Request) {
	queued, running := s.gpu.generations()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	fmt.Fprintf(w, "# HELP sglang:diffusion_num_queue_reqs Number of requests in the diffusion scheduler waiting queue.\n"+
		"# TYPE sglang:diffusion_num_queue_reqs gauge\nsglang:diffusion_num_queue_reqs %d.0\n"+
		"# HELP sglang:diffusion_num_running_reqs Number of currently running diffusion requests.\n"+
		"# TYPE sglang:diffusion_num_running_reqs gauge\nsglang:diffusion_num_running_reqs %d.0\n", queued, running)
}
