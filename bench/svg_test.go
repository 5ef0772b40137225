package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// svgDoc is what the test reads back from a plot: every element's name,
// the polylines' points and every text.
type svgDoc struct {
	elements  []string
	polylines []string // points attributes
	texts     []string
	root      string
}

func parseSVG(t *testing.T, b []byte) svgDoc {
	t.Helper()
	var d svgDoc
	dec := xml.NewDecoder(bytes.NewReader(b))
	var stack []string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
		switch x := tok.(type) {
		case xml.StartElement:
			if d.root == "" {
				d.root = x.Name.Local
				if x.Name.Space != "http://www.w3.org/2000/svg" {
					t.Errorf("root namespace %q", x.Name.Space)
				}
			}
			stack = append(stack, x.Name.Local)
			d.elements = append(d.elements, x.Name.Local)
			if x.Name.Local == "polyline" {
				for _, a := range x.Attr {
					if a.Name.Local == "points" {
						d.polylines = append(d.polylines, a.Value)
					}
				}
			}
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 && stack[len(stack)-1] == "text" {
				d.texts = append(d.texts, string(x))
			}
		}
	}
	if len(stack) != 0 {
		t.Fatalf("unclosed elements %v", stack)
	}
	return d
}

func TestPlotSVG(t *testing.T) {
	pl := linePlot{
		Title:  "latency <against> load & more",
		XLabel: "offered load (events/s)",
		YLabel: "latency (ms, log scale)",
		LogY:   true,
		Series: []plotSeries{
			{Name: "durable p50", Color: "#1f5fbf", Points: []plotPoint{{250, 0.4, false}, {1000, 0.6, false}, {8000, 350, true}}},
			{Name: "durable p99", Color: "#1f5fbf", Dash: "7 4", Points: []plotPoint{{250, 2, false}, {1000, 3, false}, {8000, 900, true}}},
			{Name: "ceiling p50 \"quoted\"", Color: "#e07b00", Points: []plotPoint{{250, 0.1, false}, {12000, 0.3, false}}},
			{Name: "one point", Color: "black", Points: []plotPoint{{500, 0, false}}}, // 0 on a log axis: clamped, not NaN
		},
		Notes: []string{"a note <with> markup"},
	}
	b := pl.svg()
	d := parseSVG(t, b)
	if d.root != "svg" {
		t.Fatalf("root element %q", d.root)
	}
	if len(d.polylines) != len(pl.Series) {
		t.Fatalf("%d polylines for %d series", len(d.polylines), len(pl.Series))
	}
	for i, pts := range d.polylines {
		if n := len(strings.Fields(pts)); n != len(pl.Series[i].Points) {
			t.Errorf("polyline %d has %d points, want %d: %q", i, n, len(pl.Series[i].Points), pts)
		}
		if strings.Contains(pts, "NaN") || strings.Contains(pts, "Inf") {
			t.Errorf("polyline %d: %q", i, pts)
		}
	}
	var circles int
	for _, e := range d.elements {
		if e == "circle" {
			circles++
		}
	}
	// One marker per point, one per legend entry, one for "did not keep up".
	if want := 3 + 3 + 2 + 1 + len(pl.Series) + 1; circles != want {
		t.Errorf("%d circles, want %d", circles, want)
	}
	for _, want := range []string{pl.XLabel, pl.YLabel, pl.Title, "durable p50", "ceiling p50 \"quoted\"", "did not keep up", "a note <with> markup",
		"0.001", "0.01", "0.1", "1", "10", "100", "1,000", "0", "12,000"} {
		if !slices.Contains(d.texts, want) {
			t.Errorf("no text %q in %q", want, d.texts)
		}
	}

	// No points at all still gives a well-formed document with its labels.
	d = parseSVG(t, linePlot{Title: "empty", XLabel: "x", YLabel: "y", LogY: true}.svg())
	if len(d.polylines) != 0 || !slices.Contains(d.texts, "x") || !slices.Contains(d.texts, "y") {
		t.Fatalf("empty plot: %d polylines, texts %q", len(d.polylines), d.texts)
	}
}

func TestTicks(t *testing.T) {
	for _, c := range []struct {
		hi   float64
		want []float64
	}{
		{12000, []float64{0, 2000, 4000, 6000, 8000, 10000, 12000}},
		{10000, []float64{0, 2000, 4000, 6000, 8000, 10000}},
		{4000, []float64{0, 1000, 2000, 3000, 4000}},
		{7, []float64{0, 2, 4, 6, 8}},
		{0, []float64{0, 1}},
	} {
		if got := linearTicks(c.hi); !slices.Equal(got, c.want) {
			t.Errorf("linearTicks(%v) = %v, want %v", c.hi, got, c.want)
		}
	}
	if got, want := logTicks(0.1, 100), []float64{0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}; !slices.Equal(got, want) {
		t.Errorf("logTicks(0.1, 100) = %v, want %v", got, want)
	}
	if got, want := logTicks(0.01, 1e4), []float64{0.01, 0.1, 1, 10, 100, 1000, 1e4}; !slices.Equal(got, want) {
		t.Errorf("logTicks(0.01, 1e4) = %v, want %v", got, want)
	}
	for v, want := range map[float64]string{0: "0", 0.1: "0.1", 0.2: "0.2", 0.05: "0.05", 1: "1", 20: "20", 500: "500", 1000: "1,000", 12000: "12,000"} {
		if got := fmtTick(v); got != want {
			t.Errorf("fmtTick(%v) = %q, want %q", v, got, want)
		}
	}
}
