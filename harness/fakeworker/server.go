package fakeworker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/diffrouter/diffusion-router/wire"
)

// Server is one fake sglang-diffusion worker.
type Server struct {
	cfg Config
	gpu *gpu

	mu        sync.Mutex
	rng       *mrand.Rand
	modelPath string
	updates   int
	sleeping  bool
	faults    Faults
	loras     map[string]string
	merged    bool
	served    map[string]int
	// traces are the latest traceparents requests came with.
	traces   []string
	failed   int
	hung     int
	resets   int
	images   map[string][]byte
	imageIDs []string // insertion order, to bound memory
	videos   map[string]*video
	videoSeq int
}

// Faults can be changed while the worker runs (POST /_fake/faults).
type Faults struct {
	FailRate float64 `json:"fail_rate"`
	HangRate float64 `json:"hang_rate"`
	// ResetRate is the share of generations and video creates whose
	// connection the worker closes without answering, as when the server
	// process dies under a request (a proxy sees a reset and may retry).
	ResetRate  float64 `json:"reset_rate"`
	UpdateFail bool    `json:"update_fail"`
	UpdateHang bool    `json:"update_hang"`
	// StreamChunkBytes > 0 sends generation answers the way a streaming
	// server does: no Content-Length, chunked, a short head flushed first
	// and then pieces of this many bytes, each flushed.
	StreamChunkBytes int `json:"stream_chunk_bytes"`
	// Slowdown multiplies the service time of every generation that
	// starts from now on, queued ones included (a GPU throttling, a
	// co-tenant); 0 or 1 is full speed.
	Slowdown float64 `json:"slowdown,omitempty"`
}

type video struct {
	ID        string  `json:"id"`
	Object    string  `json:"object"`
	Status    string  `json:"status"`
	Progress  int     `json:"progress"`
	CreatedAt int64   `json:"created_at"`
	Model     string  `json:"model"`
	Prompt    string  `json:"prompt"`
	Size      string  `json:"size"`
	Seconds   string  `json:"seconds"`
	Quality   string  `json:"quality"`
	Error     *string `json:"error"`
	WorkerID  string  `json:"worker_id"`
	// Set once the job completed, as sglang-diffusion sets them;
	// bench_serving.py counts outputs from num_outputs and file_path.
	URL           *string  `json:"url"`
	CompletedAt   *int64   `json:"completed_at"`
	FilePath      *string  `json:"file_path"`
	NumOutputs    int      `json:"num_outputs"`
	InferenceTime *float64 `json:"inference_time_s"`
	PeakMemoryMB  *float64 `json:"peak_memory_mb"`

	cost    time.Duration
	started time.Time
	content []byte
	seq     int // creation order, for paging
}

const maxStoredImages = 4096

// New returns a worker; call Run to start its GPU.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fake worker config: %w", err)
	}
	seed := uint64(cfg.Seed)
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	s := &Server{
		cfg:       cfg,
		gpu:       newGPU(),
		rng:       mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		modelPath: cfg.ModelPath,
		faults:    Faults{FailRate: cfg.FailRate, HangRate: cfg.HangRate, StreamChunkBytes: cfg.StreamChunkBytes},
		loras:     map[string]string{},
		served:    map[string]int{},
		images:    map[string][]byte{},
		videos:    map[string]*video{},
	}
	s.gpu.slowdown = func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.faults.Slowdown
	}
	return s, nil
}

// Run processes the GPU queue until ctx ends.
func (s *Server) Run(ctx context.Context) { s.gpu.loop(ctx, s.cfg.Warmup) }

