// Package awsfake is an AWS Secrets Manager server for tests: it speaks
// the JSON 1.1 protocol (POST /, X-Amz-Target: secretsmanager.<Operation>,
// JSON bodies, epoch-second dates, errors as {"__type": ...} with HTTP 400)
// for the calls the aws-sm backend makes, with version stages as AWS
// documents them. No AWS Secrets Manager emulator can be had here, so the
// backend, and rotations through it, are verified at the protocol level.
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
//
// Requests must carry a SigV4 Authorization header (the signature itself
// is not checked); Credentials sets up an environment the SDK's default
// chain signs from.
package awsfake

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is the fake. Safe for concurrent use.
type Server struct {
	mu      sync.Mutex
	secrets map[string]*secret // by name
	calls   []Call
	faults  map[string]fault // by operation
	hook    func(Call)
}

// Call is one request the fake received, with its version and stage
// arguments.
type Call struct {
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
// on, for asserting sequences: "PutSecretValue stages=[AWSPENDING]
// token=T", "UpdateSecretVersionStage AWSCURRENT move=V remove=W",
// "GetSecretValue version=V stage=S", or the operation's name.
func (c Call) String() string {
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

// Writes reports whether the call changes versions or labels
// (PutSecretValue, UpdateSecretVersionStage).
func (c Call) Writes() bool {
	return c.Op == "PutSecretValue" || c.Op == "UpdateSecretVersionStage"
}

// Version is a copy of one version of a secret.
type Version struct {
	ID      string
	Value   string
	Binary  bool     // served as SecretBinary (base64 in the JSON protocol)
	Stages  []string // its labels, in the order they were attached
	Created time.Time
}

// fault is how the fake answers calls of an operation instead of serving
// them: every call, or the next n.
type fault struct {
	status int
	code   string
	left   int // calls still to fail; 0: every call
}

type secret struct {
	name     string
	versions []*Version
	kmsKeyID string // "": AWS's managed key, aws/secretsmanager
}

// New starts a fake, closed when t ends, and returns it with its HTTP
// server (whose URL is the backend's endpoint).
func New(t testing.TB) (*Server, *httptest.Server) {
	f := &Server{secrets: map[string]*secret{}, faults: map[string]fault{}}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	return f, srv
}

// Credentials sets, for the rest of t, an environment the AWS SDK's
// default credential chain takes static test credentials from (and reads
// no shared configuration files), so that requests to the fake are
// signed.
func Credentials(t testing.TB) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-only-not-a-secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
}

// ARN is the ARN the fake gives the secret name (GetSecretValue and
// friends accept it in place of the name).
func ARN(name string) string {
	return "arn:aws:secretsmanager:us-east-1:123456789012:secret:" + name + "-AbCdEf"
}

// lookup accepts a name or the ARN form.
func (f *Server) lookup(id string) *secret {
	if s := f.secrets[id]; s != nil {
		return s
	}
	for _, s := range f.secrets {
		if ARN(s.name) == id {
			return s
		}
	}
	return nil
}

// Put seeds a version of name (created when missing) with the given
// labels (AWSCURRENT when none), as PutSecretValue would, under an id of
// the fake's making, and returns that id. It is not recorded as a call.
func (f *Server) Put(name, value string, stages ...string) string {
	return f.put(name, value, false, stages)
}

// PutBinary is Put of a binary secret (served as SecretBinary).
func (f *Server) PutBinary(name string, value []byte, stages ...string) string {
	return f.put(name, string(value), true, stages)
}

func (f *Server) put(name, value string, binary bool, stages []string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	if s == nil {
		s = &secret{name: name}
		f.secrets[name] = s
	}
	id := fmt.Sprintf("EXAMPLE%d-90ab-cdef-fedc-ba987SECRET1", len(s.versions)+1)
	s.add(id, value, binary, stages)
	return id
}

// SetKMSKey has name encrypted with the KMS key keyID (a key id, ARN or
// alias), as CreateSecret's or UpdateSecret's KmsKeyId would; "" is AWS's
// managed key (aws/secretsmanager), for which DescribeSecret omits
// KmsKeyId. It reports whether name exists.
func (f *Server) SetKMSKey(name, keyID string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	if s == nil {
		return false
	}
	s.kmsKeyID = keyID
	return true
}

// Attach puts label on version id of name as another writer would
// (removing it from any other version; moving AWSCURRENT moves
// AWSPREVIOUS to the version it leaves), without a call being recorded.
// It reports whether name has that version (nothing changes when not).
func (f *Server) Attach(name, label, id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	if s == nil {
		return false
	}
	v := s.version(id)
	if v == nil {
		return false
	}
	s.attach(label, v)
	return true
}

// add appends a version with the given labels (AWSCURRENT when none; the
// first version of a secret gets AWSCURRENT whatever was asked), moving
// each label from the version that had it.
func (s *secret) add(id, value string, binary bool, stages []string) *Version {
	if len(stages) == 0 {
		stages = []string{"AWSCURRENT"}
	}
	if len(s.versions) == 0 && !slices.Contains(stages, "AWSCURRENT") {
		stages = append(slices.Clone(stages), "AWSCURRENT")
	}
	v := &Version{ID: id, Value: value, Binary: binary, Created: time.Unix(1_800_000_000+int64(len(s.versions)), 0)}
	s.versions = append(s.versions, v)
	for _, st := range stages {
		s.attach(st, v)
	}
	return v
}

// attach puts label on to, removing it from any other version; moving
// AWSCURRENT moves AWSPREVIOUS to the version it left.
func (s *secret) attach(label string, to *Version) {
	var from *Version
	for _, v := range s.versions {
		if v != to && slices.Contains(v.Stages, label) {
			v.Stages = remove(v.Stages, label)
			from = v
		}
	}
	if !slices.Contains(to.Stages, label) {
		to.Stages = append(to.Stages, label)
	}
	if label == "AWSCURRENT" && from != nil {
		s.attach("AWSPREVIOUS", from)
	}
}

func (s *secret) version(id string) *Version {
	for _, v := range s.versions {
		if v.ID == id {
			return v
		}
	}
	return nil
}

// holder is the version carrying label, or nil.
func (s *secret) holder(label string) *Version {
	for _, v := range s.versions {
		if slices.Contains(v.Stages, label) {
			return v
		}
	}
	return nil
}

// Fail makes the fake answer every call of op with an error of the given
// HTTP status and AWS error code (AccessDeniedException,
// InternalServiceError, ...) instead of serving it; status 0 serves op
// again.
func (f *Server) Fail(op string, status int, code string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if status == 0 {
		delete(f.faults, op)
		return
	}
	f.faults[op] = fault{status: status, code: code}
}

// FailNext makes the fake answer the next call of op (only) with an error
// of the given HTTP status and AWS error code; later calls are served.
func (f *Server) FailNext(op string, status int, code string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[op] = fault{status: status, code: code, left: 1}
}

// OnCall sets a function run for each call after it is recorded and
// before it is served (nil removes it): a test changes the secrets under
// the backend's feet (Attach, Put) or looks at what its consumers hold at
// that step. It runs without the fake's lock held, on the request's
// goroutine, so the call waits for it.
func (f *Server) OnCall(hook func(Call)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = hook
}

// Calls returns the calls received since the last ResetCalls, oldest
// first.
func (f *Server) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Call, len(f.calls))
	for i, c := range f.calls {
		out[i] = c
		out[i].VersionStages = slices.Clone(c.VersionStages)
	}
	return out
}

