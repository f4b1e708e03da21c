// Package fakeworker is a stand-in for an sglang-diffusion server: the same
// routes, fields and status codes, and the same scheduling (one generation at
// a time from a FIFO queue, service time growing with steps, pixels and
// frames), with time scaled down so tests run in milliseconds and faults
// (failures, hangs, slow starts) injectable by flag or at run time.
package fakeworker

import (
	"fmt"
	"strings"
	"time"
)

// Config shapes one fake worker.
type Config struct {
	WorkerID  string
	ModelPath string
	// ServedName, when set, is the id /v1/models lists instead of the
	// model path (sglang's served model name); the path stays its root.
	ServedName string
	// ExtraModelIDs are more ids /v1/models lists beside the model path
	// (a server that serves several names).
	ExtraModelIDs []string
	// TaskType is what /v1/models reports: T2I, I2I, TI2I (images) or T2V,
	// I2V, TI2V (videos).
	TaskType string

	// Service model, in real (unscaled) H100 terms. One request costs
	// Base + steps x PerStep x (W x H / 1024^2) x frames, then x (1 +/- Jitter),
	// then x TimeScale.
	Base         time.Duration
	PerStep      time.Duration
	DefaultSteps int
	DefaultSize  int // default width and height
	VideoFrames  int // default frames of a video request
	Jitter       float64
	TimeScale    float64
	// UpdateTime is how long update_weights_from_disk blocks the queue
	// (also scaled).
	UpdateTime time.Duration

	// Faults.
	FailRate float64 // fraction of generations that answer 500
	HangRate float64 // fraction of generations that never answer
	// StreamChunkBytes > 0 streams generation answers chunked (see Faults).
	StreamChunkBytes int
	StartupDelay     time.Duration // before the port opens
	Warmup           time.Duration // port open, /health 200, generation waits
	// NoMetrics turns /metrics off, as sglang-diffusion without
	// --enable-metrics (404).
	NoMetrics bool
	// NoJobList turns GET /v1/videos (the job list) off, as a server
	// that serves jobs one by one only (405: the path takes POST).
	NoJobList bool
	Seed      int64
}

// DefaultConfig models FLUX.1-dev on an H100 at full speed.
func DefaultConfig() Config {
	return Config{
		WorkerID:     "",
		ModelPath:    "black-forest-labs/FLUX.1-dev",
		TaskType:     "T2I",
		Base:         300 * time.Millisecond,
		PerStep:      139 * time.Millisecond,
		DefaultSteps: 50,
		DefaultSize:  1024,
		VideoFrames:  16,
		Jitter:       0.05,
		TimeScale:    1,
		UpdateTime:   20 * time.Second,
	}
}

// Validate rejects settings the service model cannot use.
func (c Config) Validate() error {
	switch {
	case c.ModelPath == "":
		return fmt.Errorf("model path is empty")
	case !knownTaskType(c.TaskType):
		return fmt.Errorf("task type %q is not one of T2I, I2I, TI2I, T2V, I2V, TI2V", c.TaskType)
	case c.Base < 0 || c.PerStep < 0 || c.UpdateTime < 0:
		return fmt.Errorf("durations must not be negative")
	case c.DefaultSteps <= 0 || c.DefaultSize <= 0 || c.VideoFrames <= 0:
		return fmt.Errorf("default steps, size and frames must be positive")
	case c.Jitter < 0 || c.Jitter >= 1:
		return fmt.Errorf("jitter must be in [0, 1)")
	case c.TimeScale < 0:
		return fmt.Errorf("time scale must not be negative")
	case c.FailRate < 0 || c.FailRate > 1 || c.HangRate < 0 || c.HangRate > 1:
		return fmt.Errorf("fail and hang rates must be in [0, 1]")
	case c.StreamChunkBytes < 0:
		return fmt.Errorf("stream chunk bytes must not be negative")
	}
	return nil
}

func knownTaskType(t string) bool {
	switch strings.ToUpper(t) {
	case "T2I", "I2I", "TI2I", "T2V", "I2V", "TI2V":
		return true
	}
	return false
}

// Video reports whether the configured task type generates videos.
func (c Config) Video() bool {
	switch strings.ToUpper(c.TaskType) {
	case "T2V", "I2V", "TI2V":
		return true
	}
	return false
}

// ServiceTime is the unjittered, scaled GPU time of one request.
func (c Config) ServiceTime(steps, width, height, frames, n int) time.Duration {
	pixels := float64(width*height) / (1024 * 1024)
	d := float64(c.Base) + float64(n*steps*frames)*float64(c.PerStep)*pixels
	return time.Duration(d * c.TimeScale)
}