// Handler is the worker's HTTP API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 200, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/models", s.handleModels)
	mux.HandleFunc("GET /v1/models/{id...}", s.handleModel)
	mux.HandleFunc("GET /models", s.handleModelInfo)
	mux.HandleFunc("GET /v1/model_info", s.handleModelInfo)
	mux.HandleFunc("GET /model_info", s.handleModelInfo)
	mux.HandleFunc("GET /server_info", s.handleServerInfo)
	mux.HandleFunc("POST /v1/images/generations", s.handleImageGenerations)
	mux.HandleFunc("POST /v1/images/edits", s.handleImageEdits)
	mux.HandleFunc("GET /v1/images/{id}/content", s.handleImageContent)
	mux.HandleFunc("POST /v1/videos", s.handleVideoCreate)
	if !s.cfg.NoJobList {
		mux.HandleFunc("GET /v1/videos", s.handleVideoList)
	}
	mux.HandleFunc("GET /v1/videos/{id}", s.handleVideoGet)
	mux.HandleFunc("DELETE /v1/videos/{id}", s.handleVideoDelete)
	mux.HandleFunc("GET /v1/videos/{id}/content", s.handleVideoContent)
	mux.HandleFunc("POST /v1/diffusion/generate", s.handleNative)
	mux.HandleFunc("POST /update_weights_from_disk", s.handleUpdateWeights)
	mux.HandleFunc("POST /release_memory_occupation", s.handleSleep(true))
	mux.HandleFunc("POST /resume_memory_occupation", s.handleSleep(false))
	mux.HandleFunc("POST /get_weights_checksum", s.handleChecksum)
	mux.HandleFunc("POST /v1/set_lora", s.handleSetLora)
	mux.HandleFunc("POST /v1/merge_lora_weights", s.handleMergeLora(true))
	mux.HandleFunc("POST /v1/unmerge_lora_weights", s.handleMergeLora(false))
	mux.HandleFunc("GET /v1/list_loras", s.handleListLoras)
	mux.HandleFunc("GET /stats", s.handleStats)
	if !s.cfg.NoMetrics {
		mux.HandleFunc("GET /metrics", s.handleMetrics)
	}
	mux.HandleFunc("GET /_fake/faults", s.handleGetFaults)
	mux.HandleFunc("POST /_fake/faults", s.handleSetFaults)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// FastAPI tells a wrong method (405, Allow) from an unknown path.
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPut} {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			writeJSON(w, 405, map[string]any{"detail": "Method Not Allowed"})
			return
		}
		writeJSON(w, 404, map[string]any{"detail": "Not Found"})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every response names the worker and the weights it holds, so tests
		// can tell who served what through the router.
		w.Header().Set("X-Worker-Id", s.cfg.WorkerID)
		w.Header().Set("X-Model-Path", s.currentModel())
		// Echo the router's request tags, so tests can see what reached
		// the worker.
		for _, h := range []string{wire.HeaderTask, wire.HeaderModel, wire.HeaderCost, wire.HeaderRequestID, wire.HeaderQueueMs} {
			if v := r.Header.Get(h); v != "" {
				w.Header().Set("X-Seen-"+strings.TrimPrefix(http.CanonicalHeaderKey(h), "X-"), v)
			}
		}
		// A traced request's W3C trace context, as a worker's own tracer
		// would continue it: kept for GET /stats.
		if tp := r.Header.Get("traceparent"); tp != "" {
			s.noteTrace(tp)
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) currentModel() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.modelPath
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// validationError answers like FastAPI does for a request it cannot accept.
func validationError(w http.ResponseWriter, msg string) {
	writeJSON(w, 422, map[string]any{"detail": []map[string]any{{"type": "value_error", "msg": msg}}})
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func (s *Server) handleModels(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, 200, map[string]any{"object": "list", "data": s.modelEntries()})
}

func (s *Server) modelEntries() []map[string]any {
	data := []map[string]any{}
	first := s.currentModel()
	if s.cfg.ServedName != "" {
		first = s.cfg.ServedName
	}
	for _, id := range append([]string{first}, s.cfg.ExtraModelIDs...) {
		data = append(data, map[string]any{
			"id": id, "object": "model", "created": time.Now().Unix(), "owned_by": "sglang",
			"root": s.currentModel(), "task_type": s.cfg.TaskType,
		})
	}
	return data
}

// handleModel is GET /v1/models/{id}, the OpenAI SDK's models.retrieve.
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	for _, m := range s.modelEntries() {
		if m["id"] == r.PathValue("id") {
			writeJSON(w, 200, m)
			return
		}
	}
	writeJSON(w, 404, map[string]any{"detail": "Model not found"})
}

func (s *Server) handleModelInfo(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, 200, map[string]any{
		"model_path": s.currentModel(), "task_type": s.cfg.TaskType, "pipeline_name": "fake_pipeline",
		"num_gpus": 1, "dit_precision": "bf16", "vae_precision": "fp16", "worker_id": s.cfg.WorkerID,
	})
}

func (s *Server) handleServerInfo(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	info := map[string]any{"model_path": s.modelPath, "task_type": s.cfg.TaskType, "worker_id": s.cfg.WorkerID,
		"sleeping": s.sleeping, "weight_updates": s.updates, "version": "fake-worker"}
	s.mu.Unlock()
	writeJSON(w, 200, info)
}

