package wire

// The job book (package jobbook): the filters record the weight version of
// each video job they create, and look versions up when they sign a job
// list, so that a list hands out the same ids the creates did. Both paths
// are on the control plane's API port only, like PathFilterSync.
const (
	// PathJobRecord takes a JobRecord: signed ids that carry their
	// version (the signature is the proof).
	PathJobRecord = "/_router/jobs"
	// PathJobVersions answers a JobVersionsQuery with JobVersions.
	PathJobVersions = "/_router/job-versions"
	// MaxJobsPerCall bounds the ids of one record or query (a list page
	// holds at most 100).
	MaxJobsPerCall = 1000
)

// JobRecord is a batch of new jobs, as the client sees their ids.
type JobRecord struct {
	IDs []string `json:"ids"`
}

// JobVersionsQuery asks the versions of one worker's jobs, by the worker's
// own ids.
type JobVersionsQuery struct {
	Worker string   `json:"worker"`
	IDs    []string `json:"ids"`
}

// JobVersions answers a JobVersionsQuery; unknown jobs are left out.
type JobVersions struct {
	Versions map[string]string `json:"versions"`
}
