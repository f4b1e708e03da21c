package envoyadmin

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParseClusters(t *testing.T) {
	body := `{"cluster_statuses":[{"name":"workers","host_statuses":[
	  {"address":{"socket_address":{"address":"127.0.0.1","port_value":30001}},"hostname":"127.0.0.1:30001",
	   "stats":[{"name":"rq_active","type":"GAUGE","value":"3"},{"name":"rq_total","value":"10"},{"name":"rq_error","value":"1"}],
	   "health_status":{"eds_health_status":"HEALTHY","failed_outlier_check":true}},
	  {"address":{"socket_address":{"address":"127.0.0.1","port_value":30002}},"hostname":"127.0.0.1:30002",
	   "health_status":{"eds_health_status":"DRAINING","failed_active_health_check":true}}]}],"unknown_field":1}`
	hosts, err := ParseClusters([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 {
		t.Fatalf("%d hosts", len(hosts))
	}
	h := hosts[0]
	if h.Cluster != "workers" || h.Address != "127.0.0.1:30001" || h.RqActive != 3 || h.RqTotal != 10 || h.RqError != 1 || !h.FailedOutlier || h.EDSHealth != "HEALTHY" {
		t.Fatalf("host 0 = %+v", h)
	}
	if !hosts[1].FailedActiveHC || hosts[1].EDSHealth != "DRAINING" || hosts[1].RqActive != 0 {
		t.Fatalf("host 1 = %+v", hosts[1])
	}
	if _, err := ParseClusters([]byte("{not json")); err == nil {
		t.Fatal("accepted garbage")
	}
}

func TestEndpointStats(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := `^cluster\.workers\.endpoint\.127\.0\.0\.1_30001\.(healthy|rq_active)$`
		if r.URL.Path != "/stats" || r.URL.Query().Get("filter") != want {
			t.Errorf("query = %s %q", r.URL.Path, r.URL.Query().Get("filter"))
		}
		fmt.Fprint(w, "cluster.workers.endpoint.127.0.0.1_30001.rq_active: 3\ncluster.workers.endpoint.127.0.0.1_30001.healthy: 1\n")
	}))
	defer srv.Close()
	healthy, active, found, err := NewAdminClient().EndpointStats(context.Background(), strings.TrimPrefix(srv.URL, "http://"), "workers", "127.0.0.1:30001")
	if err != nil || !healthy || active != 3 || !found {
		t.Fatalf("EndpointStats = %v %d %v %v", healthy, active, found, err)
	}
}

// TestStats: several stats in one call, the names quoted in one filter; a
// stat Envoy does not have is absent, and Stat says so.
func TestStats(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := `^(listener_manager\.lds\.update_rejected|cluster\.xds_cluster\.ssl\.connection_error|no\.such)$`
		if got := r.URL.Query().Get("filter"); got != want {
			http.Error(w, "filter "+got, http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, "listener_manager.lds.update_rejected: 1\ncluster.xds_cluster.ssl.connection_error: 3\n")
	}))
	defer srv.Close()
	ac := NewAdminClient()
	admin := strings.TrimPrefix(srv.URL, "http://")
	got, err := ac.Stats(context.Background(), admin, "listener_manager.lds.update_rejected", "cluster.xds_cluster.ssl.connection_error", "no.such")
	if err != nil || len(got) != 2 || got["listener_manager.lds.update_rejected"] != 1 || got["cluster.xds_cluster.ssl.connection_error"] != 3 {
		t.Fatalf("Stats = %v, %v", got, err)
	}
}