// ResetCalls forgets the calls received so far.
func (f *Server) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = nil
}

// Versions returns copies of name's versions, oldest first (nil for a
// secret the fake does not have).
func (f *Server) Versions(name string) []Version {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.secrets[name]
	if s == nil {
		return nil
	}
	out := make([]Version, len(s.versions))
	for i, v := range s.versions {
		out[i] = *v
		out[i].Stages = slices.Clone(v.Stages)
	}
	return out
}

// Stages returns the labels of name's versions that have any, by version
// id (what DescribeSecret answers in VersionIdsToStages).
func (f *Server) Stages(name string) map[string][]string {
	out := map[string][]string{}
	for _, v := range f.Versions(name) {
		if len(v.Stages) > 0 {
			out[v.ID] = v.Stages
		}
	}
	return out
}

// Holder returns the id of name's version carrying label, or "".
func (f *Server) Holder(name, label string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.secrets[name]; s != nil {
		if v := s.holder(label); v != nil {
			return v.ID
		}
	}
	return ""
}

func (f *Server) serve(w http.ResponseWriter, r *http.Request) {
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
	c := Call{Op: op, SecretID: str("SecretId"), VersionID: str("VersionId"), VersionStage: str("VersionStage"),
		MoveToVersionID: str("MoveToVersionId"), RemoveFromVersionID: str("RemoveFromVersionId"), ClientRequestToken: str("ClientRequestToken")}
	if list, ok := in["VersionStages"].([]any); ok {
		for _, st := range list {
			s, _ := st.(string)
			c.VersionStages = append(c.VersionStages, s)
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	hook := f.hook
	f.mu.Unlock()
	if hook != nil {
		hook(c)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft, ok := f.faults[op]; ok {
		switch {
		case ft.left == 1:
			delete(f.faults, op)
		case ft.left > 1:
			ft.left--
			f.faults[op] = ft
		}
		awsErrorStatus(w, ft.status, ft.code, "injected by the test")
		return
	}
	f.handle(w, op, c, in)
}

// handle serves one call; f.mu is held.
func (f *Server) handle(w http.ResponseWriter, op string, c Call, in map[string]any) {
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
			if (vid == "" || v.ID == vid) && (stage == "" || slices.Contains(v.Stages, stage)) {
				out := map[string]any{"ARN": ARN(s.name), "Name": s.name, "VersionId": v.ID, "SecretString": v.Value,
					"VersionStages": v.Stages, "CreatedDate": float64(v.Created.Unix())}
				if v.Binary {
					delete(out, "SecretString")
					out["SecretBinary"] = base64.StdEncoding.EncodeToString([]byte(v.Value))
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
			if len(v.Stages) > 0 {
				stages[v.ID] = v.Stages
			}
		}
		last := s.versions[len(s.versions)-1]
		out := map[string]any{"ARN": ARN(s.name), "Name": s.name, "VersionIdsToStages": stages,
			"CreatedDate": float64(s.versions[0].Created.Unix()), "LastChangedDate": float64(last.Created.Unix())}
		if s.kmsKeyID != "" { // AWS leaves it out for its managed key
			out["KmsKeyId"] = s.kmsKeyID
		}
		writeJSON(w, out)
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
		case v != nil && (v.Value != value || v.Binary != isBinary):
			awsError(w, "ResourceExistsException", "You can't modify an existing version, you can only create new versions.")
			return
		case v == nil:
			v = s.add(tok, value, isBinary, c.VersionStages)
		}
		// A token naming a version with the same value: AWS does nothing
		// and answers with that version.
		writeJSON(w, map[string]any{"ARN": ARN(s.name), "Name": s.name, "VersionId": v.ID, "VersionStages": v.Stages})
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
		var to *Version
		if moveTo != "" {
			if to = s.version(moveTo); to == nil {
				awsError(w, "ResourceNotFoundException", "Secrets Manager can't find the specified secret version.")
				return
			}
		}
		holder := s.holder(label)
		switch {
		case removeFrom != "" && (holder == nil || holder.ID != removeFrom):
			awsError(w, "InvalidParameterException", "The staging label "+label+" is not attached to version "+removeFrom+".")
			return
		case to != nil && holder != nil && holder != to && removeFrom == "":
			awsError(w, "InvalidParameterException", "The staging label "+label+" is attached to version "+holder.ID+"; RemoveFromVersionId must name it.")
			return
		case to == nil && label == "AWSCURRENT":
			awsError(w, "InvalidParameterException", "You can't remove AWSCURRENT from a version without moving it to another.")
			return
		}
		if to != nil {
			s.attach(label, to)
		} else {
			holder.Stages = remove(holder.Stages, label)
		}
		writeJSON(w, map[string]any{"ARN": ARN(s.name), "Name": s.name})
	default:
		awsError(w, "InvalidRequestException", "operation not supported by this fake: "+op)
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

func remove(ss []string, s string) []string {
	var out []string
	for _, x := range ss {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}
