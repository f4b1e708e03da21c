package bench

import (
	"fmt"
	"image/color"
	"path/filepath"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plots draws, for the largest fleet in the grid, throughput and p99
// latency against concurrency per policy, and the requests each worker got
// per policy at the highest concurrency.
func Plots(rows []Row, dir string) error {
	if len(rows) == 0 {
		return nil
	}
	fleet, top := 0, 0
	for _, r := range rows {
		fleet, top = max(fleet, r.Workers), max(top, r.Concurrency)
	}
	byPolicy := map[string][]Row{}
	var policies []string
	for _, r := range rows {
		if r.Workers != fleet {
			continue
		}
		if _, ok := byPolicy[r.Policy]; !ok {
			policies = append(policies, r.Policy)
		}
		byPolicy[r.Policy] = append(byPolicy[r.Policy], r)
	}
	sort.Strings(policies)
	lines := func(name, title, ylabel string, y func(Row) float64) error {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s, %d workers", title, fleet)
		p.X.Label.Text = "client concurrency"
		p.Y.Label.Text = ylabel
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{}
		p.Legend.Top = true
		for i, pol := range policies {
			rs := byPolicy[pol]
			sort.Slice(rs, func(a, b int) bool { return rs[a].Concurrency < rs[b].Concurrency })
			pts := make(plotter.XYs, len(rs))
			for j, r := range rs {
				pts[j].X, pts[j].Y = float64(r.Concurrency), y(r)
			}
			l, s, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			l.Color, s.Color = plotutil.Color(i), plotutil.Color(i)
			s.Shape = plotutil.Shape(i)
			p.Add(l, s)
			p.Legend.Add(pol, l, s)
		}
		return p.Save(7*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, name))
	}
	if err := lines("throughput.png", "Throughput", "requests/s", func(r Row) float64 { return r.ThroughputQPS }); err != nil {
		return err
	}
	if err := lines("p99.png", "p99 latency", "seconds", func(r Row) float64 { return r.LatencyP99 }); err != nil {
		return err
	}

	p := plot.New()
	p.Title.Text = fmt.Sprintf("Requests per worker, %d workers, concurrency %d", fleet, top)
	p.Y.Label.Text = "requests"
	p.Legend.Top = true
	w := vg.Points(float64(40) / float64(max(len(policies), 1)))
	var names []string
	for i, pol := range policies {
		var counts map[string]int
		for _, r := range byPolicy[pol] {
			if r.Concurrency == top {
				counts = r.PerWorker
			}
		}
		if names == nil {
			for k := range counts {
				names = append(names, k)
			}
			sort.Strings(names)
		}
		vals := make(plotter.Values, len(names))
		for j, n := range names {
			vals[j] = float64(counts[n])
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Color = color.Black
		bars.Offset = w * vg.Length(i-len(policies)/2)
		p.Add(bars)
		p.Legend.Add(pol, bars)
	}
	// Head room for the legend above the tallest bar.
	p.Y.Min, p.Y.Max = 0, p.Y.Max*1.4
	short := make([]string, len(names))
	for i := range names {
		short[i] = fmt.Sprint(i + 1)
	}
	p.NominalX(short...)
	p.X.Label.Text = "worker"
	return p.Save(7*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, "per-worker.png"))
}
