package relay

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
)

// RejectionLog keeps what Segment said when it refused a batch as invalid,
// by messageId, so that a record moved to the dead letters carries
// Segment's own words and not just "400 Bad Request": analytics-go reports
// only the status. It holds the most recent maxRejections entries.
type RejectionLog struct {
	mu    sync.Mutex
	why   map[string]string
	order []string
}

const (
	maxRejections     = 10000
	maxRejectionBytes = 1024
)

// NewRejectionLog returns an empty log.
func NewRejectionLog() *RejectionLog { return &RejectionLog{why: map[string]string{}} }

// Reason returns what Segment answered to the last batch that carried
// messageID and was refused, or "".
func (l *RejectionLog) Reason(messageID string) string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.why[messageID]
}

func (l *RejectionLog) add(ids []string, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		if _, ok := l.why[id]; !ok {
			l.order = append(l.order, id)
		}
		l.why[id] = why
	}
	for len(l.order) > maxRejections {
		delete(l.why, l.order[0])
		l.order = l.order[1:]
	}
}

// rejectionRecorder notes the body of every answer that refuses a batch as
// invalid, against the messageIds of that batch, and passes the answer on
// unchanged.
type rejectionRecorder struct {
	base http.RoundTripper
	log  *RejectionLog
}

func (r rejectionRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil || r.log == nil || classifyStatus(resp.StatusCode) != failRejected || req.GetBody == nil {
		return resp, err
	}
	head, _ := io.ReadAll(io.LimitReader(resp.Body, maxRejectionBytes))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(head), resp.Body), resp.Body}
	body, gerr := req.GetBody()
	if gerr != nil {
		return resp, nil
	}
	defer body.Close()
	var batch struct {
		Batch []struct {
			MessageID string `json:"messageId"`
		} `json:"batch"`
	}
	if json.NewDecoder(body).Decode(&batch) != nil {
		return resp, nil
	}
	ids := make([]string, 0, len(batch.Batch))
	for _, m := range batch.Batch {
		ids = append(ids, m.MessageID)
	}
	why := strings.TrimSpace(string(head))
	if why == "" {
		why = "(no body)"
	}
	r.log.add(ids, resp.Status+": "+why)
	return resp, nil
}