// genParams are the fields of a generation request that shape its cost.
type genParams struct {
	Prompt         string
	N              int
	Steps          int
	Width, Height  int
	Frames         int
	ResponseFormat string
	Seed           int64
	// Model is filled in after generation: the weights that produced it.
	Model string
}

type paramError struct {
	status int
	msg    string
}

func (e *paramError) Error() string { return e.msg }

// parseGenParams validates the fields sglang-diffusion validates.
func (s *Server) parseGenParams(body map[string]any, video bool) (genParams, *paramError) {
	p := genParams{N: 1, Steps: s.cfg.DefaultSteps, Width: s.cfg.DefaultSize, Height: s.cfg.DefaultSize, Frames: 1, ResponseFormat: "url"}
	if video {
		p.Frames = s.cfg.VideoFrames
	}
	prompt, ok := body["prompt"].(string)
	if !ok || strings.TrimSpace(prompt) == "" {
		return p, &paramError{422, "prompt is required and must be a non-empty string"}
	}
	p.Prompt = prompt
	intField := func(name string, lo, hi int, dst *int) *paramError {
		v, present := body[name]
		if !present || v == nil {
			return nil
		}
		f, ok := v.(float64)
		if !ok || f != float64(int(f)) || int(f) < lo || int(f) > hi {
			return &paramError{422, fmt.Sprintf("%s must be an integer in [%d, %d]", name, lo, hi)}
		}
		*dst = int(f)
		return nil
	}
	for _, f := range []struct {
		name   string
		lo, hi int
		dst    *int
	}{
		{"n", 1, 10, &p.N}, {"num_inference_steps", 1, 1000, &p.Steps},
		{"width", 16, 8192, &p.Width}, {"height", 16, 8192, &p.Height}, {"num_frames", 1, 1024, &p.Frames},
	} {
		if err := intField(f.name, f.lo, f.hi, f.dst); err != nil {
			return p, err
		}
	}
	if v, ok := body["size"]; ok && v != nil {
		size, ok := v.(string)
		w, h, found := strings.Cut(strings.ToLower(size), "x")
		wi, err1 := strconv.Atoi(w)
		hi, err2 := strconv.Atoi(h)
		if !ok || !found || err1 != nil || err2 != nil || wi < 16 || hi < 16 || wi > 8192 || hi > 8192 {
			return p, &paramError{422, fmt.Sprintf("size must look like 1024x1024, got %v", v)}
		}
		p.Width, p.Height = wi, hi
	}
	if v, ok := body["response_format"]; ok && v != nil {
		rf, _ := v.(string)
		if rf != "url" && rf != "b64_json" {
			return p, &paramError{400, fmt.Sprintf("response_format must be url or b64_json, got %v", v)}
		}
		p.ResponseFormat = rf
	}
	if v, ok := body["guidance_scale"]; ok && v != nil {
		if _, ok := v.(float64); !ok {
			return p, &paramError{422, "guidance_scale must be a number"}
		}
	}
	if v, ok := body["seed"]; ok && v != nil {
		f, ok := v.(float64)
		if !ok {
			return p, &paramError{422, "seed must be an integer"}
		}
		p.Seed = int64(f)
	}
	return p, nil
}

// cost draws the jittered service time of a request.
func (s *Server) cost(p genParams) time.Duration {
	base := s.cfg.ServiceTime(p.Steps, p.Width, p.Height, p.Frames, p.N)
	s.mu.Lock()
	j := 1 + s.cfg.Jitter*(2*s.rng.Float64()-1)
	s.mu.Unlock()
	return time.Duration(float64(base) * j)
}

// outcome decides, before the work runs, whether a request fails or hangs.
func (s *Server) outcome() (fail, hang bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults.HangRate > 0 && s.rng.Float64() < s.faults.HangRate {
		return false, true
	}
	return s.faults.FailRate > 0 && s.rng.Float64() < s.faults.FailRate, false
}

// admitGeneration rejects work the worker cannot take right now, and
// closes the connection of a request the reset fault drew.
func (s *Server) admitGeneration(w http.ResponseWriter) bool {
	s.mu.Lock()
	sleeping := s.sleeping
	reset := !sleeping && s.faults.ResetRate > 0 && s.rng.Float64() < s.faults.ResetRate
	if reset {
		s.resets++
	}
	s.mu.Unlock()
	if reset {
		// net/http's way to drop a connection without an answer.
		panic(http.ErrAbortHandler)
	}
	if sleeping {
		writeJSON(w, 503, map[string]any{"error": "worker memory is released (sleeping); call /resume_memory_occupation first"})
		return false
	}
	return true
}

