package main

// A small line-plot writer: SVG by hand, no dependency. Linear x axis from
// 0, linear or log y axis, one polyline and one marker per point for each
// series, a legend on the right.

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// plotPoint is one point; a Hollow one is drawn as an open marker.
type plotPoint struct {
	X, Y   float64
	Hollow bool
}

// plotSeries is one line.
type plotSeries struct {
	Name   string
	Color  string // any SVG colour
	Dash   string // stroke-dasharray; "" for a solid line
	Points []plotPoint
}

// linePlot is a whole figure.
type linePlot struct {
	Title, XLabel, YLabel string
	LogY                  bool
	Series                []plotSeries
	Notes                 []string // small lines under the plot
}

// Layout, in SVG user units.
const (
	plotW, plotH     = 900, 540
	plotLeft         = 80
	plotTop          = 50
	plotInnerW       = 620
	plotInnerH       = 400
	plotLegendX      = plotLeft + plotInnerW + 25
	plotFont         = "font-family=\"Helvetica, Arial, sans-serif\""
	plotMinPositiveY = 1e-3
)

// svg renders the plot as a standalone SVG document.
func (pl linePlot) svg() []byte {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	esc := html.EscapeString

	// Ranges.
	xmax := 0.0
	ymin, ymax := math.Inf(1), math.Inf(-1)
	hollow := false
	for _, s := range pl.Series {
		for _, pt := range s.Points {
			hollow = hollow || pt.Hollow
			xmax = max(xmax, pt.X)
			y := pt.Y
			if pl.LogY && y < plotMinPositiveY {
				y = plotMinPositiveY
			}
			ymin, ymax = min(ymin, y), max(ymax, y)
		}
	}
	if math.IsInf(ymin, 1) { // no points
		ymin, ymax, xmax = 0.1, 100, 1
	}
	xticks := linearTicks(xmax)
	xhi := xticks[len(xticks)-1]
	var yticks []float64
	var ylo, yhi float64
	if pl.LogY {
		ylo = math.Pow(10, math.Floor(math.Log10(ymin)))
		yhi = math.Pow(10, math.Ceil(math.Log10(ymax)))
		if yhi <= ylo {
			yhi = ylo * 10
		}
		yticks = logTicks(ylo, yhi)
	} else {
		yticks = linearTicks(ymax)
		ylo, yhi = 0, yticks[len(yticks)-1]
	}
	sx := func(x float64) float64 { return plotLeft + x/xhi*plotInnerW }
	sy := func(y float64) float64 {
		var f float64
		if pl.LogY {
			y = max(y, plotMinPositiveY)
			f = (math.Log10(y) - math.Log10(ylo)) / (math.Log10(yhi) - math.Log10(ylo))
		} else {
			f = (y - ylo) / (yhi - ylo)
		}
		return plotTop + plotInnerH - f*plotInnerH
	}

	height := max(plotH, plotTop+plotInnerH+66+16*len(pl.Notes))
	p("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
	p("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n", plotW, height, plotW, height)
	p("<title>%s</title>\n", esc(pl.Title))
	p("<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n", plotW, height)
	p("<text x=\"%d\" y=\"28\" %s font-size=\"16\" font-weight=\"bold\">%s</text>\n", plotLeft, plotFont, esc(pl.Title))

	// Grid and tick labels.
	p("<g class=\"grid\" stroke=\"#dddddd\" stroke-width=\"1\">\n")
	for _, t := range xticks {
		p("<line x1=\"%s\" y1=\"%d\" x2=\"%s\" y2=\"%d\"/>\n", f1(sx(t)), plotTop, f1(sx(t)), plotTop+plotInnerH)
	}
	for _, t := range yticks {
		p("<line x1=\"%d\" y1=\"%s\" x2=\"%d\" y2=\"%s\"/>\n", plotLeft, f1(sy(t)), plotLeft+plotInnerW, f1(sy(t)))
	}
	p("</g>\n")
	p("<g class=\"x-ticks\" %s font-size=\"12\" text-anchor=\"middle\" fill=\"#333333\">\n", plotFont)
	for _, t := range xticks {
		p("<text x=\"%s\" y=\"%d\">%s</text>\n", f1(sx(t)), plotTop+plotInnerH+18, esc(fmtTick(t)))
	}
	p("</g>\n")
	p("<g class=\"y-ticks\" %s font-size=\"12\" text-anchor=\"end\" fill=\"#333333\">\n", plotFont)
	for _, t := range yticks {
		p("<text x=\"%d\" y=\"%s\">%s</text>\n", plotLeft-8, f1(sy(t)+4), esc(fmtTick(t)))
	}
	p("</g>\n")
	p("<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333333\" stroke-width=\"1\"/>\n", plotLeft, plotTop, plotInnerW, plotInnerH)
	p("<text class=\"x-label\" x=\"%d\" y=\"%d\" %s font-size=\"13\" text-anchor=\"middle\">%s</text>\n",
		plotLeft+plotInnerW/2, plotTop+plotInnerH+42, plotFont, esc(pl.XLabel))
	p("<text class=\"y-label\" x=\"%d\" y=\"%d\" %s font-size=\"13\" text-anchor=\"middle\" transform=\"rotate(-90 %d %d)\">%s</text>\n",
		22, plotTop+plotInnerH/2, plotFont, 22, plotTop+plotInnerH/2, esc(pl.YLabel))

	// Series.
	for i, s := range pl.Series {
		dash := ""
		if s.Dash != "" {
			dash = fmt.Sprintf(" stroke-dasharray=\"%s\"", esc(s.Dash))
		}
		p("<g class=\"series\" id=\"series-%d\">\n<title>%s</title>\n", i, esc(s.Name))
		pts := make([]string, len(s.Points))
		for j, pt := range s.Points {
			pts[j] = f1(sx(pt.X)) + "," + f1(sy(pt.Y))
		}
		p("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"%s\"/>\n", esc(s.Color), dash, strings.Join(pts, " "))
		for _, pt := range s.Points {
			fill := esc(s.Color)
			if pt.Hollow {
				fill = "white"
			}
			p("<circle cx=\"%s\" cy=\"%s\" r=\"3.5\" fill=\"%s\" stroke=\"%s\" stroke-width=\"1.5\"><title>%s: %s at %s</title></circle>\n",
				f1(sx(pt.X)), f1(sy(pt.Y)), fill, esc(s.Color), esc(s.Name), esc(fmtTick(pt.Y)), esc(fmtTick(pt.X)))
		}
		p("</g>\n")
	}

	// Legend.
	p("<g class=\"legend\" %s font-size=\"12\">\n", plotFont)
	for i, s := range pl.Series {
		y := plotTop + 10 + i*22
		dash := ""
		if s.Dash != "" {
			dash = fmt.Sprintf(" stroke-dasharray=\"%s\"", esc(s.Dash))
		}
		p("<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", plotLegendX, y, plotLegendX+30, y, esc(s.Color), dash)
		p("<circle cx=\"%d\" cy=\"%d\" r=\"3.5\" fill=\"%s\"/>\n", plotLegendX+15, y, esc(s.Color))
		p("<text x=\"%d\" y=\"%d\">%s</text>\n", plotLegendX+38, y+4, esc(s.Name))
	}
	if hollow {
		y := plotTop + 10 + len(pl.Series)*22
		p("<circle cx=\"%d\" cy=\"%d\" r=\"3.5\" fill=\"white\" stroke=\"#333333\" stroke-width=\"1.5\"/>\n", plotLegendX+15, y)
		p("<text x=\"%d\" y=\"%d\">did not keep up</text>\n", plotLegendX+38, y+4)
	}
	p("</g>\n")

	// Notes.
	p("<g class=\"notes\" %s font-size=\"11\" fill=\"#555555\">\n", plotFont)
	for i, n := range pl.Notes {
		p("<text x=\"%d\" y=\"%d\">%s</text>\n", plotLeft, plotTop+plotInnerH+66+i*16, esc(n))
	}
	p("</g>\n</svg>\n")
	return []byte(w.String())
}

// f1 formats a coordinate with one decimal.
func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// linearTicks returns 0 and evenly spaced round ticks (1, 2 or 5 × 10^k
// apart) up to the first at or above hi, 4 to 10 of them.
func linearTicks(hi float64) []float64 {
	if hi <= 0 || math.IsNaN(hi) || math.IsInf(hi, 0) {
		return []float64{0, 1}
	}
	raw := hi / 6
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for i := 0; ; i++ {
		t := float64(i) * step
		out = append(out, t)
		if t >= hi*(1-1e-9) {
			return out
		}
	}
}

// logTicks returns the 1, 2, 5 × 10^k values from lo to hi (both powers of
// ten), or only the powers of ten when that would be more than 13 ticks.
func logTicks(lo, hi float64) []float64 {
	if lo <= 0 || hi <= lo {
		return []float64{lo, hi}
	}
	decades := int(math.Round(math.Log10(hi / lo)))
	mults := []float64{1, 2, 5}
	if 3*decades+1 > 13 {
		mults = []float64{1}
	}
	var out []float64
	for d := 0; d <= decades; d++ {
		base := lo * math.Pow(10, float64(d))
		for _, m := range mults {
			if d == decades && m > 1 {
				break
			}
			out = append(out, roundSig(base*m))
		}
	}
	return out
}

// roundSig rounds v to 6 significant digits (tick values without float
// noise such as 0.30000000000000004).
func roundSig(v float64) float64 {
	if v == 0 {
		return 0
	}
	s := strconv.FormatFloat(v, 'g', 6, 64)
	r, _ := strconv.ParseFloat(s, 64)
	return r
}

// fmtTick prints a tick value briefly: 0.05, 0.1, 1, 20, 1,000, 12,000.
func fmtTick(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 1000:
		return fmtInt(int64(math.Round(v)))
	case math.Abs(v) >= 1:
		return strconv.FormatFloat(roundSig(v), 'f', -1, 64)
	}
	return strconv.FormatFloat(roundSig(v), 'g', 3, 64)
}
