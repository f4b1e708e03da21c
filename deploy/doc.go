// Package deploy holds the container images (Dockerfiles here, built from
// official base images; offline/ lays out the same images from this
// machine's own binaries), the tests that keep docker-compose.yaml, the
// Envoy bootstrap it mounts, the control plane's flags and the two image
// layouts consistent, and, behind the "compose" build tag, the test that
// brings the compose file up for real (make compose-test).
package deploy