// runGeneration queues the work, waits for the GPU and accounts for it.
// It returns false when the response was already written (hang or failure).
func (s *Server) runGeneration(w http.ResponseWriter, r *http.Request, kind string, p genParams) (time.Duration, string, bool) {
	fail, hang := s.outcome()
	if hang {
		s.mu.Lock()
		s.hung++
		s.mu.Unlock()
		<-r.Context().Done() // accept and never answer
		return 0, "", false
	}
	j := &job{kind: kind, cost: s.cost(p), client: r.Context()}
	var model string
	// The weights that produced the sample are those loaded when the GPU
	// finished it, which an update queued behind it cannot change.
	j.run = func() {
		s.mu.Lock()
		model = s.modelPath
		s.mu.Unlock()
	}
	s.gpu.submit(j)
	<-j.done
	w.Header().Set("X-Model-Path", model)
	s.mu.Lock()
	if fail {
		s.failed++
	} else {
		s.served[kind]++
	}
	s.mu.Unlock()
	if fail {
		writeJSON(w, 500, map[string]any{"error": "simulated generation failure", "worker_id": s.cfg.WorkerID})
		return 0, "", false
	}
	return j.cost, model, true
}

// generate validates a generation request, queues it and waits for the GPU.
// It writes the error response itself and returns ok=false when there is
// nothing left to answer.
func (s *Server) generate(w http.ResponseWriter, r *http.Request, kind string, body map[string]any, video bool) (genParams, time.Duration, bool) {
	p, perr := s.parseGenParams(body, video)
	if perr != nil {
		if perr.status == 400 {
			writeJSON(w, 400, map[string]any{"error": perr.msg})
		} else {
			validationError(w, perr.msg)
		}
		return p, 0, false
	}
	if !s.admitGeneration(w) {
		return p, 0, false
	}
	spent, model, ok := s.runGeneration(w, r, kind, p)
	p.Model = model
	return p, spent, ok
}

// numericFields turns form values (strings) into the numbers a JSON body
// would carry.
func numericFields(body map[string]any, keys ...string) error {
	for _, k := range keys {
		if v, ok := body[k].(string); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return fmt.Errorf("%s must be a number", k)
			}
			body[k] = f
		}
	}
	return nil
}

func decodeJSONObject(r *http.Request) (map[string]any, error) {
	var body map[string]any
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<20))
	if err := dec.Decode(&body); err != nil {
		return nil, fmt.Errorf("body is not a JSON object: %v", err)
	}
	if body == nil {
		return nil, fmt.Errorf("body is not a JSON object")
	}
	return body, nil
}

func (s *Server) handleImageGenerations(w http.ResponseWriter, r *http.Request) {
	body, err := decodeJSONObject(r)
	if err != nil {
		validationError(w, err.Error())
		return
	}
	p, spent, ok := s.generate(w, r, "image", body, false)
	if !ok {
		return
	}
	s.writeAnswer(w, s.imageResponse(p, spent, nil))
}

