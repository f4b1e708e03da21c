package heldjobs

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"strconv"
	"strings"

	"github.com/diffrouter/diffusion-router/wire"
)

// Object is a video job as a worker answers for one it has queued
// (sglang-diffusion's fields): a held job's answers look the same, so a
// client cannot tell a job the router holds from one a worker holds.
type Object struct {
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
	Error     *Error  `json:"error"`
	URL       *string `json:"url"`
	// CompletedAt and the rest stay null until a worker completes it.
	CompletedAt *int64  `json:"completed_at"`
	FilePath    *string `json:"file_path"`
	NumOutputs  int     `json:"num_outputs"`
}

// Error is a failed job's reason, as OpenAI's videos API gives it.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// maxFieldBytes bounds a multipart text field read for the job object.
const maxFieldBytes = 64 << 10

// describe reads what a queued answer shows of a create body: its prompt,
// model, size and seconds, from JSON or multipart/form-data (an input
// image is skipped, not read into memory). A body that is neither is
// refused: a worker would refuse it too, and a held job must be one a
// worker can run.
func describe(contentType string, body io.Reader, d wire.Defaults) (Object, error) {
	fields := map[string]string{}
	mt, params, _ := mime.ParseMediaType(contentType)
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return Object{}, fmt.Errorf("malformed multipart body: %w", err)
			}
			if p.FileName() == "" && p.FormName() != "" {
				b, err := io.ReadAll(io.LimitReader(p, maxFieldBytes))
				if err != nil {
					return Object{}, fmt.Errorf("malformed multipart body: %w", err)
				}
				fields[p.FormName()] = string(b)
			}
			_ = p.Close()
		}
	default:
		var m map[string]any
		if err := json.NewDecoder(body).Decode(&m); err != nil {
			return Object{}, fmt.Errorf("the body must be a JSON object or multipart/form-data: %w", err)
		}
		for k, v := range m {
			switch v := v.(type) {
			case string:
				fields[k] = v
			case float64:
				fields[k] = strconv.FormatFloat(v, 'f', -1, 64)
			}
		}
	}
	if strings.TrimSpace(fields["prompt"]) == "" {
		return Object{}, fmt.Errorf("\"prompt\" is required")
	}
	o := Object{Object: "video", Status: "queued", Model: fields["model"], Prompt: fields["prompt"], Quality: "standard",
		Size: fields["size"], Seconds: fields["seconds"]}
	if o.Size == "" {
		w, h := d.Width, d.Height
		if n, err := strconv.Atoi(fields["width"]); err == nil && n > 0 {
			w = n
		}
		if n, err := strconv.Atoi(fields["height"]); err == nil && n > 0 {
			h = n
		}
		o.Size = fmt.Sprintf("%dx%d", w, h)
	}
	if o.Seconds == "" {
		frames := d.VideoFrames
		if n, err := strconv.Atoi(fields["num_frames"]); err == nil && n > 0 {
			frames = n
		}
		o.Seconds = strconv.FormatFloat(float64(frames)/16, 'f', 2, 64)
	}
	return o, nil
}
