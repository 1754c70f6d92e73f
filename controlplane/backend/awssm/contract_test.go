package awssm_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSM speaks the AWS Secrets Manager JSON 1.1 protocol (POST /,
// X-Amz-Target: secretsmanager.<Operation>, JSON bodies, epoch-second
// dates, errors as {"__type": ...} with HTTP 400) for the calls the backend
// makes, with version stages as AWS documents them: a new AWSCURRENT moves
// the previous one to AWSPREVIOUS. No AWS Secrets Manager emulator can be
// had here, so the backend is verified at the protocol level only.
//
// Staging labels behave as AWS documents them for PutSecretValue and
// UpdateSecretVersionStage: a label is on one version of a secret at most
// (attaching it to a version removes it from any other); moving AWSCURRENT
// moves AWSPREVIOUS to the version it leaves; the first version of a secret
// gets AWSCURRENT; a ClientRequestToken becomes the VersionId, and a token
// that names an existing version returns that version for the same value
// and ResourceExistsException for another; UpdateSecretVersionStage's
// RemoveFromVersionId must name the version holding the label (and is
// required when the label is on another version), else
// InvalidParameterException.
type fakeSM struct {
	mu      sync.Mutex
	secrets map[string]*fakeSecret // by name
	calls   []fakeCall
	faults  map[string]fakeFault // by operation
	// hook, when set, runs with mu held before each call is served (after
	// it is recorded): a test changes the secrets under the backend's feet.
	hook func(c fakeCall)
	t    *testing.T
}

// fakeCall is one request the fake received, with its version and stage
// arguments.
type fakeCall struct {
	Op                  string
	SecretID            string
	VersionID           string   // GetSecretValue
	VersionStage        string   // GetSecretValue, UpdateSecretVersionStage
	MoveToVersionID     string   // UpdateSecretVersionStage
	RemoveFromVersionID string   // UpdateSecretVersionStage
	ClientRequestToken  string   // PutSecretValue
	VersionStages       []string // PutSecretValue
}

// String is the call with the arguments a staged write's protocol turns
// on, for asserting sequences.
func (c fakeCall) String() string {
	switch c.Op {
	case "PutSecretValue":
		return fmt.Sprintf("PutSecretValue stages=%v token=%s", c.VersionStages, c.ClientRequestToken)
	case "UpdateSecretVersionStage":
		out := "UpdateSecretVersionStage " + c.VersionStage
		if c.MoveToVersionID != "" {
			out += " move=" + c.MoveToVersionID
		}
		if c.RemoveFromVersionID != "" {
			out += " remove=" + c.RemoveFromVersionID
		}
		return out
	case "GetSecretValue":
		out := "GetSecretValue"
		if c.VersionID != "" {
			out += " version=" + c.VersionID
		}
		if c.VersionStage != "" {
			out += " stage=" + c.VersionStage
		}
		return out
	}
	return c.Op
}

// fakeFault is how the fake answers every call of an operation instead of
// serving it.
type fakeFault struct {
	status int
	code   string
}

type fakeSecret struct {
	name     string
	versions []*fakeVersion
}

type fakeVersion struct {
	id      string
	value   string
	binary  bool // served as SecretBinary (base64 in the JSON protocol)
	stages  []string
	created time.Time
}

func newFakeSM(t *testing.T) (*fakeSM, *httptest.Server) {
	f := &fakeSM{secrets: map[string]*fakeSecret{}, faults: map[string]fakeFault{}, t: t}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeSM) arn(name string) string {
	return "arn:aws:secretsmanager:us-east-1:123456789012:secret:" + name + "-AbCdEf"
}

// lookup accepts a name or the ARN form.
func (f *fakeSM) lookup(id string) *fakeSecret {
	if s := f.secrets[id]; s != nil {
		return s
	}
	for _, s := range f.secrets {
		if f.arn(s.name) == id {
			return s
		}
	}
	return nil
}

// put seeds a version of name (created when missing) with the given
// labels (AWSCURRENT when none), as PutSecretValue would, under an id of
// the fake's making.
func (f *fakeSM) put(name, value string, stages ...string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	if s == nil {
		s = &fakeSecret{name: name}
		f.secrets[name] = s
	}
	id := fmt.Sprintf("EXAMPLE%d-90ab-cdef-fedc-ba987SECRET1", len(s.versions)+1)
	s.add(id, value, false, stages)
	return id
}

// add appends a version with the given labels (AWSCURRENT when none; the
// first version of a secret gets AWSCURRENT whatever was asked), moving
// each label from the version that had it.
func (s *fakeSecret) add(id, value string, binary bool, stages []string) *fakeVersion {
	if len(stages) == 0 {
		stages = []string{"AWSCURRENT"}
	}
	if len(s.versions) == 0 && !contains(stages, "AWSCURRENT") {
		stages = append(stages, "AWSCURRENT")
	}
	v := &fakeVersion{id: id, value: value, binary: binary, created: time.Unix(1_800_000_000+int64(len(s.versions)), 0)}
	s.versions = append(s.versions, v)
	for _, st := range stages {
		s.attach(st, v)
	}
	return v
}

// attach puts label on to, removing it from any other version; moving
// AWSCURRENT moves AWSPREVIOUS to the version it left.
func (s *fakeSecret) attach(label string, to *fakeVersion) {
	var from *fakeVersion
	for _, v := range s.versions {
		if v != to && contains(v.stages, label) {
			v.stages = remove(v.stages, label)
			from = v
		}
	}
	if !contains(to.stages, label) {
		to.stages = append(to.stages, label)
	}
	if label == "AWSCURRENT" && from != nil {
		s.attach("AWSPREVIOUS", from)
	}
}

func (s *fakeSecret) version(id string) *fakeVersion {
	for _, v := range s.versions {
		if v.id == id {
			return v
		}
	}
	return nil
}

// holder is the version carrying label, or nil.
func (s *fakeSecret) holder(label string) *fakeVersion {
	for _, v := range s.versions {
		if contains(v.stages, label) {
			return v
		}
	}
	return nil
}

// fail makes the fake answer every call of op with an error of the given
// HTTP status and AWS error code; status 0 serves op again.
func (f *fakeSM) fail(op string, status int, code string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if status == 0 {
		delete(f.faults, op)
		return
	}
	f.faults[op] = fakeFault{status: status, code: code}
}

// callLog returns the calls received since the last resetCalls.
func (f *fakeSM) callLog() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

func (f *fakeSM) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// versions returns copies of name's versions, oldest first.
func (f *fakeSM) versions(name string) []fakeVersion {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	if s == nil {
		return nil
	}
	out := make([]fakeVersion, len(s.versions))
	for i, v := range s.versions {
		out[i] = *v
		out[i].stages = append([]string(nil), v.stages...)
	}
	return out
}

// stages returns the labels of name's versions that have any, by version
// id (what DescribeSecret answers in VersionIdsToStages).
func (f *fakeSM) stages(name string) map[string][]string {
	out := map[string][]string{}
	for _, v := range f.versions(name) {
		if len(v.stages) > 0 {
			out[v.id] = v.stages
		}
	}
	return out
}

// putBinary stores a binary secret (SecretBinary).
func (f *fakeSM) putBinary(name string, value []byte) string {
	id := f.put(name, string(value))
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	s.versions[len(s.versions)-1].binary = true
	return id
}

func (f *fakeSM) serve(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	if r.Method != http.MethodPost || !strings.HasPrefix(target, "secretsmanager.") || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-amz-json-1.1") {
		http.Error(w, "not the Secrets Manager protocol", http.StatusBadRequest)
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		awsError(w, "UnrecognizedClientException", "missing SigV4 signature")
		return
	}
	var in map[string]any
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		awsError(w, "InvalidRequestException", "bad JSON")
		return
	}
	op := strings.TrimPrefix(target, "secretsmanager.")
	str := func(k string) string { v, _ := in[k].(string); return v }
	c := fakeCall{Op: op, SecretID: str("SecretId"), VersionID: str("VersionId"), VersionStage: str("VersionStage"),
		MoveToVersionID: str("MoveToVersionId"), RemoveFromVersionID: str("RemoveFromVersionId"), ClientRequestToken: str("ClientRequestToken")}
	if list, ok := in["VersionStages"].([]any); ok {
		for _, st := range list {
			s, _ := st.(string)
			c.VersionStages = append(c.VersionStages, s)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	if f.hook != nil {
		f.hook(c)
	}
	if fault, ok := f.faults[op]; ok {
		awsErrorStatus(w, fault.status, fault.code, "injected by the test")
		return
	}
	id := c.SecretID
	switch op {
	case "GetSecretValue":
		s := f.lookup(id)
		if s == nil {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		vid, stage := c.VersionID, c.VersionStage
		if vid == "" && stage == "" {
			stage = "AWSCURRENT"
		}
		for _, v := range s.versions {
			if (vid == "" || v.id == vid) && (stage == "" || contains(v.stages, stage)) {
				out := map[string]any{"ARN": f.arn(s.name), "Name": s.name, "VersionId": v.id, "SecretString": v.value,
					"VersionStages": v.stages, "CreatedDate": float64(v.created.Unix())}
				if v.binary {
					delete(out, "SecretString")
					out["SecretBinary"] = base64.StdEncoding.EncodeToString([]byte(v.value))
				}
				writeJSON(w, out)
				return
			}
		}
		awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret value for staging label or version id.")
	case "DescribeSecret":
		s := f.lookup(id)
		if s == nil {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		stages := map[string][]string{}
		for _, v := range s.versions {
			if len(v.stages) > 0 {
				stages[v.id] = v.stages
			}
		}
		last := s.versions[len(s.versions)-1]
		writeJSON(w, map[string]any{"ARN": f.arn(s.name), "Name": s.name, "VersionIdsToStages": stages,
			"CreatedDate": float64(s.versions[0].created.Unix()), "LastChangedDate": float64(last.created.Unix())})
	case "PutSecretValue":
		value, isString := in["SecretString"].(string)
		b64, isBinary := in["SecretBinary"].(string)
		if isString == isBinary {
			awsError(w, "InvalidParameterException", "You must include SecretBinary or SecretString, but not both.")
			return
		}
		if isBinary {
			raw, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				awsError(w, "InvalidParameterException", "SecretBinary is not base64")
				return
			}
			value = string(raw)
		}
		tok := c.ClientRequestToken
		if len(tok) < 32 || len(tok) > 64 {
			awsError(w, "InvalidParameterException", "ClientRequestToken must be 32 to 64 characters")
			return
		}
		for _, st := range c.VersionStages {
			if st == "" || len(st) > 256 {
				awsError(w, "InvalidParameterException", "a staging label must be 1 to 256 characters")
				return
			}
		}
		s := f.lookup(id)
		if s == nil {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		v := s.version(tok)
		switch {
		case v != nil && (v.value != value || v.binary != isBinary):
			awsError(w, "ResourceExistsException", "You can't modify an existing version, you can only create new versions.")
			return
		case v == nil:
			v = s.add(tok, value, isBinary, c.VersionStages)
		}
		// A token naming a version with the same value: AWS does nothing
		// and answers with that version.
		writeJSON(w, map[string]any{"ARN": f.arn(s.name), "Name": s.name, "VersionId": v.id, "VersionStages": v.stages})
	case "UpdateSecretVersionStage":
		s := f.lookup(id)
		if s == nil {
			awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		label, moveTo, removeFrom := c.VersionStage, c.MoveToVersionID, c.RemoveFromVersionID
		if label == "" || (moveTo == "" && removeFrom == "") {
			awsError(w, "InvalidParameterException", "VersionStage and MoveToVersionId or RemoveFromVersionId are required.")
			return
		}
		var to *fakeVersion
		if moveTo != "" {
			if to = s.version(moveTo); to == nil {
				awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret version.")
				return
			}
		}
		holder := s.holder(label)
		switch {
		case removeFrom != "" && (holder == nil || holder.id != removeFrom):
			awsError(w, "InvalidParameterException", "The staging label "+label+" is not attached to version "+removeFrom+".")
			return
		case to != nil && holder != nil && holder != to && removeFrom == "":
			awsError(w, "InvalidParameterException", "The staging label "+label+" is attached to version "+holder.id+"; RemoveFromVersionId must name it.")
			return
		case to == nil && label == "AWSCURRENT":
			awsError(w, "InvalidParameterException", "You can't remove AWSCURRENT from a version without moving it to another.")
			return
		}
		if to != nil {
			s.attach(label, to)
		} else {
			holder.stages = remove(holder.stages, label)
		}
		writeJSON(w, map[string]any{"ARN": f.arn(s.name), "Name": s.name})
	default:
		awsError(w, "InvalidRequestException", "operation not supported by this contract server: "+op)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(v)
}

func awsError(w http.ResponseWriter, code, msg string) {
	awsErrorStatus(w, http.StatusBadRequest, code, msg)
}

func awsErrorStatus(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func remove(ss []string, s string) []string {
	var out []string
	for _, x := range ss {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}
