// Package grafana reads the Grafana dashboard shipped beside it
// (diffusion-router.json): which metrics its panels query, so tests can
// check each against what the router, Envoy and Prometheus really hold.
package grafana

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
)

var (
	metricName = regexp.MustCompile(`\b(?:diffusion_router|envoy)_[a-z0-9_]+\b`)
	// Label names, in selectors and in "by (...)", are not metrics.
	labelParts = regexp.MustCompile(`\{[^}]*\}|\bby \([^)]*\)`)
)

// PanelMetric is one metric one panel queries.
type PanelMetric struct {
	Panel, Metric string
}

// Metrics lists the metrics every panel of the dashboard board queries,
// in panel order.
func Metrics(board []byte) ([]PanelMetric, error) {
	var b struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(board, &b); err != nil {
		return nil, fmt.Errorf("read the dashboard: %w", err)
	}
	var out []PanelMetric
	for _, p := range b.Panels {
		for _, t := range p.Targets {
			for _, name := range metricName.FindAllString(labelParts.ReplaceAllString(t.Expr, ""), -1) {
				pm := PanelMetric{Panel: p.Title, Metric: name}
				if !slices.Contains(out, pm) {
					out = append(out, pm)
				}
			}
		}
	}
	return out, nil
}
