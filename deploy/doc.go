// Package deploy holds the container images (Dockerfiles here) and the test
// that keeps docker-compose.yaml, the Envoy bootstrap it mounts and the
// control plane's flags consistent with each other. There is no Docker
// engine in CI, so the compose file is checked by reading it with
// compose-go, not by running it.
package deploy