// writeAnswer sends a generation's 200 answer, streamed in chunks when the
// stream_chunk_bytes fault asks for it.
func (s *Server) writeAnswer(w http.ResponseWriter, v any) {
	s.mu.Lock()
	chunk := s.faults.StreamChunkBytes
	s.mu.Unlock()
	fl, ok := w.(http.Flusher)
	if chunk <= 0 || !ok {
		writeJSON(w, 200, v)
		return
	}
	body, err := json.Marshal(v)
	if err != nil {
		writeJSON(w, 500, map[string]any{"error": err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	head := min(16, len(body))
	_, _ = w.Write(body[:head])
	fl.Flush()
	for rest := body[head:]; len(rest) > 0; {
		n := min(chunk, len(rest))
		if _, err := w.Write(rest[:n]); err != nil {
			return
		}
		fl.Flush()
		rest = rest[n:]
	}
}

// imageResponse renders the OpenAI-style images answer with real PNGs.
func (s *Server) imageResponse(p genParams, spent time.Duration, extra map[string]any) map[string]any {
	id := newID("img_")
	data := make([]map[string]any, 0, p.N)
	for i := range p.N {
		pic := tinyPNG(p.Seed + int64(i))
		item := map[string]any{"revised_prompt": p.Prompt, "index": i}
		// Like sglang, the images of one request share its id and are told
		// apart by ?variant=N.
		url, file := "/v1/images/"+id+"/content", "/tmp/sglang-fake/"+id+".png"
		if p.N > 1 {
			url += "?variant=" + strconv.Itoa(i)
			file = fmt.Sprintf("/tmp/sglang-fake/%s_%d.png", id, i)
		}
		if p.ResponseFormat == "b64_json" {
			item["b64_json"] = base64.StdEncoding.EncodeToString(pic)
		} else {
			item["url"] = url
		}
		item["file_path"] = file
		s.storeImage(imageKey(id, i), pic)
		data = append(data, item)
	}
	out := map[string]any{
		"id": id, "created": time.Now().Unix(), "model": p.Model, "data": data,
		"inference_time_s": spent.Seconds(), "peak_memory_mb": 20480.0, "worker_id": s.cfg.WorkerID,
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

func (s *Server) storeImage(id string, pic []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.images[id] = pic
	s.imageIDs = append(s.imageIDs, id)
	if len(s.imageIDs) > maxStoredImages {
		delete(s.images, s.imageIDs[0])
		s.imageIDs = s.imageIDs[1:]
	}
}

// tinyPNG draws a 16x16 gradient coloured by the seed: a valid PNG that
// image decoders accept, small enough for thousands of test requests.
func tinyPNG(seed int64) []byte {
	img := image.NewRGBA(image.Rect(0, 0, 16, 16))
	r, g := uint8(seed*37), uint8(seed*91)
	for y := range 16 {
		for x := range 16 {
			img.Set(x, y, color.RGBA{R: r + uint8(x*8), G: g + uint8(y*8), B: 128, A: 255})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}

func imageKey(id string, variant int) string { return id + "#" + strconv.Itoa(variant) }

func (s *Server) handleImageContent(w http.ResponseWriter, r *http.Request) {
	variant := 0
	if v := r.URL.Query().Get("variant"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			validationError(w, "variant must be a non-negative integer")
			return
		}
		variant = n
	}
	s.mu.Lock()
	pic, ok := s.images[imageKey(r.PathValue("id"), variant)]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, 404, map[string]any{"error": "image not found"})
		return
	}
	w.Header().Set("Content-Type", "image/png")
	_, _ = w.Write(pic)
}

// handleImageEdits streams a multipart upload: files are hashed as they
// arrive, never held whole, like a server that must take megabytes.
func (s *Server) handleImageEdits(w http.ResponseWriter, r *http.Request) {
	mr, err := r.MultipartReader()
	if err != nil {
		validationError(w, "body must be multipart/form-data: "+err.Error())
		return
	}
	fields := map[string]any{}
	h := sha256.New()
	var inputBytes int64
	files := 0
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			validationError(w, "malformed multipart body: "+err.Error())
			return
		}
		name := part.FormName()
		if part.FileName() != "" || name == "image" || name == "image[]" || name == "mask" {
			n, err := io.Copy(h, part)
			if err != nil {
				validationError(w, "reading upload: "+err.Error())
				return
			}
			inputBytes += n
			if name != "mask" {
				files++
			}
			continue
		}
		v, err := io.ReadAll(io.LimitReader(part, 1<<20))
		if err != nil {
			validationError(w, "reading field: "+err.Error())
			return
		}
		fields[name] = string(v)
	}
	if files == 0 && fields["url"] == nil {
		validationError(w, "an image file (image or image[]) or url is required")
		return
	}
	if err := numericFields(fields, "n", "num_inference_steps", "seed", "guidance_scale", "width", "height"); err != nil {
		validationError(w, err.Error())
		return
	}
	p, spent, ok := s.generate(w, r, "edit", fields, false)
	if !ok {
		return
	}
	s.writeAnswer(w, s.imageResponse(p, spent, map[string]any{
		"input_bytes": inputBytes, "input_files": files, "input_sha256": hex.EncodeToString(h.Sum(nil)),
	}))
}

func (s *Server) handleNative(w http.ResponseWriter, r *http.Request) {
	body, err := decodeJSONObject(r)
	if err != nil {
		validationError(w, err.Error())
		return
	}
	p, spent, ok := s.generate(w, r, "native", body, s.cfg.Video())
	if !ok {
		return
	}
	writeJSON(w, 200, map[string]any{
		"id": newID("gen_"), "model": p.Model, "worker_id": s.cfg.WorkerID,
		"output": []string{base64.StdEncoding.EncodeToString(tinyPNG(p.Seed))}, "inference_time_s": spent.Seconds(),
	})
}
