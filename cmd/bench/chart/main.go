// Command chart renders the cost-growth figures of go run ./cmd/bench
// -growth -json FILE as a PNG: events per second (top row) and CPU time
// per event (bottom row) against the number of subscriptions, one panel
// per payload size, one line per transport.
//
// It is a module of its own, so that the plotting library (gonum/plot)
// is not a dependency of go-eventbus and CI never builds it:
//
//	go run ./cmd/bench -only growth -json growth.json
//	go -C cmd/bench/chart run . -in ../../../growth.json -out ../../../docs/performance-growth.png
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"log"
	"os"
	"slices"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// report is the part of cmd/bench's JSON output the chart reads.
type report struct {
	Growth *struct {
		Rounds    int        `json:"rounds"`
		LoadStart [3]float64 `json:"load_start"`
		LoadEnd   [3]float64 `json:"load_end"`
		Cells     []cell     `json:"cells"`
	} `json:"growth"`
}

type cell struct {
	Transport     string    `json:"transport"`
	Subscriptions int       `json:"subscriptions"`
	Payload       int       `json:"payload_bytes"`
	Rates         []float64 `json:"events_per_s"`
	CPU           []float64 `json:"cpu_us_per_event"`
}

func main() {
	in := flag.String("in", "growth.json", "the JSON file cmd/bench -json wrote")
	out := flag.String("out", "performance-growth.png", "the PNG to write")
	flag.Parse()
	log.SetFlags(0)
	b, err := os.ReadFile(*in)
	if err != nil {
		log.Fatal(err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		log.Fatalf("%s: %v", *in, err)
	}
	if r.Growth == nil || len(r.Growth.Cells) == 0 {
		log.Fatalf("%s has no growth figures: run go run ./cmd/bench -only growth -json %s", *in, *in)
	}
	if err := render(r, *out); err != nil {
		log.Fatal(err)
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

var palette = []color.Color{
	color.RGBA{0x1f, 0x77, 0xb4, 0xff},
	color.RGBA{0xd6, 0x27, 0x28, 0xff},
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
	color.RGBA{0xff, 0x7f, 0x0e, 0xff},
	color.RGBA{0x94, 0x67, 0xbd, 0xff},
}

func render(r report, out string) error {
	g := r.Growth
	var transports []string
	var sizes []int
	for _, c := range g.Cells {
		if !slices.Contains(transports, c.Transport) {
			transports = append(transports, c.Transport)
		}
		if !slices.Contains(sizes, c.Payload) {
			sizes = append(sizes, c.Payload)
		}
	}
	sort.Ints(sizes)
	metrics := []struct {
		label string
		value func(cell) float64
	}{
		{"events/s", func(c cell) float64 { return median(c.Rates) }},
		{"µs CPU per event", func(c cell) float64 { return median(c.CPU) }},
	}
	plots := make([][]*plot.Plot, len(metrics))
	for row, m := range metrics {
		plots[row] = make([]*plot.Plot, len(sizes))
		for col, size := range sizes {
			p := plot.New()
			p.Title.Text = fmt.Sprintf("%s, %s payloads", m.label, sizeName(size))
			p.X.Label.Text = "subscriptions (each matching a tenth of the events)"
			p.Y.Label.Text = m.label
			p.X.Scale = plot.LogScale{}
			p.Y.Scale = plot.LogScale{}
			p.X.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 1, Label: "1"}, {Value: 10, Label: "10"}, {Value: 100, Label: "100"}})
			p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
			p.Add(plotter.NewGrid())
			for k, tr := range transports {
				var pts plotter.XYs
				for _, c := range g.Cells {
					if c.Transport == tr && c.Payload == size {
						if v := m.value(c); v > 0 {
							pts = append(pts, plotter.XY{X: float64(c.Subscriptions), Y: v})
						}
					}
				}
				if len(pts) == 0 {
					continue
				}
				sort.Slice(pts, func(i, j int) bool { return pts[i].X < pts[j].X })
				line, points, err := plotter.NewLinePoints(pts)
				if err != nil {
					return err
				}
				line.Color = palette[k%len(palette)]
				line.Width = vg.Points(1.5)
				points.Color = line.Color
				points.Shape = draw.CircleGlyph{}
				p.Add(line, points)
				if row == 0 && col == 0 {
					p.Legend.Add(tr, line, points)
				}
			}
			if row == 0 && col == 0 {
				p.Legend.Top = true
				p.Legend.Left = false
			}
			plots[row][col] = p
		}
	}
	const w, h = 15 * vg.Inch, 8 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	title := fmt.Sprintf("go-eventbus cost growth (%d round(s), medians; load average %.1f to %.1f)", g.Rounds, g.LoadStart[0], g.LoadEnd[0])
	dc.FillText(text.Style{Color: color.Black, Font: font.From(plot.DefaultFont, 14), Handler: plot.DefaultTextHandler, XAlign: draw.XCenter},
		vg.Point{X: w / 2, Y: h - 0.3*vg.Inch}, title)
	body := draw.Crop(dc, 0, 0, 0, -0.5*vg.Inch)
	tiles := draw.Tiles{Rows: len(metrics), Cols: len(sizes), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, tiles, body)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
