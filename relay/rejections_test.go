package relay

import (
	"fmt"
	"testing"
)

func TestRejectionLog_Bounded(t *testing.T) {
	l := NewRejectionLog()
	for i := range maxRejections + 10 {
		l.add([]string{fmt.Sprintf("m%d", i)}, fmt.Sprintf("why %d", i))
	}
	if got := l.Reason("m0"); got != "" {
		t.Errorf("the oldest entry is still there (%q) past %d entries", got, maxRejections)
	}
	last := fmt.Sprintf("m%d", maxRejections+9)
	if got := l.Reason(last); got != fmt.Sprintf("why %d", maxRejections+9) {
		t.Errorf("Reason(%s) = %q", last, got)
	}
	if len(l.why) != maxRejections || len(l.order) != maxRejections {
		t.Errorf("holds %d reasons / %d order entries, want %d", len(l.why), len(l.order), maxRejections)
	}
	var nilLog *RejectionLog
	if nilLog.Reason("x") != "" {
		t.Error("a nil log must answer empty")
	}
}
