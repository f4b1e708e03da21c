package wire

import "strings"

// Class is what a path is to the router.
type Class string

const (
	// ClassGeneration creates work on one worker, picked by load.
	ClassGeneration Class = "generation"
	// ClassJob reads or changes a job on the worker that holds it (the
	// signed job id names it).
	ClassJob Class = "job"
	// ClassFleetCall is relayed by the control plane to every worker, and
	// the answers aggregated.
	ClassFleetCall Class = "fleet-call"
	// ClassRegistry is answered by the control plane itself.
	ClassRegistry Class = "registry"
	// ClassWorker is anything else: passed to one worker.
	ClassWorker Class = "worker"
)

// FleetCallPaths are the fleet-wide calls (see fleet.Calls for what each
// does).
var FleetCallPaths = []string{
	"/update_weights_from_disk",
	"/release_memory_occupation",
	"/resume_memory_occupation",
	"/get_weights_checksum",
	"/v1/set_lora",
	"/v1/merge_lora_weights",
	"/v1/unmerge_lora_weights",
}

// registryOnly are the control plane's own paths besides the fleet calls.
var registryOnly = []string{
	"/add_worker",
	"/remove_worker",
	"/list_workers",
	"/workers",
	"/health",
	"/health_workers",
	"/v1/models",
	PathQueueStatus,
}

// RegistryPaths are answered by the control plane, on the front port as on
// its own: its own paths and the fleet-wide calls.
var RegistryPaths = append(append([]string(nil), registryOnly...), FleetCallPaths...)

// RegistryPrefixes are path prefixes the control plane answers: one worker
// (/workers/{id}) and one model of the merged list (/v1/models/{id}).
var RegistryPrefixes = []string{"/workers/", "/v1/models/"}

// Generation paths.
const (
	PathImages      = "/v1/images/generations"
	PathImageEdits  = "/v1/images/edits"
	PathVideos      = "/v1/videos"
	PathNative      = "/v1/diffusion/generate"
	PathNativeRoll  = "/rollout/generate"
	PathSeedImage   = "/generate"       // the seed (Miles) router's name; Envoy rewrites it to PathImages
	PathSeedVideo   = "/generate_video" // ... and this one to PathVideos, video workers only
	PathModelInfo   = "/v1/model_info"
	PathModelInfoV0 = "/model_info"
)

// JobPrefixes are the prefixes under which every path must carry a job id
// the router signed (but the creation paths PathImages and PathImageEdits).
var JobPrefixes = []string{"/v1/videos/", "/v1/images/"}

// ImagePaths are requests an image worker serves best: generations and
// edits, and the model description clients read before sending them.
var ImagePaths = []string{PathImages, PathImageEdits, PathModelInfo, PathModelInfoV0}

// ClassOf names a path's class (the query is ignored).
func ClassOf(path string) Class {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	switch path {
	case PathImages, PathImageEdits, PathVideos, PathNative, PathNativeRoll, PathSeedImage, PathSeedVideo:
		return ClassGeneration
	}
	for _, p := range FleetCallPaths {
		if path == p {
			return ClassFleetCall
		}
	}
	for _, p := range registryOnly {
		if path == p {
			return ClassRegistry
		}
	}
	for _, p := range RegistryPrefixes {
		if strings.HasPrefix(path, p) {
			return ClassRegistry
		}
	}
	if IsJobPath(path) {
		return ClassJob
	}
	return ClassWorker
}

// IsJobPath reports whether a path lies under a job prefix and is not a
// creation path: it must carry a signed job id.
func IsJobPath(path string) bool {
	if path == PathImages || path == PathImageEdits {
		return false
	}
	for _, p := range JobPrefixes {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// PinnedPrefixes are the prefixes of the requests the filter may pin to one
// worker (with HeaderTarget): job paths, and the video list when its query
// names a job.
var PinnedPrefixes = []string{PathVideos, "/v1/images/"}
